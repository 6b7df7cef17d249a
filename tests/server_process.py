"""chatgate as a real process: `python -m uvicorn app.main:app`, as `make run` starts it.

For tests that need what only a process has: a SIGKILL, a SIGTERM and its exit
status, a restart on the same data file. Configured through the environment
only (no .env: the working directory is the test's own folder).
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
# Only what a Python process needs to run; nothing of chatgate's own settings
# may leak in from the environment of whoever runs the tests.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def base_environment(data_dir: Path) -> dict[str, str]:
    """The settings every test server gets: a private data file, a key, fast hashing."""
    return {
        "DATABASE_URL": f"sqlite:///{data_dir / 'chat.db'}",
        "JWT_SECRET_KEY": secrets.token_urlsafe(48)[:48],
        "BCRYPT_ROUNDS": "4",
        "RATE_LIMIT_ENABLED": "false",
        "ASSISTANT_PROVIDER": "echo",
        "LOG_LEVEL": "WARNING",
    }


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """A child process's whole environment: the bare minimum inherited, then `env`."""
    full = {name: os.environ[name] for name in _INHERITED if name in os.environ}
    full.update(env)
    full["PYTHONPATH"] = str(REPO_ROOT)
    return full


class ServerProcess:
    """One run of chatgate under uvicorn in a child process, on a free loopback port.

    `with ServerProcess(...) as server:` starts it and waits until /healthz
    answers; leaving the block kills whatever is still running and reaps it.
    The log (uvicorn's and chatgate's, stdout and stderr) goes to a file in
    `workdir`, so a full pipe can never block the server.
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        name: str = "server",
        uvicorn_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = workdir
        self.env = env
        self.uvicorn_args = uvicorn_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    @property
    def process(self) -> "subprocess.Popen[bytes]":
        assert self._process is not None, "the server was never started"
        return self._process

    def start(self) -> None:
        env = child_environment(self.env)
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--no-proxy-headers",
            *self.uvicorn_args,
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                command, cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_until_healthy()
        except BaseException:
            self.kill()
            raise

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=self.url, timeout=2.0) as probe:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"chatgate exited at start-up:\n{self.log()}")
                try:
                    if probe.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chatgate did not answer /healthz:\n{self.log()}")
                time.sleep(0.05)

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit status (negative: the signal that ended it); fails after `timeout` s."""
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL if still running, then reap; safe to call at any time, more than once."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
