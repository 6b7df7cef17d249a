"""Copies of the data file: an online backup while chatgate serves, and a restore.

Apart from `Database`, the only code that opens the data file, and only to copy
it: these run in the operator's `chatgate backup` and `chatgate restore`,
beside the service (possibly another process), never in a request.
"""

import asyncio
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from app.db import BUSY_TIMEOUT_MS, SCHEMA_VERSION, SchemaTooNew


class CopyError(Exception):
    """A backup or restore that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class CopyReport:
    path: Path
    schema_version: int
    users: int
    sessions: int
    messages: int


def sidecars(path: Path) -> tuple[Path, Path]:
    """The -wal and -shm files SQLite keeps beside a WAL database."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


async def backup(source: Path, target: Path) -> CopyReport:
    """An online, consistent copy of the database at `source`, written to `target`.

    chatgate may be serving meanwhile. SQLite's backup API copies every page in
    one step, inside one read transaction: the copy is the database as of one
    commit, with every write acknowledged before it began, and WAL lets the
    service go on writing. The copy is one self-contained file (no -wal), made
    under a temporary name, checked, flushed to disk and renamed: `target` is
    either absent or complete.
    """
    return await asyncio.to_thread(_backup, source, target)


async def restore(backup_file: Path, target: Path) -> CopyReport:
    """Copies a backup to `target`, a database file that must not exist yet (a fresh
    data folder, or the old file moved away with the service stopped)."""
    return await asyncio.to_thread(_restore, backup_file, target)


async def schema_version_of(path: Path) -> int:
    """The schema version of the database file at `path`, without changing it; 0 if absent."""
    return await asyncio.to_thread(_read_version, path)


def _read_version(path: Path) -> int:
    if not path.is_file():
        return 0
    conn = _open_existing(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def _backup(source: Path, target: Path) -> CopyReport:
    if not source.is_file():
        raise CopyError(f"there is no database at {source} (DATABASE_URL); nothing to back up")
    return _copy_checked(source, target)


def _restore(backup_file: Path, target: Path) -> CopyReport:
    if not backup_file.is_file():
        raise CopyError(f"there is no backup at {backup_file}")
    existing = [p for p in (target, *sidecars(target)) if p.exists()]
    if existing:
        raise CopyError(
            f"{existing[0]} already exists; restore into a fresh data folder, or stop "
            f"chatgate and move {target.name} and its -wal and -shm files away first"
        )
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return _copy_checked(backup_file, target)


def _open_existing(path: Path) -> sqlite3.Connection:
    """A connection that only reads an existing file. Read-write, with writes refused:
    a read-only one could not remove the -wal and -shm files it makes beside a
    database no one else has open."""
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = ON")
    return conn


def _copy_checked(source: Path, target: Path) -> CopyReport:
    if target.exists():
        raise CopyError(f"{target} already exists; choose another name or remove it first")
    if not target.parent.is_dir():
        raise CopyError(f"{target.parent} is not a folder")
    partial = target.with_name(f".{target.name}.partial")
    partial.unlink(missing_ok=True)
    # Password hashes and chats: the copy is for the owner only, from its first byte.
    os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        _copy(source, partial)
        report = _check(partial, target)
        with partial.open("rb") as copy:
            os.fsync(copy.fileno())
        _rename_without_overwriting(partial, target)
        _fsync_dir(target.parent)
    finally:
        partial.unlink(missing_ok=True)
    return report


def _copy(source_path: Path, target: Path) -> None:
    try:
        source = _open_existing(source_path)
    except sqlite3.Error as exc:
        raise CopyError(f"cannot open {source_path}: {exc}") from None
    try:
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)  # pages=-1: all of it in one step, one snapshot
            copy.execute("PRAGMA journal_mode = DELETE")  # one file, no -wal beside it
        finally:
            copy.close()
    except sqlite3.DatabaseError as exc:
        raise CopyError(f"{source_path} is not a chatgate database ({exc})") from None
    finally:
        source.close()


def _check(copy_path: Path, name: Path) -> CopyReport:
    """The copy opens, passes SQLite's integrity check and is a chatgate database."""
    copy = sqlite3.connect(copy_path)
    try:
        problems = [row[0] for row in copy.execute("PRAGMA integrity_check")]
        if problems != ["ok"]:
            raise CopyError(f"the copy fails SQLite's integrity check: {problems[:3]}")
        version = int(copy.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(name, version)
        tables = {row[0] for row in copy.execute("SELECT name FROM sqlite_master")}
        if version < 1 or not {"users", "chat_sessions", "messages"} <= tables:
            raise CopyError("that file is an SQLite database, but not chatgate's")
        counts = [
            int(copy.execute(sql).fetchone()[0])
            for sql in (
                "SELECT count(*) FROM users",
                "SELECT count(*) FROM chat_sessions",
                "SELECT count(*) FROM messages",
            )
        ]
    except sqlite3.DatabaseError as exc:
        raise CopyError(f"the copy cannot be read: {exc}") from None
    finally:
        copy.close()
    return CopyReport(name, version, *counts)


def _rename_without_overwriting(partial: Path, target: Path) -> None:
    """A hard link fails if `target` appeared meanwhile, where a rename would replace it."""
    try:
        os.link(partial, target)
    except FileExistsError:
        raise CopyError(
            f"{target} appeared while the copy was made; nothing was overwritten"
        ) from None
    except OSError:  # a file system without hard links: check, then rename
        if target.exists():
            raise CopyError(f"{target} already exists; nothing was overwritten") from None
        os.replace(partial, target)


def _fsync_dir(folder: Path) -> None:
    """The rename itself reaches the disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
