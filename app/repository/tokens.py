"""Logins (refresh-token families), their refresh tokens and revoked access-token ids.

A refresh token is stored as its SHA-256, never as itself.
"""

import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from app.repository.common import fetch_all, fetch_one, utc_now
from app.repository.users import ACCOUNT_COLUMNS, ACCOUNT_WIDTH, Account


@dataclass(frozen=True, slots=True)
class LoginRecord:
    id: str
    created_at: str
    last_used_at: str
    user_agent: str | None
    ip: str | None
    expires_at: str  # its latest refresh token's expiry


@dataclass(frozen=True, slots=True)
class RefreshRecord:
    family_id: str
    user_id: str
    used_at: str | None
    family_revoked: bool
    role: str  # the user's, now: the new access token carries it
    user_disabled: bool
    login_created_at: str  # when the password login happened


@dataclass(frozen=True, slots=True)
class AccessState:
    account: Account | None  # None: the user no longer exists
    token_revoked: bool
    tokens_not_before: int | None = None  # external tokens issued until then are refused


async def create_family(
    conn: aiosqlite.Connection,
    *,
    family_id: str,
    user_id: str,
    expires_at: str,
    user_agent: str | None,
    ip: str | None,
) -> None:
    now = utc_now()
    await conn.execute(
        "INSERT INTO login_families"
        " (id, user_id, created_at, last_used_at, expires_at, user_agent, ip)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (family_id, user_id, now, now, expires_at, user_agent, ip),
    )


async def add_refresh_token(
    conn: aiosqlite.Connection, *, token_hash: str, family_id: str, expires_at: str
) -> None:
    await conn.execute(
        "INSERT INTO refresh_tokens (token_hash, family_id, created_at, expires_at)"
        " VALUES (?, ?, ?, ?)",
        (token_hash, family_id, utc_now(), expires_at),
    )


async def get_refresh_token(conn: aiosqlite.Connection, token_hash: str) -> RefreshRecord | None:
    row = await fetch_one(
        conn,
        "SELECT r.family_id, f.user_id, r.used_at, f.revoked_at IS NOT NULL,"
        " u.role, u.disabled_at IS NOT NULL, f.created_at"
        " FROM refresh_tokens r JOIN login_families f ON f.id = r.family_id"
        " JOIN users u ON u.id = f.user_id"
        " WHERE r.token_hash = ?",
        (token_hash,),
    )
    if row is None:
        return None
    return RefreshRecord(row[0], row[1], row[2], bool(row[3]), row[4], bool(row[5]), row[6])


async def mark_refresh_token_used(conn: aiosqlite.Connection, token_hash: str) -> None:
    await conn.execute(
        "UPDATE refresh_tokens SET used_at = ? WHERE token_hash = ?", (utc_now(), token_hash)
    )


async def touch_family(
    conn: aiosqlite.Connection,
    family_id: str,
    *,
    expires_at: str,
    user_agent: str | None,
    ip: str | None,
) -> None:
    await conn.execute(
        "UPDATE login_families SET last_used_at = ?, expires_at = ?, user_agent = ?, ip = ?"
        " WHERE id = ?",
        (utc_now(), expires_at, user_agent, ip, family_id),
    )


async def revoke_family(conn: aiosqlite.Connection, family_id: str, user_id: str) -> bool:
    """Ends one login of this user; False when it is not theirs or already ended."""
    return (
        await fetch_one(
            conn,
            "UPDATE login_families SET revoked_at = ?"
            " WHERE id = ? AND user_id = ? AND revoked_at IS NULL RETURNING id",
            (utc_now(), family_id, user_id),
        )
        is not None
    )


async def revoke_other_families(
    conn: aiosqlite.Connection, user_id: str, keep_family_id: str | None
) -> None:
    await conn.execute(
        "UPDATE login_families SET revoked_at = ?"
        " WHERE user_id = ? AND revoked_at IS NULL AND id IS NOT ?",
        (utc_now(), user_id, keep_family_id),
    )


async def list_active_families(
    conn: aiosqlite.Connection, user_id: str, *, started_after: str
) -> list[LoginRecord]:
    """Logins that can still refresh (and began after `started_after`), oldest first."""
    return [
        LoginRecord(*row)
        for row in await fetch_all(
            conn,
            "SELECT id, created_at, last_used_at, user_agent, ip, expires_at FROM login_families"
            " WHERE user_id = ? AND revoked_at IS NULL AND expires_at > ? AND created_at > ?"
            " ORDER BY created_at, id",
            (user_id, utc_now(), started_after),
        )
    ]


async def revoke_access_token(conn: aiosqlite.Connection, jti: str, expires_at: int) -> None:
    await conn.execute(
        "INSERT OR IGNORE INTO revoked_access_tokens (jti, expires_at) VALUES (?, ?)",
        (jti, expires_at),
    )


async def purge_expired(conn: aiosqlite.Connection, before_epoch: int) -> None:
    """Forgets what can no longer matter: revoked ids of tokens that expired before
    `before_epoch` (callers allow for clock skew), and dead refresh tokens and logins."""
    await conn.execute("DELETE FROM revoked_access_tokens WHERE expires_at < ?", (before_epoch,))
    await conn.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", (utc_now(),))
    await conn.execute("DELETE FROM login_families WHERE expires_at < ?", (utc_now(),))


_ACCESS_STATE = f"""
SELECT
    {ACCOUNT_COLUMNS},
    EXISTS (SELECT 1 FROM revoked_access_tokens WHERE jti = :jti)
    OR (:family_id IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM login_families
        WHERE id = :family_id AND user_id = :user_id AND revoked_at IS NULL
    )),
    users.tokens_not_before
FROM users WHERE users.id = :user_id
"""  # noqa: S608 - a constant list of column names, no input


def access_state(
    conn: sqlite3.Connection, *, user_id: str, jti: str, family_id: str | None
) -> AccessState:
    """Everything a request's token depends on, and its user, in one indexed query: a read
    job (Database.read), which requests arriving together share a trip to the thread for."""
    params: dict[str, Any] = {"user_id": user_id, "jti": jti, "family_id": family_id}
    row = conn.execute(_ACCESS_STATE, params).fetchone()
    if row is None:
        return AccessState(account=None, token_revoked=False)
    return AccessState(
        account=Account(*row[:ACCOUNT_WIDTH]),
        token_revoked=bool(row[ACCOUNT_WIDTH]),
        tokens_not_before=row[ACCOUNT_WIDTH + 1],
    )
