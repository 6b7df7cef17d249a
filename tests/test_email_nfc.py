"""One account per address however its letters are spelled in Unicode: "é" typed as
one character or as "e" plus a combining accent (U+0301) is the same email, at
sign-up, login, its rate limit, the admin API and the `chatgate` command."""

import unicodedata
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.services import admin as admin_service
from tests.cli_process import chatgate
from tests.conftest import UserFactory
from tests.helpers import PASSWORD, User, assert_error, make_settings, running
from tests.server_process import base_environment

COMPOSED = "ren\u00e9e@example.com"  # é is one code point (NFC)
DECOMPOSED = "rene\u0301e@example.com"  # e, then U+0301 COMBINING ACUTE ACCENT (NFD)
TAKEN = "User already exists"


def nfc(text: str) -> bool:
    return unicodedata.is_normalized("NFC", text)


async def register(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/auth/register", json={"email": email, "password": PASSWORD})


async def log_in(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/auth/login", json={"email": email, "password": PASSWORD})


async def me(client: httpx.AsyncClient, login: httpx.Response) -> dict[str, str]:
    assert login.status_code == 200, login.text
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    response = await client.get("/auth/me", headers=headers)
    user: dict[str, str] = response.json()["user"]
    return user


class TestSignUp:
    @pytest.mark.parametrize(
        ("first", "second"), [(COMPOSED, DECOMPOSED), (DECOMPOSED, COMPOSED)], ids=["nfc", "nfd"]
    )
    async def test_the_other_spelling_of_a_taken_email_is_a_409(
        self, client: httpx.AsyncClient, first: str, second: str
    ) -> None:
        created = await register(client, first)
        assert created.status_code == 201, created.text
        assert created.json()["user"]["email"] == COMPOSED
        assert_error(await register(client, second), 409, TAKEN)
        assert_error(await register(client, second.upper()), 409, TAKEN)

    @pytest.mark.parametrize(
        ("typed", "stored"),
        [
            ("RENE\u0301E@Example.COM", COMPOSED),
            # Lowering leaves t + U+0308, which composes to U+1E97: NFC comes after too.
            ("T\u0308om@example.com", "\u1e97om@example.com"),
            ("\u1f71lpha@example.com", "\u03aclpha@example.com"),  # NFC maps the oxia form
            ("\u1100\u1161@example.com", "\uac00@example.com"),  # Hangul jamo compose
            ("\uf900@example.com", "\u8c48@example.com"),  # a compatibility ideograph
        ],
    )
    async def test_an_email_is_stored_in_nfc(
        self, client: httpx.AsyncClient, typed: str, stored: str
    ) -> None:
        created = await register(client, typed)
        assert created.status_code == 201, created.text
        assert created.json()["user"]["email"] == stored
        assert nfc(stored)
        assert (await me(client, await log_in(client, stored)))["email"] == stored
        assert (await me(client, await log_in(client, typed)))["email"] == stored

    async def test_a_letter_nfc_leaves_decomposed_is_still_an_email(
        self, client: httpx.AsyncClient
    ) -> None:
        """U+0958 is a composition exclusion: its NFC is U+0915 and a combining nukta."""
        created = await register(client, "\u0958@example.com")
        assert created.status_code == 201, created.text
        assert created.json()["user"]["email"] == "\u0915\u093c@example.com"
        assert_error(await register(client, "\u0915\u093c@example.com"), 409, TAKEN)
        for marks_alone in ("\u093c@example.com", "\u0301\u0308@example.com"):
            assert_error(await register(client, marks_alone), 422)


class TestLogin:
    async def test_either_spelling_logs_in_to_the_one_account(
        self, client: httpx.AsyncClient, make_user: UserFactory
    ) -> None:
        user = await make_user(COMPOSED)
        for email in (COMPOSED, DECOMPOSED, DECOMPOSED.upper()):
            assert (await me(client, await log_in(client, email)))["id"] == user.id
        form = await client.post("/auth/login", data={"username": DECOMPOSED, "password": PASSWORD})
        assert (await me(client, form))["id"] == user.id

    async def test_the_per_email_limit_counts_both_spellings_as_one(self, tmp_path: Path) -> None:
        settings = make_settings(
            tmp_path, rate_limit_enabled=True, rate_limit_login_email="2/minute"
        )
        async with running(settings) as (_, c):
            wrong = {"password": "not the password"}
            for email in (COMPOSED, DECOMPOSED):
                response = await c.post("/auth/login", json={"email": email, **wrong})
                assert_error(response, 401, "Invalid credentials")
            response = await c.post("/auth/login", json={"email": DECOMPOSED.upper(), **wrong})
            assert_error(response, 429)


class TestAdministration:
    @pytest.fixture
    async def admin(self, app: FastAPI, client: httpx.AsyncClient, make_user: UserFactory) -> User:
        user = await make_user("root@example.com")
        await admin_service.set_role_by_email(app.state.services.db, email=user.email, role="admin")
        login = await log_in(client, user.email)
        return User(user.id, user.email, PASSWORD, login.json()["access_token"], "")

    async def test_search_finds_an_account_by_either_spelling(
        self, client: httpx.AsyncClient, make_user: UserFactory, admin: User
    ) -> None:
        user = await make_user(COMPOSED)
        for query in ("ren\u00e9", "rene\u0301", "RENE\u0301E@"):
            response = await client.get(
                "/admin/users", params={"email": query}, headers=admin.headers
            )
            assert response.status_code == 200, response.text
            assert [u["id"] for u in response.json()["users"]] == [user.id], query

    async def test_creating_the_other_spelling_of_a_taken_email_is_a_409(
        self, client: httpx.AsyncClient, admin: User
    ) -> None:
        body = {"email": DECOMPOSED, "password": PASSWORD}
        created = await client.post("/admin/users", json=body, headers=admin.headers)
        assert created.status_code == 201, created.text
        assert created.json()["user"]["email"] == COMPOSED
        body["email"] = COMPOSED
        taken = await client.post("/admin/users", json=body, headers=admin.headers)
        assert_error(taken, 409, TAKEN)
        assert_error(await register(client, DECOMPOSED), 409, TAKEN)

    async def test_the_command_stores_and_finds_one_spelling(self, tmp_path: Path) -> None:
        env = base_environment(tmp_path)
        made = chatgate(tmp_path, env, "create-user", "--email", DECOMPOSED, stdin=b"a password!\n")
        assert made.status == 0, made.stderr
        assert made.stdout.startswith(f"created user {COMPOSED} ")
        promoted = chatgate(tmp_path, env, "set-role", "--email", COMPOSED, "admin")
        assert promoted.status == 0, promoted.stderr
        settings = make_settings(tmp_path, database_url=env["DATABASE_URL"])
        async with running(settings) as (_, c):
            login = await c.post("/auth/login", json={"email": COMPOSED, "password": "a password!"})
            user = await me(c, login)
        assert (user["email"], user["role"]) == (COMPOSED, "admin")
