"""The `chatgate` command as a real process: `.venv/bin/chatgate ...`, as an operator runs it.

Its environment is built as the test servers' is (tests/server_process.py), so
nothing of the caller's own chatgate settings leaks in; stdin is a pipe, never
the terminal of whoever runs the tests.
"""

import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.db import SCHEMA_VERSION
from tests.server_process import child_environment


def write_newer_database(path: Path) -> None:
    """A data file as a later chatgate, with one more schema version, would leave it."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE users (id TEXT PRIMARY KEY)")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()


CHATGATE = str(Path(sys.executable).parent / "chatgate")
COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class Ran:
    """How one run of the command ended, and what it printed."""

    status: int
    stdout: str
    stderr: str

    @property
    def error(self) -> str:
        """The one line a failed command prints: `chatgate: <sentence>`."""
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("chatgate: "), self.stderr
        return lines[0]


def start(workdir: Path, env: dict[str, str], args: Sequence[str]) -> "subprocess.Popen[bytes]":
    return subprocess.Popen(  # noqa: S603 - our own console script and arguments
        [CHATGATE, *args],
        cwd=workdir,
        env=child_environment(env),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: "subprocess.Popen[bytes]", stdin: bytes) -> Ran:
    try:
        out, err = process.communicate(stdin, timeout=COMMAND_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    ran = Ran(process.returncode, out.decode(), err.decode())
    # Whatever happens, an operator sees a sentence, never a stack trace.
    assert "Traceback" not in ran.stderr, ran.stderr
    return ran


def chatgate(workdir: Path, env: dict[str, str], *args: str, stdin: bytes = b"") -> Ran:
    """One run, stdin a pipe holding `stdin` (never the terminal of whoever runs the tests)."""
    return finish(start(workdir, env, args), stdin)


def chatgate_together(
    workdir: Path, env: dict[str, str], runs: Sequence[tuple[Sequence[str], bytes]]
) -> list[Ran]:
    """Independent runs started at once (each spends most of its time importing)."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for args, _ in runs:
            processes.append(start(workdir, env, args))
        return [finish(p, stdin) for p, (_, stdin) in zip(processes, runs, strict=True)]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
