"""Helpers `bench/run.py` starts as their own processes, pinned to a chosen core.

python -m bench.probes hash ROUNDS N     prints the median seconds of N verifies
python -m bench.probes burst URL EMAIL PASSWORD CONCURRENCY SECONDS
                                          keeps CONCURRENCY logins in flight
"""

import asyncio
import statistics
import sys
import time

import httpx

from app.auth import PasswordHasher


def time_hash(rounds: int, n: int) -> float:
    """What one login's bcrypt costs on this core: the verify of a stored hash."""

    async def measure() -> float:
        hasher = PasswordHasher(rounds=rounds, concurrency=1)
        stored = await hasher.hash("bench-password-1234")
        times = []
        for _ in range(n):
            start = time.perf_counter()
            await hasher.verify("bench-password-1234", stored)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    return asyncio.run(measure())


async def burst(url: str, email: str, password: str, concurrency: int, seconds: float) -> None:
    """CONCURRENCY clients, each logging in again as soon as its last login answers
    (or, refused with 503, once its Retry-After has passed)."""
    deadline = time.monotonic() + seconds
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one_client() -> None:
            while time.monotonic() < deadline:
                try:
                    response = await client.post(
                        "/auth/login", json={"email": email, "password": password}
                    )
                except httpx.TransportError:
                    statuses[0] = statuses.get(0, 0) + 1  # printed as 0: no answer
                    continue
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code == 503:
                    # Too many hashes waiting: a client that follows Retry-After.
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    print(" ".join(f"{k}:{v}" for k, v in sorted(statuses.items())))  # noqa: T201


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "hash":
        print(f"{time_hash(int(args[0]), int(args[1])):.6f}")  # noqa: T201
    elif command == "burst":
        url, email, password, concurrency, seconds = args
        asyncio.run(burst(url, email, password, int(concurrency), float(seconds)))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
