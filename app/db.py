"""The Database: the one place that opens SQLite connections and runs migrations.

One writer connection, guarded by a lock, carries every transaction: an `await`
between two statements cannot let another request's statements into it.
Reads go to a small pool of read-only connections (WAL lets them run beside
the writer) and each read borrows one connection exclusively.
"""

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite
import anyio

logger = logging.getLogger("chatgate.db")

BUSY_TIMEOUT_MS = 5000

# Each entry upgrades the schema by one version (PRAGMA user_version). Never edit
# a released entry: append a new one, so existing data files migrate forward.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE users (
            id            TEXT PRIMARY KEY,
            email         TEXT NOT NULL UNIQUE,
            password_hash TEXT NOT NULL,
            display_name  TEXT,
            role          TEXT NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
            created_at    TEXT NOT NULL
        )
        """,
        """
        CREATE TABLE chat_sessions (
            id            TEXT PRIMARY KEY,
            user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            title         TEXT NOT NULL,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL,
            message_count INTEGER NOT NULL DEFAULT 0
        )
        """,
        "CREATE INDEX ix_chat_sessions_user_activity"
        " ON chat_sessions (user_id, updated_at DESC, id DESC)",
        """
        CREATE TABLE messages (
            id          TEXT PRIMARY KEY,
            session_id  TEXT NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
            seq         INTEGER NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content     TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            UNIQUE (session_id, seq)
        )
        """,
    ),
    # 2: token lifecycle - logins (refresh-token families), their refresh tokens
    # (hashes only), revoked access-token ids, and users from other issuers.
    (
        "ALTER TABLE users ADD COLUMN auth_source TEXT NOT NULL DEFAULT 'local'",
        """
        CREATE TABLE login_families (
            id           TEXT PRIMARY KEY,
            user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at   TEXT NOT NULL,
            last_used_at TEXT NOT NULL,
            expires_at   TEXT NOT NULL,
            user_agent   TEXT,
            ip           TEXT,
            revoked_at   TEXT
        )
        """,
        "CREATE INDEX ix_login_families_user ON login_families (user_id, created_at)",
        """
        CREATE TABLE refresh_tokens (
            token_hash TEXT PRIMARY KEY,
            family_id  TEXT NOT NULL REFERENCES login_families(id) ON DELETE CASCADE,
            created_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            used_at    TEXT
        )
        """,
        "CREATE INDEX ix_refresh_tokens_family ON refresh_tokens (family_id)",
        """
        CREATE TABLE revoked_access_tokens (
            jti        TEXT PRIMARY KEY,
            expires_at INTEGER NOT NULL
        )
        """,
        "CREATE INDEX ix_revoked_access_tokens_expiry ON revoked_access_tokens (expires_at)",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    def __init__(self, path: Path, read_connections: int = 2) -> None:
        self.path = path
        self._read_size = read_connections
        self._writer: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._all_readers: list[aiosqlite.Connection] = []

    async def open(self) -> None:
        await asyncio.to_thread(_create_private, self.path)
        try:
            self._writer = await self._connect(str(self.path), uri=False)
            await self._writer.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a process crash loses nothing committed; a power cut
            # may lose the last transactions but never corrupts the file.
            await self._writer.execute("PRAGMA synchronous = NORMAL")
            await self._migrate()
            for _ in range(self._read_size):
                reader = await self._connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
                self._all_readers.append(reader)
                self._readers.put_nowait(reader)
        except BaseException:
            # aiosqlite's threads are not daemons: an unclosed connection hangs the exit.
            await self.close()
            raise

    async def close(self) -> None:
        for reader in self._all_readers:
            await reader.close()
        self._all_readers.clear()
        self._readers = asyncio.Queue()
        if self._writer is not None:
            async with self._write_lock:
                await self._writer.close()
            self._writer = None

    @staticmethod
    async def _connect(target: str, *, uri: bool) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(target, uri=uri, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An IMMEDIATE transaction on the writer; commits on success, rolls back on error."""
        if self._writer is None:
            raise RuntimeError("database is not open")
        writer = self._writer
        async with self._write_lock:
            try:
                await writer.execute("BEGIN IMMEDIATE")
                yield writer
                # Shielded: a client that disconnects now must not leave the outcome unknown.
                with anyio.CancelScope(shield=True):
                    await writer.execute("COMMIT")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._rollback(writer)
                raise

    @staticmethod
    async def _rollback(conn: aiosqlite.Connection) -> None:
        # A cancelled BEGIN may or may not have run, a failed COMMIT leaves the
        # transaction open: either way leave none behind.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.OperationalError):
                await conn.execute("ROLLBACK")

    @asynccontextmanager
    async def read(self) -> AsyncIterator[aiosqlite.Connection]:
        """A read-only connection, borrowed for the block."""
        if not self._all_readers:
            raise RuntimeError("database is not open")
        conn = await self._readers.get()
        try:
            yield conn
        finally:
            self._readers.put_nowait(conn)

    async def schema_version(self) -> int:
        async with self.read() as conn, conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self) -> None:
        """Applies the missing migrations, each in its own transaction.

        The version is read inside the write transaction, so instances starting
        together on one file take turns instead of applying a step twice.
        """
        while True:
            async with self.transaction() as conn:
                async with conn.execute("PRAGMA user_version") as cur:
                    row = await cur.fetchone()
                current = int(row[0]) if row else 0
                if current > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"the database {self.path} has schema version {current}, newer than "
                        f"this chatgate ({SCHEMA_VERSION}); upgrade chatgate instead"
                    )
                if current == SCHEMA_VERSION:
                    return
                for statement in MIGRATIONS[current]:
                    await conn.execute(statement)
                # PRAGMA takes no parameters; the version is an int we computed.
                await conn.execute(f"PRAGMA user_version = {current + 1}")
            logger.info("database %s migrated to schema version %d", self.path, current + 1)


def _create_private(path: Path) -> None:
    """Password hashes and chats live here: new folders and files are for the owner only.

    SQLite gives the -wal and -shm files the database file's permissions.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
            logger.warning("%s was readable by other users; its mode is now 0600", path)
