"""The table `make bench` prints, and docs/performance.md with its chart."""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.run import Row

BEGIN = "<!-- bench:begin (written by make bench; edit outside these markers) -->"
END = "<!-- bench:end -->"


def table(rows: Sequence["Row"]) -> str:
    head = "| row | rps | p50 ms | p99 ms | compared with | median ratio | target | holds |"
    lines = [head, "|---|---:|---:|---:|---|---:|---|---|"]
    for row in rows:
        if row.runs:
            figures = (
                f"{row.median('rps'):,.0f} | {row.median('p50_ms'):.2f} | "
                f"{row.median('p99_ms'):.2f}"
            )
        else:
            figures = "- | - | -"
        if row.ratios:
            ratio = row.ratio_format.format(row.ratio)
            rounds = ", ".join(row.ratio_format.format(r) for r in row.ratios)
            ratio = f"{ratio} ({rounds})"
            holds = "yes" if row.holds else "**no**"
        else:
            ratio, holds = "-", ""
        if row.target == "-" or row.target.startswith("("):
            holds = ""
        note = f" {row.note}" if row.note else ""
        lines.append(
            f"| {row.name} | {figures} | {row.compared_with} | {ratio} | {row.target} | "
            f"{holds}{note} |"
        )
    return "\n".join(lines)


def write_doc(
    doc: Path,
    chart: Path,
    rows: Sequence["Row"],
    machine: dict[str, str],
    table_md: str,
    command: str,
) -> None:
    """Rewrites the measured part of docs/performance.md and its chart; keeps the rest."""
    draw_chart(chart, rows)
    facts = "\n".join(f"- **{k}**: {v}" for k, v in machine.items())
    measured = (
        f"{BEGIN}\n\n"
        f"Command: `make bench` (`{command}`).\n\n"
        f"{facts}\n\n{table_md}\n\n"
        f"![Measured ratios against their targets]({chart.name})\n\n{END}"
    )
    text = doc.read_text() if doc.exists() else f"# Performance\n\n{BEGIN}\n{END}\n"
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < 0:
        text = f"{text.rstrip()}\n\n{measured}\n"
    else:
        text = text[:start] + measured + text[end + len(END) :]
    doc.write_text(text)


def draw_chart(path: Path, rows: Sequence["Row"]) -> None:
    """One bar per targeted row: how far the measured median is past its target.

    Plotted as measured / bound for "at least" targets and bound / measured for
    "at most" ones, so 1.0 is the target and longer is better for every row.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, margins, labels = [], [], []
    for row in rows:
        if not row.ratios or row.bound is None:
            continue
        kind, bound = row.bound
        margin = row.ratio / bound if kind == "min" else bound / row.ratio
        names.append(row.name)
        margins.append(margin)
        labels.append(f"{row.ratio_format.format(row.ratio)} (target {row.target})")
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.2))
    colours = ["#2e7d32" if m >= 1 else "#c62828" for m in margins]
    bars = ax.barh(names[::-1], margins[::-1], color=colours[::-1])
    ax.axvline(1.0, color="black", linewidth=1)
    for bar, label in zip(bars, labels[::-1], strict=True):
        ax.text(bar.get_width() + 0.03, bar.get_y() + bar.get_height() / 2, label,
                va="center", fontsize=8)  # fmt: skip
    ax.set_xlabel("measured median relative to its target (1.0 = target; right is better)")
    ax.set_xlim(0, max([*margins, 1.0]) * 1.45)
    ax.set_title("chatgate: benchmark medians against their targets")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
