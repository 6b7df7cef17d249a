"""`make bench`: chatgate against its own ceiling and a fastapi-users peer, in one run.

Figures from a shared machine only hold as ratios measured side by side, so
every row is measured back to back with what it is compared with, alternating,
over several rounds, and the median ratio is what counts. The server gets one
core and the load generator (wrk, and this script) the other.

    python -m bench.run [--rounds 5] [--duration 5] [--no-doc]
"""

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import report
from bench.seed import Seeded, seed

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPT = ROOT / "bench" / "wrk.lua"
CONNECTIONS = 32
LOGIN_CONNECTIONS = 4
BURST_CONNECTIONS = 8  # the reader measured while logins pile up
BURST_LOGINS = 50
TIMING_SAMPLES = 8
WRK = shutil.which("wrk")


@dataclass(frozen=True)
class Run:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


@dataclass
class Row:
    """One line of the table: the row's own figures and its ratio to what it is compared with."""

    name: str
    compared_with: str
    target: str
    check: Callable[[float], bool]
    runs: list[Run] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    note: str = ""
    ratio_format: str = "{:.2f}"
    bound: tuple[str, float] | None = None  # ("min" | "max", value) for the chart

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def holds(self) -> bool:
        return self.check(self.ratio)

    def median(self, attribute: str) -> float:
        return statistics.median(getattr(r, attribute) for r in self.runs)


@dataclass(frozen=True)
class Cpus:
    server: set[int]
    load: set[int]


def split_cpus() -> Cpus:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("note: one CPU only; server and load share it", file=sys.stderr)  # noqa: T201
        return Cpus(set(cpus), set(cpus))
    return Cpus({cpus[0]}, {cpus[1]})


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(
    module: str, *, port: int, cpus: set[int], env: dict[str, str], cwd: Path, log: Path
) -> Iterator[str]:
    """uvicorn as the issue asks: 1 worker, uvloop + httptools, no access log."""
    command = [
        sys.executable, "-m", "uvicorn", module,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning", "--no-proxy-headers",
    ]  # fmt: skip
    if module.endswith(":create"):
        command.append("--factory")
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    with log.open("w") as log_file:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command,
            cwd=cwd,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{module} exited at start; see {log}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{module} did not start within 30 s; see {log}")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def wrk(
    url: str,
    *,
    duration: float,
    connections: int = CONNECTIONS,
    token: str | None = None,
    method: str = "GET",
    bodies: Path | None = None,
    content_type: str | None = None,
) -> Run:
    command = [
        WRK or "wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "30s",
        "-s", str(WRK_SCRIPT),
    ]  # fmt: skip
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    env = {**os.environ, "BENCH_METHOD": method}
    if bodies:
        env["BENCH_BODIES"] = str(bodies)
    if content_type:
        env["BENCH_CONTENT_TYPE"] = content_type
    out = subprocess.run(  # noqa: S603 - wrk with our own arguments
        [*command, url], env=env, capture_output=True, text=True, check=True
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    data = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Run(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        errors=errors,
    )


def probe(args: list[str], cpus: set[int]) -> str:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.probes", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    ).stdout.strip()


def login(url: str, email: str, password: str) -> str:
    r = httpx.post(f"{url}/auth/login", json={"email": email, "password": password}, timeout=30)
    r.raise_for_status()
    return str(r.json()["access_token"])


def peer_token(url: str) -> str:
    email, password = "peer@example.com", "bench-password-1234"
    httpx.post(
        f"{url}/auth/register", json={"email": email, "password": password}, timeout=30
    ).raise_for_status()
    r = httpx.post(
        f"{url}/auth/jwt/login", data={"username": email, "password": password}, timeout=30
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def timed_login(client: httpx.Client, email: str, password: str) -> float:
    """The time of one failed login; a 503 (hashes still queued from the burst) is
    waited out as its Retry-After says, and not timed."""
    for _ in range(10):
        start = time.perf_counter()
        r = client.post("/auth/login", json={"email": email, "password": password})
        elapsed = time.perf_counter() - start
        if r.status_code == 503:
            time.sleep(float(r.headers.get("retry-after", "1")))
            continue
        if r.status_code != 401:
            raise SystemExit(f"expected 401 for a failed login, got {r.status_code}")
        return elapsed
    raise SystemExit("logins kept answering 503")


def measure(args: argparse.Namespace, work: Path) -> tuple[list[Row], dict[str, str]]:
    cpus = split_cpus()
    os.sched_setaffinity(0, cpus.load)
    d = args.duration
    seeded: Seeded = seed(work / "chatgate.db")
    env = {
        "DATABASE_URL": f"sqlite:///{seeded.path}",
        "JWT_SECRET_KEY": secrets.token_urlsafe(48),
        "ASSISTANT_PROVIDER": "echo",
        "RATE_LIMIT_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    bodies = work / "messages.jsonl"
    bodies.write_text(
        "".join(
            json.dumps({"session_id": sid, "message": "Hello from the benchmark"}) + "\n"
            for sid in seeded.session_ids[1 : 1 + CONNECTIONS]
        )
    )
    login_body = work / "login.jsonl"
    login_body.write_text(json.dumps({"email": seeded.emails[2], "password": seeded.password}))
    insert_body = work / "insert.jsonl"
    insert_body.write_text("{}\n")

    me = Row("GET /auth/me", "ceiling", "≥ 0.35", lambda r: r >= 0.35, bound=("min", 0.35))
    me_peer = Row(
        "GET /auth/me vs peer", "fastapi-users GET /users/me", "≥ 7x", lambda r: r >= 7,
        ratio_format="{:.1f}x", bound=("min", 7),
    )  # fmt: skip
    peer = Row("peer GET /users/me", "ceiling", "(reference)", lambda r: True)
    sessions = Row(
        "GET /chat/sessions (20 rows)", "ceiling", "≥ 0.25", lambda r: r >= 0.25,
        bound=("min", 0.25),
    )  # fmt: skip
    history = Row(
        "GET /chat/session/{id}/history (20 msgs)", "ceiling", "(reference)", lambda r: True
    )
    message = Row(
        "POST /chat/message", "raw insert", "≥ 0.50", lambda r: r >= 0.50, bound=("min", 0.5)
    )
    raw = Row("raw insert (write ceiling)", "ceiling", "(reference)", lambda r: True)
    writes = Row(
        f"writes, {CONNECTIONS} connections: p99/p50", "its own p50", "≤ 3, no errors",
        lambda r: r <= 3, bound=("max", 3),
    )  # fmt: skip
    logins = Row(
        "logins per second", "bcrypt bound", "≥ 0.90", lambda r: r >= 0.90, bound=("min", 0.9)
    )
    burst = Row(
        f"GET /chat/sessions p99, {BURST_LOGINS} logins pending", "its idle p99", "≤ 1.5",
        lambda r: r <= 1.5, bound=("max", 1.5),
    )  # fmt: skip
    timing = Row(
        "login time, unknown email / wrong password", "wrong password", "0.85 to 1.15",
        lambda r: 0.85 <= r <= 1.15, bound=("max", 1.15),
    )  # fmt: skip
    ceiling = Row("ceiling: GET /healthz", "-", "-", lambda r: True)

    with (
        serve(
            "bench.server:create", port=free_port(), cpus=cpus.server, env=env,
            cwd=work, log=work / "chatgate.log",
        ) as url,
        serve(
            "bench.peer:app", port=free_port(), cpus=cpus.server,
            env={"PEER_DATABASE": str(work / "peer.db")}, cwd=work, log=work / "peer.log",
        ) as peer_url,
    ):  # fmt: skip
        token = login(url, seeded.emails[0], seeded.password)
        ptoken = peer_token(peer_url)
        hist_url = f"{url}/chat/session/{seeded.history_session_id}/history"
        for _ in range(2):  # warm both servers up
            wrk(f"{url}/healthz", duration=1)
            wrk(f"{url}/auth/me", duration=1, token=token)
            wrk(f"{peer_url}/users/me", duration=1, token=ptoken)

        def measure_ceiling() -> Run:
            c = wrk(f"{url}/healthz", duration=d)
            ceiling.runs.append(c)
            return c

        def against_ceiling(row: Row, run: Callable[[], Run], before: Run) -> tuple[Run, Run]:
            """`run` between two ceiling runs (`before`, and one after it, returned for the
            next row): its ratio is to their mean, so the machine getting faster or
            slower meanwhile cancels out."""
            x = run()
            after = measure_ceiling()
            row.runs.append(x)
            row.ratios.append(x.rps / ((before.rps + after.rps) / 2))
            return x, after

        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}: reads", file=sys.stderr)  # noqa: T201
            c = measure_ceiling()
            m, c = against_ceiling(me, lambda: wrk(f"{url}/auth/me", duration=d, token=token), c)
            p, c = against_ceiling(
                peer, lambda: wrk(f"{peer_url}/users/me", duration=d, token=ptoken), c
            )
            me_peer.runs.append(m)
            me_peer.ratios.append(m.rps / p.rps)
            _, c = against_ceiling(
                sessions, lambda: wrk(f"{url}/chat/sessions", duration=d, token=token), c
            )
            against_ceiling(history, lambda: wrk(hist_url, duration=d, token=token), c)

        def raw_insert() -> Run:
            return wrk(
                f"{url}/_bench/insert", duration=d, method="POST", bodies=insert_body,
                content_type="application/json",
            )  # fmt: skip

        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}: writes", file=sys.stderr)  # noqa: T201
            c = measure_ceiling()
            r, _ = against_ceiling(raw, raw_insert, c)
            w = wrk(
                f"{url}/chat/message", duration=d, token=token, method="POST", bodies=bodies,
                content_type="application/json",
            )  # fmt: skip
            r_after = raw_insert()  # the message run sits between two raw-insert runs
            message.runs.append(w)
            message.ratios.append(w.rps / ((r.rps + r_after.rps) / 2))
            writes.runs.append(w)
            writes.ratios.append(w.p99_ms / w.p50_ms)

        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}: logins", file=sys.stderr)  # noqa: T201
            hash_seconds = float(probe(["hash", "12", "3"], cpus.server))
            bound = len(cpus.server) / hash_seconds
            x = wrk(
                f"{url}/auth/login", duration=max(d, 10), connections=LOGIN_CONNECTIONS,
                method="POST", bodies=login_body, content_type="application/json",
            )  # fmt: skip
            logins.runs.append(x)
            logins.ratios.append(x.rps / bound)
            logins.note = f"one bcrypt verify: {hash_seconds * 1000:.0f} ms"

            idle = wrk(
                f"{url}/chat/sessions", duration=d, token=token, connections=BURST_CONNECTIONS
            )
            with subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable, "-m", "bench.probes", "burst", url, seeded.emails[3],
                    seeded.password, str(BURST_LOGINS), str(d + 1.5),
                ],
                cwd=ROOT, stdout=subprocess.PIPE, text=True,
                preexec_fn=lambda: os.sched_setaffinity(0, cpus.load),
            ) as burster:  # fmt: skip
                time.sleep(1.0)  # let the logins pile up first
                busy = wrk(
                    f"{url}/chat/sessions", duration=d, token=token,
                    connections=BURST_CONNECTIONS,
                )  # fmt: skip
                burst_statuses, _ = burster.communicate()
            burst.runs.append(busy)
            burst.ratios.append(busy.p99_ms / idle.p99_ms)
            burst.note = f"idle p99 {idle.p99_ms:.1f} ms; burst answered {burst_statuses.strip()}"

            with httpx.Client(base_url=url, timeout=30) as client:
                unknown, wrong = [], []
                for _ in range(TIMING_SAMPLES):
                    unknown.append(timed_login(client, "nobody@example.com", "wrong-password-1"))
                    wrong.append(timed_login(client, seeded.emails[1], "wrong-password-1"))
            timing.ratios.append(statistics.median(unknown) / statistics.median(wrong))
            timing.note = (
                f"medians {statistics.median(unknown) * 1000:.0f} ms / "
                f"{statistics.median(wrong) * 1000:.0f} ms"
            )

    rows = [ceiling, me, me_peer, peer, sessions, history, raw, message, writes, logins, burst]
    rows.append(timing)
    errors = sum(r.errors for row in rows for r in row.runs if row is not burst)
    machine = {
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} (server on {sorted(cpus.server)}, load on {sorted(cpus.load)})",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": subprocess.run(  # noqa: S603 - wrk, found on PATH at start
            [WRK or "wrk", "-v"], capture_output=True, text=True, check=False
        ).stdout.split("\n")[0],
        "data": f"{seeded.users} users, {seeded.sessions} sessions, {seeded.messages} messages",
        "rounds": f"{args.rounds} rounds, {d:g} s per run, {CONNECTIONS} connections",
        "errors": str(errors),
    }
    return rows, machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs alone")
    args = parser.parse_args()
    if WRK is None:
        raise SystemExit(
            "wrk is not installed. On Debian or Ubuntu: sudo apt-get install wrk\n"
            "(macOS: brew install wrk); then run make bench again."
        )
    with tempfile.TemporaryDirectory(prefix="chatgate-bench-") as tmp:
        rows, machine = measure(args, Path(tmp))
    table = report.table(rows)
    print(table)  # noqa: T201
    if not args.no_doc:
        command = f"python -m bench.run --rounds {args.rounds} --duration {args.duration:g}"
        report.write_doc(ROOT / "docs" / "performance.md", ROOT / "docs" / "performance.png",
                         rows, machine, table, command)  # fmt: skip
    failing = [row.name for row in rows if row.ratios and not row.holds]
    if failing:
        print(f"targets missed: {', '.join(failing)}", file=sys.stderr)  # noqa: T201
        raise SystemExit(1)


if __name__ == "__main__":
    main()
