"""Logins: issuing token pairs, rotating refresh tokens, and ending logins.

A login is a family of refresh tokens descended from one password login. Each
refresh retires the token it used; presenting a retired token again means it
was copied, so the whole family (and every access token it issued) ends. A login
also ends at a fixed age (LOGIN_MAX_AGE_DAYS) however often it refreshes, so a
stolen refresh token kept in use cannot live for ever.
"""

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

import aiosqlite

from app import repository
from app.auth import CLOCK_SKEW_SECONDS, AccessClaims, TokenPair, TokenService
from app.db import Database
from app.errors import Unauthorized

USER_AGENT_MAX_CHARS = 300


@dataclass(frozen=True, slots=True)
class ClientInfo:
    user_agent: str | None
    ip: str | None


@dataclass(frozen=True, slots=True)
class ActiveLogin:
    record: repository.LoginRecord
    expires_at: str  # the end however often it refreshes: created_at + the maximum age
    refresh_expires_at: str  # the end unless it refreshes before; never after expires_at


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _epoch(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp())


async def start_login(
    conn: aiosqlite.Connection,
    tokens: TokenService,
    *,
    user_id: str,
    role: str,
    client: ClientInfo,
) -> TokenPair:
    """A new login (family) and its first pair, inside the caller's transaction."""
    family_id = repository.new_id()
    pair = tokens.issue_pair(user_id, family_id, role)
    expires_at = repository.utc_from_epoch(pair.refresh_expires_at)
    # A token is accepted until exp + skew: its revocation must outlive that.
    await repository.purge_expired(conn, int(time.time()) - CLOCK_SKEW_SECONDS)
    await repository.create_family(
        conn,
        family_id=family_id,
        user_id=user_id,
        expires_at=expires_at,
        user_agent=client.user_agent,
        ip=client.ip,
    )
    await repository.add_refresh_token(
        conn, token_hash=token_hash(pair.refresh_token), family_id=family_id, expires_at=expires_at
    )
    return pair


async def rotate(
    db: Database, tokens: TokenService, *, refresh_token: str, client: ClientInfo
) -> TokenPair:
    """A new pair for a live refresh token, which is retired; reuse ends the family."""
    claims = tokens.verify_refresh(refresh_token)
    digest = token_hash(refresh_token)
    async with db.transaction() as conn:
        record = await repository.get_refresh_token(conn, digest)
        if record is None or (record.family_id, record.user_id) != (
            claims.family_id,
            claims.user_id,
        ):
            raise Unauthorized("invalid_token")
        if record.family_revoked:
            raise Unauthorized("token_revoked")
        if record.user_disabled:
            raise Unauthorized("user_disabled")
        started = _epoch(record.login_created_at)
        if time.time() >= tokens.login_ends_at(started):
            raise Unauthorized("login_expired")
        if record.used_at is None:
            pair = tokens.issue_pair(record.user_id, record.family_id, record.role, started)
            expires_at = repository.utc_from_epoch(pair.refresh_expires_at)
            await repository.mark_refresh_token_used(conn, digest)
            await repository.add_refresh_token(
                conn,
                token_hash=token_hash(pair.refresh_token),
                family_id=record.family_id,
                expires_at=expires_at,
            )
            await repository.touch_family(
                conn,
                record.family_id,
                expires_at=expires_at,
                user_agent=client.user_agent,
                ip=client.ip,
            )
            return pair
        # Committed before answering: the family must stay dead.
        await repository.revoke_family(conn, record.family_id, record.user_id)
    raise Unauthorized("refresh_token_reused")


async def logout(
    db: Database, tokens: TokenService, *, access: AccessClaims, refresh_token: str | None
) -> None:
    """Ends the access token used, its login, and the given refresh token's login if it is
    the same user's; someone else's refresh token is left alone."""
    other_family = await _family_of(db, tokens, refresh_token, access.user_id)
    async with db.transaction() as conn:
        await repository.revoke_access_token(conn, access.jti, access.expires_at)
        for family_id in (access.family_id, other_family):
            if family_id is not None:
                await repository.revoke_family(conn, family_id, access.user_id)


async def _family_of(
    db: Database, tokens: TokenService, refresh_token: str | None, user_id: str
) -> str | None:
    if not refresh_token:
        return None
    try:
        claims = tokens.verify_refresh(refresh_token)
    except Unauthorized:
        return None  # expired or junk: nothing left to end
    record = await repository.get_refresh_token(db.reader(), token_hash(refresh_token))
    if record is None or record.user_id != user_id or claims.user_id != user_id:
        return None
    return record.family_id


async def active_logins(db: Database, tokens: TokenService, user_id: str) -> list[ActiveLogin]:
    """The user's logins that can still refresh, oldest first, with when each ends."""
    oldest = repository.utc_from_epoch(int(time.time()) - tokens.login_max_age)
    rows = await repository.list_active_families(db.reader(), user_id, started_after=oldest)
    return [_with_ends(row, tokens) for row in rows]


def _with_ends(row: repository.LoginRecord, tokens: TokenService) -> ActiveLogin:
    ends = repository.utc_from_epoch(tokens.login_ends_at(_epoch(row.created_at)))
    # A login refreshed before the maximum age was set (or lowered) may hold a later expiry.
    return ActiveLogin(row, expires_at=ends, refresh_expires_at=min(row.expires_at, ends))
