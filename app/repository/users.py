"""Accounts: SQL over the users table."""

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import aiosqlite

from app.repository.common import fetch_one, new_id, utc_now

LOCAL = "local"
USER, ADMIN = "user", "admin"
ROLES = (USER, ADMIN)
# Stored as the hash of users from another issuer: no password ever verifies against it.
NO_PASSWORD = "!"  # noqa: S105


class DuplicateEmail(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Account:
    """What a request knows of its user, read with the token check: no password hash."""

    id: str
    email: str
    display_name: str | None
    role: str
    created_at: str
    auth_source: str
    disabled_at: str | None

    @property
    def is_local(self) -> bool:
        return self.auth_source == LOCAL

    @property
    def disabled(self) -> bool:
        return self.disabled_at is not None


@dataclass(frozen=True, slots=True)
class UserRecord(Account):
    """The whole row, for the few places that check or change the password."""

    password_hash: str


ACCOUNT_COLUMNS = (
    "users.id, users.email, users.display_name, users.role, users.created_at,"
    " users.auth_source, users.disabled_at"
)
ACCOUNT_WIDTH = 7

_SELECT_USER = f"SELECT {ACCOUNT_COLUMNS}, users.password_hash FROM users"  # noqa: S608 - constant


def _user(row: Any) -> UserRecord:
    return UserRecord(*row)


async def insert_user(
    conn: aiosqlite.Connection,
    *,
    email: str,
    password_hash: str,
    display_name: str | None,
    role: str = USER,
) -> UserRecord:
    user = UserRecord(new_id(), email, display_name, role, utc_now(), LOCAL, None, password_hash)
    try:
        await conn.execute(
            "INSERT INTO users"
            " (id, email, password_hash, display_name, role, created_at, auth_source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                user.id,
                user.email,
                user.password_hash,
                user.display_name,
                user.role,
                user.created_at,
                user.auth_source,
            ),
        )
    except sqlite3.IntegrityError as exc:
        raise DuplicateEmail(email) from exc
    return user


async def ensure_external_user(conn: aiosqlite.Connection, user_id: str, source: str) -> None:
    """Creates the row of a user another issuer vouches for (id `source:…`), once.

    Its `email` column holds the id itself: unique, and never a valid email, so
    no registration or password login can reach it.
    """
    await conn.execute(
        "INSERT OR IGNORE INTO users"
        " (id, email, password_hash, display_name, role, created_at, auth_source)"
        " VALUES (?, ?, ?, NULL, 'user', ?, ?)",
        (user_id, user_id, NO_PASSWORD, utc_now(), source),
    )


async def get_local_user_by_email(conn: aiosqlite.Connection, email: str) -> UserRecord | None:
    """Only accounts with a password here can log in with one."""
    sql = _SELECT_USER + " WHERE email = ? AND auth_source = 'local'"
    row = await fetch_one(conn, sql, (email,))
    return _user(row) if row else None


async def get_user_by_id(conn: aiosqlite.Connection, user_id: str) -> UserRecord | None:
    row = await fetch_one(conn, _SELECT_USER + " WHERE id = ?", (user_id,))
    return _user(row) if row else None


async def get_password_hash(conn: aiosqlite.Connection, user_id: str) -> str | None:
    row = await fetch_one(conn, "SELECT password_hash FROM users WHERE id = ?", (user_id,))
    return str(row[0]) if row else None


async def update_password_hash(
    conn: aiosqlite.Connection, user_id: str, password_hash: str
) -> None:
    await conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))


async def delete_user(conn: aiosqlite.Connection, user_id: str) -> bool:
    """Deletes the user; sessions, messages and logins go with it (ON DELETE CASCADE)."""
    return (
        await fetch_one(conn, "DELETE FROM users WHERE id = ? RETURNING id", (user_id,)) is not None
    )


async def set_role(conn: aiosqlite.Connection, user_id: str, role: str) -> bool:
    """False when there is no such user."""
    sql = "UPDATE users SET role = ? WHERE id = ? RETURNING id"
    return await fetch_one(conn, sql, (role, user_id)) is not None


async def set_disabled(conn: aiosqlite.Connection, user_id: str, disabled: bool) -> bool:
    """Disables (keeping the first time it was) or enables; False when there is no such user.

    Disabling also refuses, for good, the external tokens issued until now.
    """
    sql = (
        "UPDATE users SET"
        " disabled_at = CASE WHEN :disabled THEN coalesce(disabled_at, :now) END,"
        " tokens_not_before = CASE WHEN :disabled THEN :epoch ELSE tokens_not_before END"
        " WHERE id = :id RETURNING id"
    )
    params = {"disabled": disabled, "now": utc_now(), "epoch": int(time.time()), "id": user_id}
    return await fetch_one(conn, sql, params) is not None


async def email_taken(conn: aiosqlite.Connection, email: str) -> bool:
    return await fetch_one(conn, "SELECT 1 FROM users WHERE email = ?", (email,)) is not None


async def has_login_from(conn: aiosqlite.Connection, user_id: str, ip: str) -> bool:
    """Whether one of the user's live logins was last used from this address."""
    sql = (
        "SELECT 1 FROM login_families"
        " WHERE user_id = ? AND ip = ? AND revoked_at IS NULL AND expires_at > ? LIMIT 1"
    )
    return await fetch_one(conn, sql, (user_id, ip, utc_now())) is not None
