"""Upgrades keep data: a file the first release wrote opens in this chatgate, all of it there.

tests/fixtures/schema2.db was written by chatgate c89f28e (schema version 2), through
its own HTTP API, by scripts/make_upgrade_fixture.py; schema2.json holds every
user's email and password and every session and message as that version answered
them. Each test starts the current app on a copy of the file, which migrates it,
and reads everything back through HTTP.
"""

import contextlib
import hashlib
import json
import shutil
import sqlite3
import unicodedata
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from app.db import SCHEMA_VERSION
from tests.helpers import assert_error, make_settings, running

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_DB = FIXTURES / "schema2.db"
RECORDED: dict[str, Any] = json.loads((FIXTURES / "schema2.json").read_text(encoding="utf-8"))
USERS: list[dict[str, Any]] = RECORDED["users"]
NOT_FOUND = "Session not found or access denied"


def user_version_in_header(path: Path) -> int:
    """PRAGMA user_version, read from the file's header without opening it in SQLite."""
    return int.from_bytes(path.read_bytes()[60:64], "big")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sessions_of(user: dict[str, Any]) -> list[dict[str, Any]]:
    return [s["session"] for s in user["sessions"]]


def every_session() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(user, s) for user in USERS for s in user["sessions"]]


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """A copy of the released file, owner-only like the files chatgate creates."""
    copy = tmp_path / "data" / "chatgate.db"
    copy.parent.mkdir(mode=0o700)
    shutil.copyfile(FIXTURE_DB, copy)
    copy.chmod(0o600)
    return copy


def settings_for(data_file: Path) -> Settings:
    return make_settings(data_file.parent, database_url=f"sqlite:///{data_file}")


@pytest.fixture
async def upgraded(data_file: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The current app, started on the copy (which migrates it), through its lifespan."""
    async with running(settings_for(data_file)) as (_, c):
        yield c


async def log_in(client: httpx.AsyncClient, user: dict[str, Any]) -> dict[str, str]:
    response = await client.post(
        "/auth/login", json={"email": user["email"], "password": user["password"]}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def history(
    client: httpx.AsyncClient, session_id: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    response = await client.get(
        f"/chat/session/{session_id}/history", params={"limit": 500}, headers=headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def check_file(path: Path) -> tuple[int, list[Any], list[Any], int]:
    """user_version, integrity_check, foreign_key_check and the number of messages."""
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        foreign_keys = conn.execute("PRAGMA foreign_key_check").fetchall()
        messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    conn.close()
    return version, integrity, foreign_keys, messages


class TestTheReleasedFixture:
    def test_is_a_schema_2_file_as_the_release_wrote_it(self) -> None:
        assert RECORDED["schema_version"] == 2
        assert user_version_in_header(FIXTURE_DB) == 2
        assert sha256_of(FIXTURE_DB) == RECORDED["sha256"]
        # Otherwise there is nothing to upgrade and these tests prove nothing.
        assert RECORDED["schema_version"] < SCHEMA_VERSION

    def test_holds_what_an_upgrade_can_lose(self) -> None:
        contents = [m["content"] for _, s in every_session() for m in s["messages"]]
        assert len(USERS) >= 3
        assert any(user["user"]["display_name"] for user in USERS)
        assert any(user["old_passwords"] for user in USERS)
        assert any(user["deleted_sessions"] for user in USERS)
        assert any(user["email"] != user["user"]["email"] for user in USERS)  # mixed case
        assert any(len(text) > 10_000 for text in contents)
        assert any("\r\n" in text for text in contents)
        assert any("\u200d" in text for text in contents)  # emoji joined by ZWJ
        assert any("DROP TABLE" in text for text in contents)
        assert any("\x00" in text for text in contents)


class TestAnUpgradedDataFile:
    async def test_is_at_the_current_schema_version(self, data_file: Path) -> None:
        async with running(settings_for(data_file)) as (app, c):
            assert await app.state.services.db.schema_version() == SCHEMA_VERSION
            assert (await c.get("/readyz")).status_code == 200
        assert check_file(data_file)[0] == SCHEMA_VERSION

    async def test_lets_every_user_log_in_as_the_same_account(
        self, upgraded: httpx.AsyncClient
    ) -> None:
        for user in USERS:
            for email in (user["email"], user["user"]["email"], user["email"].upper()):
                response = await upgraded.post(
                    "/auth/login", json={"email": email, "password": user["password"]}
                )
                assert response.status_code == 200, (email, response.text)
            me = await upgraded.get("/auth/me", headers=await log_in(upgraded, user))
            assert me.status_code == 200
            assert me.json()["user"] == user["user"]

    async def test_keeps_a_changed_password_changed(self, upgraded: httpx.AsyncClient) -> None:
        changed = [user for user in USERS if user["old_passwords"]]
        assert changed
        for user in changed:
            for old in user["old_passwords"]:
                response = await upgraded.post(
                    "/auth/login", json={"email": user["email"], "password": old}
                )
                assert_error(response, 401, "Invalid credentials")
            await log_in(upgraded, user)

    async def test_lists_exactly_each_users_own_sessions(self, upgraded: httpx.AsyncClient) -> None:
        for user in USERS:
            response = await upgraded.get(
                "/chat/sessions", params={"limit": 100}, headers=await log_in(upgraded, user)
            )
            assert response.status_code == 200
            body = response.json()
            assert body["sessions"] == sessions_of(user)  # same ids, titles, times, order
            assert body["count"] == len(user["sessions"])
            assert body["next_cursor"] is None
            gone = {s["session"]["id"] for s in user["deleted_sessions"]}
            assert gone.isdisjoint(s["id"] for s in body["sessions"])

    async def test_gives_back_every_message_byte_for_byte_in_order(
        self, upgraded: httpx.AsyncClient
    ) -> None:
        for user in USERS:
            headers = await log_in(upgraded, user)
            for recorded in user["sessions"]:
                session_id = recorded["session"]["id"]
                messages = await history(upgraded, session_id, headers)
                assert messages == recorded["messages"]  # ids, roles, times, text
                assert [m["content"].encode() for m in messages] == [
                    m["content"].encode() for m in recorded["messages"]
                ]
                one = await upgraded.get(f"/chat/session/{session_id}", headers=headers)
                assert one.json()["session"] == recorded["session"]
                assert one.json()["session"]["message_count"] == len(messages)

    async def test_gives_history_pages_without_gaps_or_repeats(
        self, upgraded: httpx.AsyncClient
    ) -> None:
        user, recorded = max(every_session(), key=lambda pair: len(pair[1]["messages"]))
        assert len(recorded["messages"]) > 6
        headers = await log_in(upgraded, user)
        seen: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 3}
        while True:
            response = await upgraded.get(
                f"/chat/session/{recorded['session']['id']}/history", params=params, headers=headers
            )
            assert response.status_code == 200
            seen += response.json()["messages"]
            if response.json()["next_cursor"] is None:
                break
            params["cursor"] = response.json()["next_cursor"]
        assert seen == recorded["messages"]

    async def test_keeps_a_deleted_session_deleted(self, upgraded: httpx.AsyncClient) -> None:
        owners = [user for user in USERS if user["deleted_sessions"]]
        assert owners
        for user in owners:
            headers = await log_in(upgraded, user)
            for deleted in user["deleted_sessions"]:
                session_id = deleted["session"]["id"]
                assert_error(
                    await upgraded.get(f"/chat/session/{session_id}", headers=headers), 404
                )
                assert_error(
                    await upgraded.get(f"/chat/session/{session_id}/history", headers=headers), 404
                )
                response = await upgraded.post(
                    "/chat/message",
                    json={"session_id": session_id, "message": "anyone there?"},
                    headers=headers,
                )
                assert_error(response, 404, NOT_FOUND)

    async def test_keeps_each_users_sessions_out_of_everyone_elses_reach(
        self, upgraded: httpx.AsyncClient
    ) -> None:
        headers = [await log_in(upgraded, user) for user in USERS]
        for owner in USERS:
            for other, other_headers in zip(USERS, headers, strict=True):
                if other is owner:
                    continue
                for recorded in owner["sessions"]:
                    response = await upgraded.get(
                        f"/chat/session/{recorded['session']['id']}/history",
                        headers=other_headers,
                    )
                    assert_error(response, 404, NOT_FOUND)

    async def test_lets_a_conversation_go_on_where_it_stopped(self, data_file: Path) -> None:
        user = USERS[0]
        recorded = max(user["sessions"], key=lambda s: len(s["messages"]))
        session_id = recorded["session"]["id"]
        before = recorded["messages"]
        async with running(settings_for(data_file)) as (_, c):
            headers = await log_in(c, user)
            sent = await c.post(
                "/chat/message",
                json={"session_id": session_id, "message": "and after the upgrade?"},
                headers=headers,
            )
            assert sent.status_code == 200, sent.text
            pair = [sent.json()["user_message"], sent.json()["assistant_message"]]
            assert [m["role"] for m in pair] == ["user", "assistant"]
            assert pair[0]["content"] == "and after the upgrade?"
            assert {m["id"] for m in pair}.isdisjoint(m["id"] for m in before)
            assert pair[0]["created_at"] >= before[-1]["created_at"]
            assert await history(c, session_id, headers) == [*before, *pair]
            listed = (await c.get("/chat/sessions", headers=headers)).json()["sessions"]
            assert listed[0]["id"] == session_id  # the newest activity comes first again
            assert listed[0]["message_count"] == len(before) + 2
        # And it is all still there when the service starts again on the upgraded file.
        async with running(settings_for(data_file)) as (app, c):
            assert await app.state.services.db.schema_version() == SCHEMA_VERSION
            headers = await log_in(c, user)
            assert await history(c, session_id, headers) == [*before, *pair]
            for other in user["sessions"]:
                if other is not recorded:
                    assert await history(c, other["session"]["id"], headers) == other["messages"]

    async def test_passes_sqlites_integrity_and_foreign_key_checks(self, data_file: Path) -> None:
        async with running(settings_for(data_file)) as (_, c):
            user = USERS[-1]
            response = await c.post(
                "/chat/message",
                json={"session_id": user["sessions"][0]["session"]["id"], "message": "one more"},
                headers=await log_in(c, user),
            )
            assert response.status_code == 200
        version, integrity, foreign_keys, messages = check_file(data_file)
        assert version == SCHEMA_VERSION
        assert integrity == [("ok",)]
        assert foreign_keys == []
        assert messages == sum(len(s["messages"]) for _, s in every_session()) + 2

    async def test_leaves_the_fixture_itself_untouched(self, data_file: Path) -> None:
        siblings = sorted(p.name for p in FIXTURES.iterdir())
        async with running(settings_for(data_file)) as (_, c):
            user = USERS[0]
            response = await c.post(
                "/chat/session/new",
                json={"title": "written to the copy"},
                headers=await log_in(c, user),
            )
            assert response.status_code == 201
        assert check_file(data_file)[0] == SCHEMA_VERSION
        assert sha256_of(FIXTURE_DB) == RECORDED["sha256"]
        assert user_version_in_header(FIXTURE_DB) == 2
        assert sorted(p.name for p in FIXTURES.iterdir()) == siblings  # no -wal, no -shm


# Emails stored in another Unicode spelling than NFC: the first release took any
# characters before the @, and later ones still stored letters such as U+1F71
# (which NFC maps to U+03AC) as typed. Schema 5 rewrites them in NFC.
ZOE = next(user for user in USERS if not user["user"]["email"].isascii())
ZOE_NFD = unicodedata.normalize("NFD", ZOE["user"]["email"])
ZOE_HALF = "zo\u00eb.mu\u0308ller@example.de"  # one letter composed, one not


def stored_emails(path: Path) -> dict[str, str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return dict(conn.execute("SELECT id, email FROM users").fetchall())


def restore_email(path: Path, user_id: str, email: str) -> None:
    """As an older chatgate left the row."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE users SET email = ? WHERE id = ?", (email, user_id))


def add_twin(path: Path, email: str, created_at: str) -> str:
    """Another account, with Zoë's password, under another spelling of her address."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute(
            "INSERT INTO users (id, email, password_hash, display_name, role, created_at)"
            " SELECT 'twin', ?, password_hash, NULL, 'user', ? FROM users WHERE id = ?",
            (email, created_at, ZOE["user"]["id"]),
        )
    return "twin"


async def account_of(client: httpx.AsyncClient, email: str) -> str:
    response = await client.post("/auth/login", json={"email": email, "password": ZOE["password"]})
    assert response.status_code == 200, (email, response.text)
    me = await client.get(
        "/auth/me", headers={"Authorization": f"Bearer {response.json()['access_token']}"}
    )
    user_id: str = me.json()["user"]["id"]
    return user_id


class TestEmailsStoredInAnotherSpelling:
    async def test_a_decomposed_email_is_found_by_either_spelling(self, data_file: Path) -> None:
        restore_email(data_file, ZOE["user"]["id"], ZOE_NFD)
        async with running(settings_for(data_file)) as (_, c):
            for email in (ZOE["email"], ZOE["user"]["email"], ZOE_NFD, ZOE_HALF):
                assert await account_of(c, email) == ZOE["user"]["id"]
            me = await c.get("/auth/me", headers=await log_in(c, ZOE))
            assert me.json()["user"] == ZOE["user"]  # the composed spelling, as registered
            taken = await c.post("/auth/register", json={"email": ZOE_NFD, "password": "x" * 12})
            assert_error(taken, 409, "User already exists")
        assert stored_emails(data_file)[ZOE["user"]["id"]] == ZOE["user"]["email"]

    async def test_of_two_spellings_the_composed_one_keeps_the_address(
        self, data_file: Path
    ) -> None:
        twin = add_twin(data_file, ZOE_NFD, "2026-12-02T00:00:00.000000Z")
        async with running(settings_for(data_file)) as (app, c):
            assert await app.state.services.db.schema_version() == SCHEMA_VERSION
            for email in (ZOE["user"]["email"], ZOE_NFD):
                assert await account_of(c, email) == ZOE["user"]["id"]
        emails = stored_emails(data_file)
        assert emails[twin] == ZOE_NFD  # left as it was: its data stays, for an admin to see
        assert emails[ZOE["user"]["id"]] == ZOE["user"]["email"]
        assert check_file(data_file)[1:3] == ([("ok",)], [])

    async def test_of_two_other_spellings_the_oldest_account_gets_the_address(
        self, data_file: Path
    ) -> None:
        restore_email(data_file, ZOE["user"]["id"], ZOE_HALF)
        twin = add_twin(data_file, ZOE_NFD, "2026-11-30T00:00:00.000000Z")  # older than Zoë
        async with running(settings_for(data_file)) as (_, c):
            for email in (ZOE["user"]["email"], ZOE_NFD, ZOE_HALF):
                assert await account_of(c, email) == twin
        emails = stored_emails(data_file)
        assert (emails[twin], emails[ZOE["user"]["id"]]) == (ZOE["user"]["email"], ZOE_HALF)
