"""Password checks for login, password change and account deletion.

bcrypt runs outside any transaction (it takes a quarter of a second); each
change then happens in a transaction that first checks the hash it verified
is still the stored one, so a password changed or an account deleted in the
meantime is never undone or ignored.

Every password check, a login's or a re-authentication's (the current password
of a password change or an account deletion), is throttled alike by its
failures (app/ratelimit.py, docs/limits.md): a stolen access token is no
better for guessing the password than the login form.
"""

from dataclasses import dataclass

import aiosqlite

from app import repository
from app.auth import PasswordHasher, TokenPair, TokenService
from app.db import Database
from app.errors import Conflict, Forbidden, InvalidCredentials, Unauthorized
from app.ratelimit import RateLimiter
from app.repository import UserRecord
from app.schemas import LoginRequest
from app.services import logins
from app.services.logins import ClientInfo

WRONG_PASSWORD = "The password is not correct."  # noqa: S105 - a message
ACCOUNT_DISABLED = "This account is disabled; ask an administrator to enable it."
EXTERNAL_ACCOUNT = "This account belongs to another sign-in service; manage it there."
ADMIN_CANNOT_LEAVE = (
    "An administrator cannot delete their own account: have another admin demote it first "
    "(or run `chatgate set-role --email <your email> user`), then delete it."
)


async def log_in(
    db: Database,
    hasher: PasswordHasher,
    tokens: TokenService,
    credentials: LoginRequest,
    client: ClientInfo,
    limiter: RateLimiter,
) -> TokenPair:
    """A new login for valid credentials; the same 401, in the same time, otherwise.

    The email's failure budget is checked before the password: a throttled
    email answers 429 whether it has an account and whether the password is
    right. A disabled account answers 403, but only to its right password.
    """
    email = credentials.email
    user = await repository.get_local_user_by_email(db.reader(), email)
    await _guard(db, limiter, email=email, ip=client.ip, user_id=user.id if user else None)
    if user is None:
        await hasher.burn_verify(credentials.password)
        await limiter.password_failed(email, client.ip)
        raise InvalidCredentials
    matches, upgraded = await hasher.verify(credentials.password, user.password_hash)
    if not matches:
        await limiter.password_failed(email, client.ip)
        raise InvalidCredentials
    async with db.transaction() as conn:
        current = await repository.get_user_by_id(conn, user.id)
        if current is None or current.password_hash != user.password_hash:
            raise InvalidCredentials  # changed or deleted while we were hashing
        if current.disabled:
            # Only with the right password: it tells nothing to someone guessing.
            raise Forbidden(ACCOUNT_DISABLED, detail="account_disabled")
        if upgraded is not None:
            await repository.update_password_hash(conn, user.id, upgraded)
        return await logins.start_login(
            conn, tokens, user_id=user.id, role=current.role, client=client
        )


@dataclass(frozen=True, slots=True)
class Reauthentication:
    """A signed-in user confirming a change with their current password."""

    user_id: str
    password: str
    client: ClientInfo


async def _guard(
    db: Database, limiter: RateLimiter, *, email: str, ip: str | None, user_id: str | None
) -> None:
    """429 before a password check whose failure budget is spent. The account-wide
    budget does not hold back an address the account is logged in from: strangers
    failing everywhere cannot lock its owner out."""
    known = False
    if ip is not None and await limiter.account_spent(email):
        # Asked for unknown emails too (of no user), so both take the same time.
        known = await repository.has_login_from(db.reader(), user_id or "", ip)
    await limiter.guard_password(email, ip, known_address=known)


async def _confirmed(
    db: Database, hasher: PasswordHasher, limiter: RateLimiter, check: Reauthentication
) -> UserRecord:
    """The account, once `check.password` is its password: throttled like a login."""
    user = await repository.get_user_by_id(db.reader(), check.user_id)
    if user is None:
        raise Unauthorized("user_not_found")
    if not user.is_local:
        raise Forbidden(EXTERNAL_ACCOUNT)
    await _guard(db, limiter, email=user.email, ip=check.client.ip, user_id=user.id)
    matches, _ = await hasher.verify(check.password, user.password_hash)
    if not matches:
        await limiter.password_failed(user.email, check.client.ip)
        raise Forbidden(WRONG_PASSWORD)
    return user


async def change_password(
    db: Database,
    hasher: PasswordHasher,
    limiter: RateLimiter,
    check: Reauthentication,
    *,
    keep_family_id: str | None,
    new: str,
) -> None:
    """Sets the new password and ends every other login of the user."""
    verified = await _confirmed(db, hasher, limiter, check)
    new_hash = await hasher.hash(new)
    async with db.transaction() as conn:
        await _still(conn, verified)
        await repository.update_password_hash(conn, verified.id, new_hash)
        await repository.revoke_other_families(conn, verified.id, keep_family_id)


async def delete_account(
    db: Database, hasher: PasswordHasher, limiter: RateLimiter, check: Reauthentication
) -> None:
    """Deletes the account and all its data; an admin's only once demoted, so that an
    admin always remains (409 before the password is even asked for)."""
    user = await repository.get_user_by_id(db.reader(), check.user_id)
    if user is not None and user.role == repository.ADMIN:
        raise Conflict(ADMIN_CANNOT_LEAVE)
    verified = await _confirmed(db, hasher, limiter, check)
    async with db.transaction() as conn:
        current = await _still(conn, verified)
        if current.role == repository.ADMIN:
            raise Conflict(ADMIN_CANNOT_LEAVE)  # promoted meanwhile
        await repository.delete_user(conn, verified.id)


async def _still(conn: aiosqlite.Connection, verified: UserRecord) -> UserRecord:
    """Inside the transaction: the account, if the password checked is still its own."""
    current = await repository.get_user_by_id(conn, verified.id)
    if current is None:
        raise Unauthorized("user_not_found")  # deleted meanwhile
    if current.password_hash != verified.password_hash:
        raise Forbidden(WRONG_PASSWORD)  # changed meanwhile: check it again
    return current
