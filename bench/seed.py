"""A seeded data file: 100 users, 10,000 sessions, about 20,000 messages.

The schema comes from chatgate's own migrations (Database.open); the rows are
bulk-inserted with the standard library, which is the fast way to make a file.
Every user has the same password, hashed once at the service's default cost, so
a benchmark login verifies exactly what a real one would and never re-hashes.
"""

import asyncio
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.auth import PasswordHasher
from app.config import Settings
from app.db import Database
from app.repository.common import TIMESTAMP_FORMAT

USERS = 100
SESSIONS_PER_USER = 100
MESSAGES_PER_SESSION = 2
HISTORY_MESSAGES = 20  # the session whose history the benchmark reads
BENCH_TABLE = "CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"
PASSWORD = "bench-password-1234"  # noqa: S105 - a throwaway benchmark account


@dataclass(frozen=True)
class Seeded:
    path: Path
    emails: list[str]
    password: str
    session_ids: list[str]  # the first user's sessions, most recent first
    history_session_id: str
    users: int
    sessions: int
    messages: int


def email_of(i: int) -> str:
    return f"bench{i:03d}@example.com"


async def _schema_and_hash(path: Path) -> str:
    db = Database(path)
    await db.open()
    await db.close()
    default_rounds = Settings.model_fields["bcrypt_rounds"].default
    return await PasswordHasher(rounds=default_rounds, concurrency=1).hash(PASSWORD)


def seed(path: Path) -> Seeded:
    password_hash = asyncio.run(_schema_and_hash(path))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    tick = 0

    def stamp() -> str:
        nonlocal tick
        tick += 1
        return (start + timedelta(seconds=tick)).strftime(TIMESTAMP_FORMAT)

    users, sessions, messages = [], [], []
    first_user_sessions: list[str] = []
    for u in range(USERS):
        user_id = str(uuid.uuid4())
        users.append((user_id, email_of(u), password_hash, None, "user", stamp(), "local"))
        for s in range(SESSIONS_PER_USER):
            session_id = str(uuid.uuid4())
            count = HISTORY_MESSAGES if (u, s) == (0, 0) else MESSAGES_PER_SESSION
            created = stamp()
            last = created
            for seq in range(1, count + 1):
                last = stamp()
                role = "user" if seq % 2 else "assistant"
                text = f"Message {seq} of a seeded conversation about benchmarks."
                messages.append((str(uuid.uuid4()), session_id, seq, role, text, last))
            sessions.append((session_id, user_id, f"Seeded chat {s}", created, last, count))
            if u == 0:
                first_user_sessions.append(session_id)

    with sqlite3.connect(path) as conn:
        # Named columns: a migration that adds one must not break the seed.
        conn.executemany(
            "INSERT INTO users"
            " (id, email, password_hash, display_name, role, created_at, auth_source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            users,
        )
        conn.executemany(
            "INSERT INTO chat_sessions (id, user_id, title, created_at, updated_at, message_count)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            sessions,
        )
        conn.executemany(
            "INSERT INTO messages (id, session_id, seq, role, content, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            messages,
        )
        conn.execute(BENCH_TABLE)  # the raw-insert row writes here
        conn.execute("ANALYZE")
    conn.close()
    return Seeded(
        path=path,
        emails=[email_of(u) for u in range(USERS)],
        password=PASSWORD,
        session_ids=list(reversed(first_user_sessions)),
        history_session_id=first_user_sessions[0],
        users=len(users),
        sessions=len(sessions),
        messages=len(messages),
    )
