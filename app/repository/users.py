"""Accounts: SQL over the users table."""

import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite

from app.repository.common import new_id, utc_now


class DuplicateEmail(Exception):
    pass


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    email: str
    password_hash: str
    display_name: str | None
    role: str
    created_at: str


def _user(row: Any) -> UserRecord:
    return UserRecord(*row)


async def insert_user(
    conn: aiosqlite.Connection, *, email: str, password_hash: str, display_name: str | None
) -> UserRecord:
    user = UserRecord(new_id(), email, password_hash, display_name, "user", utc_now())
    try:
        await conn.execute(
            "INSERT INTO users (id, email, password_hash, display_name, role, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                user.id,
                user.email,
                user.password_hash,
                user.display_name,
                user.role,
                user.created_at,
            ),
        )
    except sqlite3.IntegrityError as exc:
        raise DuplicateEmail(email) from exc
    return user


async def get_user_by_email(conn: aiosqlite.Connection, email: str) -> UserRecord | None:
    sql = (
        "SELECT id, email, password_hash, display_name, role, created_at FROM users WHERE email = ?"
    )
    async with conn.execute(sql, (email,)) as cur:
        row = await cur.fetchone()
    return _user(row) if row else None


async def get_user_by_id(conn: aiosqlite.Connection, user_id: str) -> UserRecord | None:
    sql = "SELECT id, email, password_hash, display_name, role, created_at FROM users WHERE id = ?"
    async with conn.execute(sql, (user_id,)) as cur:
        row = await cur.fetchone()
    return _user(row) if row else None


async def user_exists(conn: aiosqlite.Connection, user_id: str) -> bool:
    async with conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)) as cur:
        return await cur.fetchone() is not None


async def update_password_hash(
    conn: aiosqlite.Connection, user_id: str, password_hash: str
) -> None:
    await conn.execute("UPDATE users SET password_hash = ? WHERE id = ?", (password_hash, user_id))


async def email_taken(conn: aiosqlite.Connection, email: str) -> bool:
    async with conn.execute("SELECT 1 FROM users WHERE email = ?", (email,)) as cur:
        return await cur.fetchone() is not None
