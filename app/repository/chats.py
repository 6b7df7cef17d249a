"""Chat sessions and their messages."""

from dataclasses import dataclass
from typing import Any

import aiosqlite

from app.repository.common import new_id, utc_now


@dataclass(frozen=True, slots=True)
class SessionRecord:
    id: str
    user_id: str
    title: str
    created_at: str
    updated_at: str
    message_count: int


def _session(row: Any) -> SessionRecord:
    return SessionRecord(*row)


async def insert_session(conn: aiosqlite.Connection, *, user_id: str, title: str) -> SessionRecord:
    now = utc_now()
    session = SessionRecord(new_id(), user_id, title, now, now, 0)
    await conn.execute(
        "INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at, message_count)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (session.id, user_id, title, now, now, 0),
    )
    return session


async def get_owned_session(
    conn: aiosqlite.Connection, session_id: str, user_id: str
) -> SessionRecord | None:
    sql = (
        "SELECT id, user_id, title, created_at, updated_at, message_count FROM chat_sessions"
        " WHERE id = ? AND user_id = ?"
    )
    async with conn.execute(sql, (session_id, user_id)) as cur:
        row = await cur.fetchone()
    return _session(row) if row else None


async def list_sessions(
    conn: aiosqlite.Connection, user_id: str, *, limit: int, before: tuple[str, str] | None
) -> list[SessionRecord]:
    """Newest activity first; `before` is the (updated_at, id) of the last row already seen."""
    if before is None:
        sql = (
            "SELECT id, user_id, title, created_at, updated_at, message_count FROM chat_sessions"
            " WHERE user_id = ?"
            " ORDER BY updated_at DESC, id DESC LIMIT ?"
        )
        params: tuple[object, ...] = (user_id, limit)
    else:
        sql = (
            "SELECT id, user_id, title, created_at, updated_at, message_count FROM chat_sessions"
            " WHERE user_id = ? AND (updated_at, id) < (?, ?)"
            " ORDER BY updated_at DESC, id DESC LIMIT ?"
        )
        params = (user_id, before[0], before[1], limit)
    async with conn.execute(sql, params) as cur:
        return [_session(row) for row in await cur.fetchall()]


async def rename_session(
    conn: aiosqlite.Connection, session_id: str, user_id: str, title: str
) -> SessionRecord | None:
    sql = (
        "UPDATE chat_sessions SET title = ?, updated_at = ?"
        " WHERE id = ? AND user_id = ?"
        " RETURNING id, user_id, title, created_at, updated_at, message_count"
    )
    async with conn.execute(sql, (title, utc_now(), session_id, user_id)) as cur:
        row = await cur.fetchone()
    return _session(row) if row else None


async def delete_session(conn: aiosqlite.Connection, session_id: str, user_id: str) -> bool:
    """Deletes the session; its messages go with it (ON DELETE CASCADE)."""
    async with conn.execute(
        "DELETE FROM chat_sessions WHERE id = ? AND user_id = ? RETURNING id",
        (session_id, user_id),
    ) as cur:
        return await cur.fetchone() is not None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    id: str
    session_id: str
    seq: int
    role: str
    content: str
    created_at: str


def _message(row: Any) -> MessageRecord:
    return MessageRecord(*row)


async def add_message(
    conn: aiosqlite.Connection, *, session_id: str, user_id: str, role: str, content: str
) -> MessageRecord | None:
    """Appends a message to a session the user owns; None when it is not theirs (or gone)."""
    now = utc_now()
    async with conn.execute(
        "UPDATE chat_sessions SET message_count = message_count + 1, updated_at = ?"
        " WHERE id = ? AND user_id = ? RETURNING message_count",
        (now, session_id, user_id),
    ) as cur:
        row = await cur.fetchone()
    if row is None:
        return None
    message = MessageRecord(new_id(), session_id, int(row[0]), role, content, now)
    await conn.execute(
        "INSERT INTO messages (id, session_id, seq, role, content, created_at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (message.id, session_id, message.seq, role, content, now),
    )
    return message


async def list_messages(
    conn: aiosqlite.Connection, session_id: str, *, limit: int, after_seq: int
) -> list[MessageRecord]:
    """Oldest first, starting after position `after_seq` (0 for the beginning)."""
    sql = (
        "SELECT id, session_id, seq, role, content, created_at FROM messages"
        " WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
    )
    async with conn.execute(sql, (session_id, after_seq, limit)) as cur:
        return [_message(row) for row in await cur.fetchall()]


async def recent_messages(
    conn: aiosqlite.Connection, session_id: str, *, limit: int
) -> list[MessageRecord]:
    """The last `limit` messages of a session, oldest first (the assistant's context)."""
    sql = (
        "SELECT id, session_id, seq, role, content, created_at FROM messages"
        " WHERE session_id = ? ORDER BY seq DESC LIMIT ?"
    )
    async with conn.execute(sql, (session_id, limit)) as cur:
        rows = await cur.fetchall()
    return [_message(row) for row in reversed(list(rows))]
