"""Account administration, shared by the admin API and the operator CLI.

`actor_id` is the admin acting through the API; None is the operator at the
command line. An admin cannot disable, demote or delete themselves here, so
the API always leaves at least the acting admin in charge: each change checks,
in its own transaction, that its admin still is one.
"""

import time

import aiosqlite

from app import repository
from app.auth import PasswordHasher
from app.db import Database
from app.errors import AdminOnly, Conflict, NotFound
from app.repository import UserRecord, UserSummary

USER_EXISTS = "User already exists"
NOT_YOURSELF = (
    "Admins cannot disable, demote or delete their own account; another admin "
    "(or the chatgate command) can."
)


class UserNotFound(NotFound):
    message = "User not found"


def _not_self(actor_id: str | None, user_id: str) -> None:
    if actor_id is not None and actor_id == user_id:
        raise Conflict(NOT_YOURSELF)


async def _still_admin(conn: aiosqlite.Connection, actor_id: str | None) -> None:
    """Inside the change's transaction: the acting admin is still an enabled admin.

    The request's check ran before the transaction; two admins disabling each
    other at once would otherwise both succeed and leave no admin at all.
    """
    if actor_id is None:
        return
    actor = await repository.get_user_by_id(conn, actor_id)
    if actor is None or actor.role != repository.ADMIN or actor.disabled:
        raise AdminOnly


async def create_user(
    db: Database,
    hasher: PasswordHasher,
    *,
    email: str,
    password: str,
    display_name: str | None = None,
    role: str = repository.USER,
    actor_id: str | None = None,
) -> UserRecord:
    """A local account, as sign-up makes it but with any role; 409 when the email is taken."""
    if await repository.email_taken(db.reader(), email):
        raise Conflict(USER_EXISTS)
    password_hash = await hasher.hash(password)
    try:
        async with db.transaction() as conn:
            await _still_admin(conn, actor_id)
            return await repository.insert_user(
                conn,
                email=email,
                password_hash=password_hash,
                display_name=display_name,
                role=role,
            )
    except repository.DuplicateEmail:
        raise Conflict(USER_EXISTS) from None


async def get_user(db: Database, user_id: str) -> UserSummary:
    user = await repository.get_user_summary(db.reader(), user_id)
    if user is None:
        raise UserNotFound
    return user


async def update_user(
    db: Database,
    *,
    actor_id: str | None,
    user_id: str,
    role: str | None = None,
    disabled: bool | None = None,
) -> UserSummary:
    """Changes the role and/or the disabled flag, together. Disabling also ends every
    login, so enabling again does not bring old tokens back: the user logs in anew."""
    if (role is not None and role != repository.ADMIN) or disabled:
        _not_self(actor_id, user_id)
    async with db.transaction() as conn:
        await _still_admin(conn, actor_id)
        # Each change is a no-op for an unknown id; the summary read last tells.
        if role is not None:
            await repository.set_role(conn, user_id, role)
        if disabled is not None:
            await repository.set_disabled(conn, user_id, disabled)
            if disabled:
                await repository.revoke_other_families(conn, user_id, None)
        summary = await repository.get_user_summary(conn, user_id)
    if summary is None:
        raise UserNotFound
    return summary


async def delete_user(db: Database, *, actor_id: str | None, user_id: str) -> None:
    """The account and everything of it: sessions, messages, logins."""
    _not_self(actor_id, user_id)
    async with db.transaction() as conn:
        await _still_admin(conn, actor_id)
        if not await repository.delete_user(conn, user_id):
            raise UserNotFound


async def reset_password(
    db: Database, hasher: PasswordHasher, *, email: str, password: str
) -> UserRecord:
    """Sets a new password for a local account and ends all its logins."""
    user = await repository.get_local_user_by_email(db.reader(), email)
    if user is None:
        raise UserNotFound
    password_hash = await hasher.hash(password)
    async with db.transaction() as conn:
        if await repository.get_password_hash(conn, user.id) is None:
            raise UserNotFound  # deleted while we were hashing
        await repository.update_password_hash(conn, user.id, password_hash)
        await repository.revoke_other_families(conn, user.id, None)
    return user


async def set_role_by_email(db: Database, *, email: str, role: str) -> UserRecord:
    """For the operator: make an existing local account an admin (or a user again)."""
    user = await repository.get_local_user_by_email(db.reader(), email)
    if user is None:
        raise UserNotFound
    async with db.transaction() as conn:
        if not await repository.set_role(conn, user.id, role):
            raise UserNotFound
    return user


async def stats(db: Database) -> repository.ServiceStats:
    since = repository.utc_from_epoch(int(time.time()) - 86400)
    return await repository.service_stats(db.reader(), since=since)


async def list_users(
    db: Database, *, limit: int, before: tuple[str, str] | None, email_contains: str | None
) -> list[UserSummary]:
    return await repository.list_users(
        db.reader(), limit=limit, before=before, email_contains=email_contains
    )
