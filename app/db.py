"""The Database: the one place the service opens SQLite connections and runs migrations
(app/backup.py copies the file, for the operator's backup and restore commands).

One writer connection, guarded by a lock, carries every transaction: an `await`
between two statements cannot let another request's statements into it.
The chat routes' writes are jobs run in batches on the writer's thread, one
transaction and one fsync per batch (group commit), so durable writes
(synchronous = FULL) do not cost an fsync per request.
Reads go to a small pool of read-only connections, which WAL lets run beside
the writer.
"""

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar

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
    # 3: messages without an index on their random id. Nothing looks a message up
    # by id, and every insert landed on a random page of that index: with the
    # implicit rowid as storage order and (session_id, seq) as the one index, a
    # commit writes half the pages it did (docs/performance.md). The id is still
    # a UUID4 made by the service, unique by construction.
    (
        """
        CREATE TABLE messages_v3 (
            id          TEXT NOT NULL,
            session_id  TEXT NOT NULL REFERENCES chat_sessions(id) ON DELETE CASCADE,
            seq         INTEGER NOT NULL,
            role        TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
            content     TEXT NOT NULL,
            created_at  TEXT NOT NULL,
            UNIQUE (session_id, seq)
        )
        """,
        "INSERT INTO messages_v3 (id, session_id, seq, role, content, created_at)"
        " SELECT id, session_id, seq, role, content, created_at FROM messages ORDER BY rowid",
        "DROP TABLE messages",
        "ALTER TABLE messages_v3 RENAME TO messages",
    ),
    # 4: administration - a disabled account keeps its data but no token of it
    # works and it cannot log in; admins list accounts newest first. Tokens from
    # another issuer have no login here to end: those issued before the last
    # disable (tokens_not_before, epoch seconds) stay refused after an enable.
    (
        "ALTER TABLE users ADD COLUMN disabled_at TEXT",
        "ALTER TABLE users ADD COLUMN tokens_not_before INTEGER",
        "CREATE INDEX ix_users_created ON users (created_at DESC, id DESC)",
    ),
    # 5: emails in one Unicode spelling (NFC), the one requests now look up.
    # chatgate_nfc is Python's NFC, registered on the writer by Database.open (SQLite
    # has none). Two stored spellings of one address: the NFC one, else the oldest,
    # gets it; any other is left as it was, an account no email login reaches.
    (
        """
        UPDATE users SET email = chatgate_nfc(email)
        WHERE auth_source = 'local' AND email <> chatgate_nfc(email)
          AND NOT EXISTS (
            SELECT 1 FROM users AS taken WHERE taken.email = chatgate_nfc(users.email)
          )
          AND NOT EXISTS (
            SELECT 1 FROM users AS older
            WHERE older.auth_source = 'local'
              AND chatgate_nfc(older.email) = chatgate_nfc(users.email)
              AND (older.created_at, older.id) < (users.created_at, users.id)
          )
        """,
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(RuntimeError):
    def __init__(self, path: Path, version: int) -> None:
        super().__init__(
            f"the database {path} has schema version {version}, newer than "
            f"this chatgate ({SCHEMA_VERSION}); upgrade chatgate instead"
        )


T = TypeVar("T")
WriteJob = Callable[[sqlite3.Connection], T]
ReadJob = Callable[[sqlite3.Connection], T]  # on a read-only connection
MAX_BATCH = 256


class Database:
    def __init__(self, path: Path, read_connections: int = 2) -> None:
        self.path = path
        self._read_size = read_connections
        self._writer: aiosqlite.Connection | None = None
        self._readers: list[aiosqlite.Connection] = []
        self._next_reader = 0
        self._write_lock = asyncio.Lock()
        self._jobs: list[_Job[Any]] = []
        self._jobs_waiting = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._reads: list[_Job[Any]] = []
        self._reads_waiting = asyncio.Event()
        self._read_runners: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        await asyncio.to_thread(_create_private, self.path)
        try:
            self._writer = await self._connect(str(self.path), uri=False)
            await self._writer.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit is on disk before anyone is told it happened, so an
            # acknowledged write survives a power cut too. Group commit pays for it.
            await self._writer.execute("PRAGMA synchronous = FULL")
            await self._writer.create_function("chatgate_nfc", 1, _nfc, deterministic=True)
            await self._migrate()
            self._committer = asyncio.create_task(self._commit_jobs(), name="chatgate-writes")
            for _ in range(self._read_size):
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                self._readers.append(await self._connect(uri, uri=True))
            self._read_runners = [
                asyncio.create_task(self._run_reads(reader), name="chatgate-reads")
                for reader in self._readers
            ]
        except BaseException:
            # aiosqlite's threads are not daemons: an unclosed connection hangs the exit.
            await self.close()
            raise

    async def close(self) -> None:
        for runner in self._read_runners:
            runner.cancel()
        for runner in self._read_runners:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._read_runners.clear()
        for job in self._reads:
            job.fail(RuntimeError("database is closed"))
        self._reads.clear()
        for reader in self._readers:
            await reader.close()
        self._readers.clear()
        if self._committer is not None:
            async with self._write_lock:  # lets the batch in progress finish
                self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer
            self._committer = None
        for job in self._jobs:
            job.fail(RuntimeError("database is closed"))
        self._jobs.clear()
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

    def reader(self) -> aiosqlite.Connection:
        """A read-only connection. Each runs its statements one at a time in its own
        thread, so callers share them; fetch with `execute_fetchall` (one round trip)."""
        if not self._readers:
            raise RuntimeError("database is not open")
        self._next_reader = (self._next_reader + 1) % len(self._readers)
        return self._readers[self._next_reader]

    async def read(self, job: ReadJob[T]) -> T:
        """Runs `job` (a function of a read-only sqlite3 connection) on a reader's thread.

        For the query every authenticated request makes: reads that arrive while
        the readers are busy go together in the next trip to a reader's thread,
        one hop for all of them instead of one each. Each job sees the database
        as of its own statements, as a read through `reader()` does.
        """
        if not self._read_runners:
            raise RuntimeError("database is not open")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._reads.append(_Job(job, done))
        self._reads_waiting.set()
        return await done

    async def _run_reads(self, reader: aiosqlite.Connection) -> None:
        while True:
            await self._reads_waiting.wait()
            if not self._reads:
                self._reads_waiting.clear()
                continue
            batch, self._reads = self._reads[:MAX_BATCH], self._reads[MAX_BATCH:]
            jobs = [job for job in batch if not job.done.done()]  # callers that gave up
            try:
                outcomes = await self._on_thread(reader, functools.partial(_run_reads, jobs))
            except asyncio.CancelledError:
                for job in jobs:
                    job.fail(RuntimeError("database is closed"))
                raise
            except Exception as exc:
                for job in jobs:
                    job.fail(exc)
                continue
            for job, (ok, value) in zip(jobs, outcomes, strict=True):
                if ok:
                    job.succeed(value)
                else:
                    job.fail(value)

    async def write(self, job: WriteJob[T]) -> T:
        """Runs `job` on the writer's thread, all or nothing; returns once it is on disk.

        The chat routes' writes go this way. Jobs that arrive while a batch is
        being written wait for the next one, and a batch is one transaction: one
        thread hop and one fsync for every request in it (group commit). Each job
        runs in its own savepoint, so one that raises changes nothing and leaves
        the others alone; its exception is re-raised here.
        """
        if self._committer is None:
            raise RuntimeError("database is not open")
        job_ = _Job(job, asyncio.get_running_loop().create_future())
        self._jobs.append(job_)
        self._jobs_waiting.set()
        # Shielded: a caller that gives up does not take its write out of the batch.
        return await asyncio.shield(job_.done)

    async def _commit_jobs(self) -> None:
        while True:
            await self._jobs_waiting.wait()
            self._jobs_waiting.clear()
            while self._jobs:
                batch, self._jobs = self._jobs[:MAX_BATCH], self._jobs[MAX_BATCH:]
                try:
                    async with self._write_lock:
                        outcomes = await self._on_writer_thread(
                            functools.partial(_run_batch, [job.run for job in batch])
                        )
                except BaseException as exc:
                    for job in batch:
                        job.fail(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    logger.error("a batch of writes failed: %s", type(exc).__name__)
                    continue
                for job, (ok, value) in zip(batch, outcomes, strict=True):
                    if ok:
                        job.succeed(value)
                    else:
                        job.fail(value)

    async def _on_writer_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        writer = self._writer
        if writer is None:
            raise RuntimeError("database is not open")
        return await self._on_thread(writer, fn)

    @staticmethod
    async def _on_thread(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Calls `fn` with the connection's sqlite3 connection, on its own thread.

        aiosqlite runs every call of a connection on that connection's thread;
        `_execute` is how it does so. It is private, and this is the one place
        chatgate uses it: a whole batch then costs one hop instead of several per
        job. tests/test_write_jobs.py exercises it, so an aiosqlite that changes
        it fails `make test`, not production.
        """
        raw: sqlite3.Connection = conn._conn
        result: T = await conn._execute(fn, raw)  # type: ignore[no-untyped-call]
        return result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An IMMEDIATE transaction on the writer for a multi-step change with awaits
        between its statements (logins, passwords, accounts); commits on success,
        rolls back on error. Batched jobs wait until it is over."""
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

    async def schema_version(self) -> int:
        rows = await self.reader().execute_fetchall("PRAGMA user_version")
        return int(next(iter(rows))[0])

    async def _migrate(self) -> None:
        """Applies the missing migrations, each in its own transaction.

        The version is read inside the write transaction, so instances starting
        together on one file take turns instead of applying a step twice.
        """
        while True:
            async with self.transaction() as conn:
                rows = await conn.execute_fetchall("PRAGMA user_version")
                current = int(next(iter(rows))[0])
                if current > SCHEMA_VERSION:
                    raise SchemaTooNew(self.path, current)
                if current == SCHEMA_VERSION:
                    return
                for statement in MIGRATIONS[current]:
                    await conn.execute(statement)
                # PRAGMA takes no parameters; the version is an int we computed.
                await conn.execute(f"PRAGMA user_version = {current + 1}")
            logger.info("database %s migrated to schema version %d", self.path, current + 1)


class _Job(Generic[T]):
    __slots__ = ("done", "run")

    def __init__(self, run: WriteJob[T], done: "asyncio.Future[T]") -> None:
        self.run = run
        self.done = done

    def succeed(self, value: T) -> None:
        if not self.done.done():
            self.done.set_result(value)

    def fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


def _run_batch(jobs: list[WriteJob[Any]], conn: sqlite3.Connection) -> list[tuple[bool, Any]]:
    """On the writer's thread: one transaction, a savepoint per job, one COMMIT."""
    outcomes: list[tuple[bool, Any]] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for job in jobs:
            conn.execute("SAVEPOINT job")
            try:
                outcomes.append((True, job(conn)))
            except Exception as exc:
                if not conn.in_transaction:
                    raise  # the error ended the whole transaction (I/O, disk full)
                conn.execute("ROLLBACK TO job")
                outcomes.append((False, exc))
            conn.execute("RELEASE job")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _run_reads(jobs: list[_Job[Any]], conn: sqlite3.Connection) -> list[tuple[bool, Any]]:
    """On a reader's thread: each job in turn; one that raises leaves the others alone."""
    outcomes: list[tuple[bool, Any]] = []
    for job in jobs:
        try:
            outcomes.append((True, job.run(conn)))
        except Exception as exc:
            outcomes.append((False, exc))
    return outcomes


def _nfc(value: object) -> object:
    """SQL chatgate_nfc(text): migrations use it (SQLite has no Unicode normalisation)."""
    return unicodedata.normalize("NFC", value) if isinstance(value, str) else value


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
