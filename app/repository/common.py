"""Helpers every repository module shares."""

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import aiosqlite

Params = Sequence[Any] | Mapping[str, Any]


def new_id() -> str:
    return str(uuid.uuid4())


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """Fixed-width ISO 8601 UTC, so text order is time order."""
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)


def utc_from_epoch(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(TIMESTAMP_FORMAT)


async def fetch_one(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> Any | None:
    """The first row, or None, in one round trip to the connection's thread."""
    rows = await conn.execute_fetchall(sql, params)
    return next(iter(rows), None)


async def fetch_all(conn: aiosqlite.Connection, sql: str, params: Params = ()) -> list[Any]:
    """Every row, in one round trip (a cursor would cost one per call)."""
    return list(await conn.execute_fetchall(sql, params))
