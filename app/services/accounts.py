"""Password checks for login, password change and account deletion.

bcrypt runs outside any transaction (it takes a quarter of a second); each
change then happens in a transaction that first checks the hash it verified
is still the stored one, so a password changed or an account deleted in the
meantime is never undone or ignored.
"""

import aiosqlite

from app import repository
from app.auth import PasswordHasher, TokenPair, TokenService
from app.db import Database
from app.errors import Forbidden, InvalidCredentials, Unauthorized
from app.ratelimit import RateLimiter
from app.schemas import LoginRequest
from app.services import logins
from app.services.logins import ClientInfo

WRONG_PASSWORD = "The password is not correct."  # noqa: S105 - a message
ACCOUNT_DISABLED = "This account is disabled; ask an administrator to enable it."
EXTERNAL_ACCOUNT = "This account belongs to another sign-in service; manage it there."


async def log_in(
    db: Database,
    hasher: PasswordHasher,
    tokens: TokenService,
    credentials: LoginRequest,
    client: ClientInfo,
    limiter: RateLimiter,
) -> TokenPair:
    """A new login for valid credentials; the same 401, in the same time, otherwise.

    The target email's rate limit comes first, before the account is looked up
    or the password checked: a throttled email answers 429 whether it has an
    account and whether the password is right. A disabled account answers 403,
    but only to its right password.
    """
    await limiter.check_login_email(credentials.email)
    user = await repository.get_local_user_by_email(db.reader(), credentials.email)
    if user is None:
        await hasher.burn_verify(credentials.password)
        raise InvalidCredentials
    matches, upgraded = await hasher.verify(credentials.password, user.password_hash)
    if not matches:
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


async def _confirmed(db: Database, hasher: PasswordHasher, user_id: str, password: str) -> str:
    """The stored hash, once `password` matches it."""
    user = await repository.get_user_by_id(db.reader(), user_id)
    if user is None:
        raise Unauthorized("user_not_found")
    if not user.is_local:
        raise Forbidden(EXTERNAL_ACCOUNT)
    matches, _ = await hasher.verify(password, user.password_hash)
    if not matches:
        raise Forbidden(WRONG_PASSWORD)
    return user.password_hash


async def change_password(
    db: Database,
    hasher: PasswordHasher,
    *,
    user_id: str,
    keep_family_id: str | None,
    current: str,
    new: str,
) -> None:
    """Sets the new password and ends every other login of the user."""
    verified = await _confirmed(db, hasher, user_id, current)
    new_hash = await hasher.hash(new)
    async with db.transaction() as conn:
        await _still(conn, user_id, verified)
        await repository.update_password_hash(conn, user_id, new_hash)
        await repository.revoke_other_families(conn, user_id, keep_family_id)


async def delete_account(
    db: Database, hasher: PasswordHasher, *, user_id: str, password: str
) -> None:
    verified = await _confirmed(db, hasher, user_id, password)
    async with db.transaction() as conn:
        await _still(conn, user_id, verified)
        await repository.delete_user(conn, user_id)


async def _still(conn: aiosqlite.Connection, user_id: str, verified: str) -> None:
    """Inside the transaction: the password checked is still the account's."""
    stored = await repository.get_password_hash(conn, user_id)
    if stored is None:
        raise Unauthorized("user_not_found")  # deleted meanwhile
    if stored != verified:
        raise Forbidden(WRONG_PASSWORD)  # changed meanwhile: check it again
