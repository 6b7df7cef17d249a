"""`make soak`: a bounded mixed load on a real server; zero 5xx and memory that levels off.

    python -m bench.soak [--seconds 120] [--clients 16]

Starts chatgate like `make bench` does (uvicorn, one worker, rate limits off,
the echo assistant) on a fresh data file, then CLIENTS users each loop over
what a chat client does: list sessions, open one and read its history, send
messages (plain and streamed), rename, start and delete sessions, refresh
their token, and now and then log in again. The server's resident memory is
sampled every few seconds. It prints the figures and exits non-zero on any
5xx, any failed request, or memory still growing in the second half.
"""

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench.run import free_port, serve, split_cpus

PASSWORD = "soak-password-1234"  # noqa: S105 - the soak's own throwaway users
SAMPLE_SECONDS = 5
# The second half may grow by this much before memory counts as not levelling off.
GROWTH_ALLOWED = 0.10


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def server_pid(port: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"uvicorn" in b" ".join(cmdline) and str(port).encode() in cmdline:
                return int(entry.name)
    raise RuntimeError("server process not found")


class Client:
    def __init__(self, http: httpx.AsyncClient, email: str, statuses: Counter[str]) -> None:
        self.http = http
        self.email = email
        self.statuses = statuses
        self.headers: dict[str, str] = {}
        self.refresh_token = ""
        self.sessions: list[str] = []

    async def call(self, method: str, path: str, **kwargs: object) -> httpx.Response | None:
        try:
            response = await self.http.request(method, path, headers=self.headers, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            self.statuses[f"error {type(exc).__name__}"] += 1
            return None
        self.statuses[str(response.status_code)] += 1
        return response

    async def log_in(self) -> None:
        r = await self.call("POST", "/auth/login", json={"email": self.email, "password": PASSWORD})
        if r is not None and r.status_code == 200:
            self._tokens(r)

    def _tokens(self, r: httpx.Response) -> None:
        body = r.json()
        self.headers = {"Authorization": f"Bearer {body['access_token']}"}
        self.refresh_token = body["refresh_token"]

    async def step(self, rng: random.Random) -> None:
        action = rng.choices(
            ["list", "history", "message", "send", "new", "rename", "delete", "refresh", "login"],
            # Logging in again is rare for a real client, and costs a bcrypt hash.
            weights=[20, 20, 25, 10, 8, 5, 4, 4, 0.1],
        )[0]
        if action in {"history", "message", "send", "rename", "delete"} and not self.sessions:
            action = "new"
        sid = rng.choice(self.sessions) if self.sessions else ""
        if action == "list":
            await self.call("GET", "/chat/sessions", params={"limit": 20})
        elif action == "history":
            await self.call("GET", f"/chat/session/{sid}/history", params={"limit": 50})
        elif action == "message":
            body = {"session_id": sid, "message": f"soak {rng.random()}"}
            await self.call("POST", "/chat/message", json=body)
        elif action == "send":
            body = {"session_id": sid, "message": f"stream {rng.random()}"}
            r = await self.call("POST", "/chat/send", json=body)
            if r is not None and r.status_code == 200 and "event: done" not in r.text:
                self.statuses["stream without done"] += 1
        elif action == "new":
            r = await self.call("POST", "/chat/session/new", json={"initial_message": "hello"})
            if r is not None and r.status_code == 201:
                self.sessions.append(r.json()["session"]["id"])
        elif action == "rename":
            await self.call("PATCH", f"/chat/session/{sid}", json={"title": f"t{rng.random()}"})
        elif action == "delete":
            r = await self.call("DELETE", f"/chat/session/{sid}")
            if r is not None and r.status_code == 200:
                self.sessions.remove(sid)
        elif action == "refresh":
            r = await self.call("POST", "/auth/refresh", json={"refresh_token": self.refresh_token})
            if r is not None and r.status_code == 200:
                self._tokens(r)
        else:
            await self.log_in()


async def drive(
    url: str, pid: int, seconds: float, clients: int
) -> tuple[Counter[str], list[tuple[float, float]]]:
    statuses: Counter[str] = Counter()
    samples: list[tuple[float, float]] = []
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        users = [Client(http, f"soak{i}@example.com", statuses) for i in range(clients)]
        for user in users:
            await http.post("/auth/register", json={"email": user.email, "password": PASSWORD})
            await user.log_in()
        start = time.monotonic()
        deadline = start + seconds

        async def run(user: Client, seed: int) -> None:
            rng = random.Random(seed)  # noqa: S311 - load, not secrets
            while time.monotonic() < deadline:
                await user.step(rng)

        async def sample() -> None:
            while time.monotonic() < deadline:
                samples.append((time.monotonic() - start, rss_mib(pid)))
                await asyncio.sleep(SAMPLE_SECONDS)
            samples.append((time.monotonic() - start, rss_mib(pid)))

        await asyncio.gather(sample(), *(run(u, i) for i, u in enumerate(users)))
    return statuses, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    cpus = split_cpus()
    os.sched_setaffinity(0, cpus.load)
    with tempfile.TemporaryDirectory(prefix="chatgate-soak-") as tmp:
        work = Path(tmp)
        env = {
            "DATABASE_URL": f"sqlite:///{work / 'soak.db'}",
            "JWT_SECRET_KEY": secrets.token_urlsafe(48),
            "ASSISTANT_PROVIDER": "echo",
            "RATE_LIMIT_ENABLED": "false",
            "BCRYPT_ROUNDS": "12",
            "LOG_LEVEL": "WARNING",
        }
        port = free_port()
        log = work / "server.log"
        with serve("app.main:app", port=port, cpus=cpus.server, env=env, cwd=work, log=log) as url:
            pid = server_pid(port)
            statuses, samples = asyncio.run(drive(url, pid, args.seconds, args.clients))
        server_log = log.read_text()
    total = sum(n for key, n in statuses.items() if key.isdigit())
    server_errors = sum(n for key, n in statuses.items() if key.isdigit() and key >= "500")
    failures = sum(n for key, n in statuses.items() if not key.isdigit())
    half = [rss for t, rss in samples if t >= args.seconds / 2]
    first, last = samples[0][1], samples[-1][1]
    growth = (max(half) - half[0]) / half[0] if half else 0.0
    print(f"soak: {args.seconds:g} s, {args.clients} clients, {total} requests "  # noqa: T201
          f"({total / args.seconds:.0f}/s)")  # fmt: skip
    print("statuses: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))  # noqa: T201
    print(  # noqa: T201
        f"server memory (RSS): start {first:.1f} MiB, end {last:.1f} MiB, "
        f"median {statistics.median(r for _, r in samples):.1f} MiB; "
        f"growth over the second half {growth:.1%} (allowed {GROWTH_ALLOWED:.0%})"
    )
    print("rss by time: " + " ".join(f"{t:.0f}s={r:.1f}" for t, r in samples))  # noqa: T201
    problems = []
    if server_errors:
        problems.append(f"{server_errors} responses were 5xx")
    if failures:
        problems.append(f"{failures} requests failed without an answer")
    if growth > GROWTH_ALLOWED:
        problems.append("memory was still growing in the second half")
    if "Traceback" in server_log:
        problems.append("the server logged a traceback")
    if problems:
        raise SystemExit("soak failed: " + "; ".join(problems))
    print("soak passed: zero 5xx, memory levelled off")  # noqa: T201


if __name__ == "__main__":
    sys.exit(main())
