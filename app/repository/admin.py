"""What administrators read: accounts with their usage, and the service's totals."""

from dataclasses import dataclass
from typing import Any

import aiosqlite

from app.repository.common import fetch_all, fetch_one
from app.repository.users import ACCOUNT_COLUMNS, Account


@dataclass(frozen=True, slots=True)
class UserSummary(Account):
    session_count: int
    message_count: int

    @classmethod
    def of_new(cls, user: Account) -> "UserSummary":
        """A just-created account: no sessions, no messages, nothing to read back."""
        return cls(
            user.id,
            user.email,
            user.display_name,
            user.role,
            user.created_at,
            user.auth_source,
            user.disabled_at,
            session_count=0,
            message_count=0,
        )


@dataclass(frozen=True, slots=True)
class ServiceStats:
    users: int
    admins: int
    disabled_users: int
    sessions: int
    messages: int
    messages_last_day: int


# Counts through the sessions' index on user_id; message_count is kept by every write.
_SUMMARY = f"""
SELECT {ACCOUNT_COLUMNS},
    (SELECT count(*) FROM chat_sessions s WHERE s.user_id = users.id),
    (SELECT coalesce(sum(s.message_count), 0) FROM chat_sessions s WHERE s.user_id = users.id)
FROM users
"""  # noqa: S608 - a constant list of column names, no input
# Only local accounts have an email; another issuer's users keep their id in that column.
_EMAIL_CONTAINS = "users.auth_source = 'local' AND instr(users.email, :email) > 0"
_AFTER_CURSOR = "(users.created_at, users.id) < (:created_at, :id)"
_NEWEST_FIRST = " ORDER BY users.created_at DESC, users.id DESC LIMIT :limit"


def _summary(row: Any) -> UserSummary:
    return UserSummary(*row)  # the account's columns, then the two counts


async def list_users(
    conn: aiosqlite.Connection,
    *,
    limit: int,
    before: tuple[str, str] | None,
    email_contains: str | None,
) -> list[UserSummary]:
    """Newest accounts first; `before` is the (created_at, id) of the last one already seen.
    `email_contains` is a plain substring (no wildcards) of the stored, lower-case email."""
    conditions: list[str] = []
    params: dict[str, Any] = {"limit": limit}
    if email_contains:
        conditions.append(_EMAIL_CONTAINS)
        params["email"] = email_contains
    if before is not None:
        conditions.append(_AFTER_CURSOR)
        params["created_at"], params["id"] = before
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await fetch_all(conn, _SUMMARY + where + _NEWEST_FIRST, params)
    return [_summary(row) for row in rows]


async def get_user_summary(conn: aiosqlite.Connection, user_id: str) -> UserSummary | None:
    row = await fetch_one(conn, _SUMMARY + " WHERE users.id = :id", {"id": user_id})
    return _summary(row) if row else None


async def service_stats(conn: aiosqlite.Connection, *, since: str) -> ServiceStats:
    """Totals, and the messages written at or after `since`. That count reads every
    message's timestamp (no index: it would cost every write); a second or so for ten
    million messages, on a reader's thread."""
    row = await fetch_one(
        conn,
        "SELECT"
        " (SELECT count(*) FROM users),"
        " (SELECT count(*) FROM users WHERE role = 'admin'),"
        " (SELECT count(*) FROM users WHERE disabled_at IS NOT NULL),"
        " (SELECT count(*) FROM chat_sessions),"
        " (SELECT count(*) FROM messages),"
        " (SELECT count(*) FROM messages WHERE created_at >= ?)",
        (since,),
    )
    assert row is not None  # noqa: S101 - a SELECT without FROM always has its row
    return ServiceStats(*(int(value) for value in row))
