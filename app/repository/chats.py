"""Chat sessions and their messages.

Reads take an aiosqlite connection; writes are plain functions of a sqlite3
connection, run as jobs on the writer's thread (`Database.write`).
"""

import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from app.repository.common import fetch_all, fetch_one, new_id, utc_now


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


def insert_session(conn: sqlite3.Connection, *, user_id: str, title: str) -> SessionRecord:
    """A write job (Database.write), like the other writes here."""
    now = utc_now()
    session = SessionRecord(new_id(), user_id, title, now, now, 0)
    conn.execute(
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
    row = await fetch_one(conn, sql, (session_id, user_id))
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
    return [_session(row) for row in await fetch_all(conn, sql, params)]


def rename_session(
    conn: sqlite3.Connection, session_id: str, user_id: str, title: str
) -> SessionRecord | None:
    sql = (
        "UPDATE chat_sessions SET title = ?, updated_at = ?"
        " WHERE id = ? AND user_id = ?"
        " RETURNING id, user_id, title, created_at, updated_at, message_count"
    )
    rows = conn.execute(sql, (title, utc_now(), session_id, user_id)).fetchall()
    return _session(rows[0]) if rows else None


def delete_session(conn: sqlite3.Connection, session_id: str, user_id: str) -> bool:
    """Deletes the session; its messages go with it (ON DELETE CASCADE)."""
    sql = "DELETE FROM chat_sessions WHERE id = ? AND user_id = ? RETURNING id"
    return bool(conn.execute(sql, (session_id, user_id)).fetchall())


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


_INSERT_MESSAGE = (
    "INSERT INTO messages (id, session_id, seq, role, content, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


def _message_values(m: MessageRecord) -> tuple[str, str, int, str, str, str]:
    return (m.id, m.session_id, m.seq, m.role, m.content, m.created_at)


def add_message(
    conn: sqlite3.Connection, *, session_id: str, user_id: str, role: str, content: str
) -> MessageRecord | None:
    """Appends a message to a session the user owns; None when it is not theirs (or gone)."""
    now = utc_now()
    rows = conn.execute(
        "UPDATE chat_sessions SET message_count = message_count + 1, updated_at = ?"
        " WHERE id = ? AND user_id = ? RETURNING message_count",
        (now, session_id, user_id),
    ).fetchall()
    if not rows:
        return None
    message = MessageRecord(new_id(), session_id, int(rows[0][0]), role, content, now)
    conn.execute(_INSERT_MESSAGE, _message_values(message))
    return message


def add_exchange(
    conn: sqlite3.Connection,
    *,
    session_id: str,
    user_id: str,
    question: str,
    asked_at: str,
    answer: str,
) -> tuple[MessageRecord, MessageRecord] | None:
    """Appends a question and its answer together; None when the session is not theirs."""
    now = utc_now()
    rows = conn.execute(
        "UPDATE chat_sessions SET message_count = message_count + 2, updated_at = ?"
        " WHERE id = ? AND user_id = ? RETURNING message_count",
        (now, session_id, user_id),
    ).fetchall()
    if not rows:
        return None
    seq = int(rows[0][0])
    asked = MessageRecord(new_id(), session_id, seq - 1, "user", question, asked_at)
    answered = MessageRecord(new_id(), session_id, seq, "assistant", answer, now)
    # One statement for both rows: each statement is a trip through SQLite (and a
    # release of the GIL) on the writer's thread.
    conn.execute(
        _INSERT_MESSAGE + ", (?, ?, ?, ?, ?, ?)", _message_values(asked) + _message_values(answered)
    )
    return asked, answered


async def list_messages(
    conn: aiosqlite.Connection, session_id: str, *, limit: int, after_seq: int
) -> list[MessageRecord]:
    """Oldest first, starting after position `after_seq` (0 for the beginning)."""
    sql = (
        "SELECT id, session_id, seq, role, content, created_at FROM messages"
        " WHERE session_id = ? AND seq > ? ORDER BY seq LIMIT ?"
    )
    return [_message(row) for row in await fetch_all(conn, sql, (session_id, after_seq, limit))]


async def recent_messages(
    conn: aiosqlite.Connection, session_id: str, *, limit: int, before_seq: int | None = None
) -> list[MessageRecord]:
    """The last `limit` messages of a session (before position `before_seq`, if given),
    oldest first: the assistant's context."""
    sql = (
        "SELECT id, session_id, seq, role, content, created_at FROM messages"
        " WHERE session_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?"
    )
    upper = before_seq if before_seq is not None else 2**62
    rows = await fetch_all(conn, sql, (session_id, upper, limit))
    return [_message(row) for row in reversed(list(rows))]
