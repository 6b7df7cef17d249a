"""Register, log in and ask who you are, through HTTP, as the contract describes them."""

import asyncio
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import bcrypt
import httpx
import pytest
from fastapi import FastAPI

from app import repository
from app.config import Settings
from app.main import create_app
from tests.helpers import PASSWORD, User, assert_error, assert_unauthorized, make_settings

USER_FIELDS = {"id", "email", "display_name", "role", "created_at"}
TOKEN_FIELDS = {"success", "access_token", "refresh_token", "token_type", "expires_in"}
INVALID_CREDENTIALS = "Invalid credentials"
ALREADY_EXISTS = "User already exists"


def _walk(value: Any) -> Iterator[tuple[str | None, Any]]:
    """Every (key, value) pair of a JSON document, at any depth."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield None, item
            yield from _walk(item)


def assert_no_password_material(body: Any) -> None:
    for key, value in _walk(body):
        assert key is None or "password" not in key.lower(), body
        if isinstance(value, str):
            assert "$2" not in value, body
            assert "bcrypt" not in value.lower(), body


async def register(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, **extra: Any
) -> httpx.Response:
    return await client.post("/auth/register", json={"email": email, "password": password, **extra})


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/auth/login", json={"email": email, "password": password})


async def password_hash_of(app: FastAPI, email: str) -> str:
    user = await repository.get_local_user_by_email(app.state.services.db.reader(), email)
    assert user is not None
    return user.password_hash


class TestRegister:
    async def test_returns_201_with_the_public_user(self, client: httpx.AsyncClient) -> None:
        response = await register(client, "new@example.com", display_name="New Person")

        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {"success", "user"}
        assert body["success"] is True
        user = body["user"]
        assert set(user) == USER_FIELDS
        assert user["email"] == "new@example.com"
        assert user["display_name"] == "New Person"
        assert user["role"] == "user"

    async def test_user_id_is_a_uuid_string(self, client: httpx.AsyncClient) -> None:
        user = (await register(client, "new@example.com")).json()["user"]

        assert isinstance(user["id"], str)
        assert str(uuid.UUID(user["id"])) == user["id"]

    async def test_ids_are_not_sequential(self, client: httpx.AsyncClient) -> None:
        first = (await register(client, "one@example.com")).json()["user"]["id"]
        second = (await register(client, "two@example.com")).json()["user"]["id"]

        assert first != second
        assert not first.isdigit()

    async def test_created_at_is_utc_iso_8601(self, client: httpx.AsyncClient) -> None:
        user = (await register(client, "new@example.com")).json()["user"]

        created_at = datetime.fromisoformat(user["created_at"])
        assert created_at.utcoffset() == timedelta(0)

    async def test_display_name_is_optional(self, client: httpx.AsyncClient) -> None:
        user = (await register(client, "new@example.com")).json()["user"]

        assert user["display_name"] is None

    async def test_body_never_carries_the_hash(self, client: httpx.AsyncClient) -> None:
        response = await register(client, "new@example.com")

        assert response.status_code == 201
        assert_no_password_material(response.json())
        assert PASSWORD not in response.text

    async def test_email_is_stored_lower_case_and_trimmed(self, client: httpx.AsyncClient) -> None:
        user = (await register(client, "  Mixed.Case@Example.COM ")).json()["user"]

        assert user["email"] == "mixed.case@example.com"


class TestDuplicateEmail:
    SPELLINGS = (
        "alice@example.com",
        "ALICE@EXAMPLE.COM",
        "Alice@Example.Com",
        "  alice@example.com",
        "alice@example.com  ",
        " ALICE@example.com ",
    )

    @pytest.mark.parametrize("spelling", SPELLINGS)
    async def test_is_a_409_whatever_the_spelling(
        self, client: httpx.AsyncClient, alice: User, spelling: str
    ) -> None:
        response = await register(client, spelling, "another password")

        assert_error(response, 409, ALREADY_EXISTS)

    async def test_idna_2008_keeps_sharp_s_apart_from_ss(self, client: httpx.AsyncClient) -> None:
        assert (await register(client, "a@straße.de", "password one")).status_code == 201
        assert (await register(client, "a@strasse.de", "password two")).status_code == 201
        assert_error(await register(client, "a@xn--strae-oqa.de", "password 3"), 409)

    async def test_an_idn_domain_and_its_punycode_are_one_account(
        self, client: httpx.AsyncClient
    ) -> None:
        first = await register(client, "a@exämple.com", "password one")
        assert first.json()["user"]["email"] == "a@exämple.com"

        response = await register(client, "a@xn--exmple-cua.com", "password two")

        assert_error(response, 409, ALREADY_EXISTS)
        assert (await login(client, "A@XN--EXMPLE-CUA.COM", "password one")).status_code == 200

    @pytest.mark.parametrize("spelling", SPELLINGS)
    async def test_first_spelling_blocks_the_plain_one(
        self, client: httpx.AsyncClient, spelling: str
    ) -> None:
        assert (await register(client, spelling)).status_code == 201

        assert_error(await register(client, "alice@example.com"), 409, ALREADY_EXISTS)

    @pytest.mark.parametrize("spelling", SPELLINGS)
    async def test_login_works_with_any_spelling(
        self, client: httpx.AsyncClient, alice: User, spelling: str
    ) -> None:
        response = await login(client, spelling, alice.password)

        assert response.status_code == 200, response.text

    async def test_does_not_change_the_existing_password(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        await register(client, "ALICE@example.com", "an intruder's password")

        assert (await login(client, alice.email, "an intruder's password")).status_code == 401
        assert (await login(client, alice.email, alice.password)).status_code == 200

    async def test_concurrent_registrations_make_exactly_one_account(
        self, client: httpx.AsyncClient
    ) -> None:
        spellings = ["race@example.com", "RACE@example.com", " race@example.com "]
        responses = await asyncio.gather(
            *(
                register(client, spellings[i % len(spellings)], f"password {i:02}")
                for i in range(20)
            )
        )

        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] + [409] * 19, statuses
        for response in responses:
            if response.status_code == 409:
                assert_error(response, 409, ALREADY_EXISTS)
        winner = next(i for i, r in enumerate(responses) if r.status_code == 201)
        assert (await login(client, "race@example.com", f"password {winner:02}")).status_code == 200


class TestRegisterValidation:
    @pytest.mark.parametrize(
        "email",
        [
            "",
            "   ",
            "not-an-email",
            "@example.com",
            "alice@",
            "alice@example",
            "alice@@example.com",
            "alice@example..com",
            "ali ce@example.com",
            "alice@exa mple.com",
            "alice\x00@example.com",
            "alice@example.com\nBcc: x@example.com",
            "x<>@example.com",
            "x@[127.0.0.1]",
            '"quoted"@example.com',
            "a" * 250 + "@example.com",
            123,
            None,
            ["alice@example.com"],
        ],
    )
    async def test_bad_email_is_a_422(self, client: httpx.AsyncClient, email: Any) -> None:
        response = await client.post("/auth/register", json={"email": email, "password": PASSWORD})

        assert_error(response, 422)
        assert PASSWORD not in response.text

    @pytest.mark.parametrize(
        "password",
        ["", "Q", "Qz7#kXw", "Zq" * 64 + "Z", "Zq" * 500],
        ids=["empty", "1-char", "7-chars", "129-chars", "1000-chars"],
    )
    async def test_password_length_outside_8_to_128_is_a_422(
        self, client: httpx.AsyncClient, password: str
    ) -> None:
        response = await register(client, "new@example.com", password)

        assert_error(response, 422)
        if password:
            assert password not in response.text

    @pytest.mark.parametrize("password", [12345678, None, ["a list password"]])
    async def test_password_that_is_not_a_string_is_a_422(
        self, client: httpx.AsyncClient, password: Any
    ) -> None:
        response = await client.post(
            "/auth/register", json={"email": "new@example.com", "password": password}
        )

        assert_error(response, 422)
        assert "12345678" not in response.text
        assert "a list password" not in response.text

    @pytest.mark.parametrize("body", [{}, {"email": "new@example.com"}, {"password": PASSWORD}])
    async def test_missing_field_is_a_422(
        self, client: httpx.AsyncClient, body: dict[str, str]
    ) -> None:
        response = await client.post("/auth/register", json=body)

        assert_error(response, 422)
        assert PASSWORD not in response.text

    @pytest.mark.parametrize(
        "password", ["Kp8#mW2q", "Kp8#mW2q" * 16], ids=["8-chars", "128-chars"]
    )
    async def test_password_of_8_or_128_characters_is_accepted(
        self, client: httpx.AsyncClient, password: str
    ) -> None:
        assert (await register(client, "new@example.com", password)).status_code == 201
        assert (await login(client, "new@example.com", password)).status_code == 200

    async def test_non_json_body_is_a_415(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/auth/register",
            content=f"email=new@example.com&password={PASSWORD}",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )

        assert_error(response, 415)
        assert PASSWORD not in response.text


class TestPasswordsAreVerbatim:
    @pytest.mark.parametrize(
        ("registered", "attempted"),
        [
            (" password1 ", "password1"),
            (" password1 ", " password1"),
            (" password1 ", "password1 "),
            ("password1", " password1 "),
            ("password1", "Password1"),
            ("password1\t", "password1"),
        ],
    )
    async def test_variant_is_a_different_password(
        self, client: httpx.AsyncClient, registered: str, attempted: str
    ) -> None:
        assert (await register(client, "new@example.com", registered)).status_code == 201

        assert_error(await login(client, "new@example.com", attempted), 401, INVALID_CREDENTIALS)
        assert (await login(client, "new@example.com", registered)).status_code == 200

    async def test_spaced_and_unspaced_passwords_belong_to_different_accounts(
        self, client: httpx.AsyncClient
    ) -> None:
        await register(client, "spaced@example.com", " password1 ")
        await register(client, "plain@example.com", "password1")

        assert (await login(client, "spaced@example.com", " password1 ")).status_code == 200
        assert (await login(client, "plain@example.com", "password1")).status_code == 200
        assert (await login(client, "spaced@example.com", "password1")).status_code == 401
        assert (await login(client, "plain@example.com", " password1 ")).status_code == 401

    async def test_unicode_is_not_normalised(self, client: httpx.AsyncClient) -> None:
        composed = unicodedata.normalize("NFC", "café crème brûlée")
        decomposed = unicodedata.normalize("NFD", composed)
        assert composed != decomposed
        await register(client, "new@example.com", composed)

        assert (await login(client, "new@example.com", decomposed)).status_code == 401
        assert (await login(client, "new@example.com", composed)).status_code == 200


class TestEveryCharacterCounts:
    async def test_passwords_sharing_the_first_72_bytes_are_told_apart(
        self, client: httpx.AsyncClient
    ) -> None:
        shared = "s3cret-prefix-" * 6
        shared = shared[:72]
        registered, other = shared + "A" * 28, shared + "B" * 28
        assert len(registered) == len(other) == 100
        assert (await register(client, "new@example.com", registered)).status_code == 201

        assert_error(await login(client, "new@example.com", other), 401, INVALID_CREDENTIALS)
        assert (await login(client, "new@example.com", registered)).status_code == 200

    async def test_64_emoji_are_a_valid_password(self, client: httpx.AsyncClient) -> None:
        password = "😀" * 64

        assert (await register(client, "new@example.com", password)).status_code == 201
        assert (await login(client, "new@example.com", password)).status_code == 200

    @pytest.mark.parametrize(
        "attempted",
        ["😀" * 63 + "😁", "😀" * 63 + "a", "😀" * 63, "😀" * 18 + "😁" * 46],
        ids=["last-emoji-differs", "last-is-ascii", "one-emoji-short", "differs-after-72-bytes"],
    )
    async def test_an_emoji_password_needs_every_emoji(
        self, client: httpx.AsyncClient, attempted: str
    ) -> None:
        await register(client, "new@example.com", "😀" * 64)

        assert_error(await login(client, "new@example.com", attempted), 401, INVALID_CREDENTIALS)

    @pytest.mark.parametrize(
        "password",
        [
            "секретный пароль",
            "كلمة السر السرية",
            "非常安全的密码短语",
            "गुप्त पासवर्ड है",
            "סיסמה סודית",
        ],
        ids=["cyrillic", "arabic", "chinese", "devanagari", "hebrew"],
    )
    async def test_any_script_works(self, client: httpx.AsyncClient, password: str) -> None:
        assert (await register(client, "new@example.com", password)).status_code == 201

        assert (await login(client, "new@example.com", password)).status_code == 200
        assert (await login(client, "new@example.com", password[:-1])).status_code == 401


class TestLegacyHashes:
    LEGACY_PASSWORD = "an old password"

    async def _legacy_user(self, client: httpx.AsyncClient, app: FastAPI) -> str:
        """A user whose stored hash is plain bcrypt, as an older system wrote it."""
        email = "legacy@example.com"
        user = (await register(client, email, self.LEGACY_PASSWORD)).json()["user"]
        legacy_hash = bcrypt.hashpw(self.LEGACY_PASSWORD.encode(), bcrypt.gensalt(4)).decode()
        # No API writes a plain bcrypt hash: this is the only way to get one.
        async with app.state.services.db.transaction() as conn:
            await repository.update_password_hash(conn, user["id"], legacy_hash)
        assert (await password_hash_of(app, email)).startswith("$2b$")
        return email

    async def test_plain_bcrypt_hash_still_verifies(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        email = await self._legacy_user(client, app)

        response = await login(client, email, self.LEGACY_PASSWORD)

        assert response.status_code == 200, response.text

    async def test_hash_is_upgraded_after_a_successful_login(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        email = await self._legacy_user(client, app)

        await login(client, email, self.LEGACY_PASSWORD)

        assert (await password_hash_of(app, email)).startswith("$bcrypt-sha256$")
        assert (await login(client, email, self.LEGACY_PASSWORD)).status_code == 200
        assert (await login(client, email, "a wrong password")).status_code == 401

    async def test_wrong_password_neither_logs_in_nor_upgrades(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        email = await self._legacy_user(client, app)

        assert_error(await login(client, email, "a wrong password"), 401, INVALID_CREDENTIALS)
        assert (await password_hash_of(app, email)).startswith("$2b$")

    async def test_long_password_against_a_legacy_hash_is_a_401(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        email = await self._legacy_user(client, app)

        response = await login(client, email, self.LEGACY_PASSWORD + "x" * 100)

        assert_error(response, 401, INVALID_CREDENTIALS)

    async def test_new_accounts_get_the_sha256_scheme(
        self, client: httpx.AsyncClient, app: FastAPI, alice: User
    ) -> None:
        assert (await password_hash_of(app, alice.email)).startswith("$bcrypt-sha256$")


class TestLogin:
    def assert_token_response(self, response: httpx.Response, settings: Settings) -> None:
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == TOKEN_FIELDS
        assert body["success"] is True
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == settings.access_token_expire_minutes * 60
        assert isinstance(body["access_token"], str)
        assert isinstance(body["refresh_token"], str)
        assert body["access_token"] != body["refresh_token"]
        assert response.headers["cache-control"] == "no-store"
        assert_no_password_material(body)

    async def test_json_login_returns_a_token_pair(
        self, client: httpx.AsyncClient, settings: Settings, alice: User
    ) -> None:
        response = await login(client, alice.email, alice.password)

        self.assert_token_response(response, settings)

    @pytest.mark.parametrize(
        "extra", [{}, {"grant_type": "password"}, {"grant_type": "password", "scope": ""}]
    )
    async def test_oauth2_form_login_returns_a_token_pair(
        self, client: httpx.AsyncClient, settings: Settings, alice: User, extra: dict[str, str]
    ) -> None:
        form = {"username": alice.email, "password": alice.password, **extra}

        response = await client.post("/auth/login", data=form)

        self.assert_token_response(response, settings)

    async def test_form_login_accepts_any_email_spelling(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        form = {"username": " ALICE@Example.com ", "password": alice.password}

        assert (await client.post("/auth/login", data=form)).status_code == 200

    async def test_access_token_opens_me(self, client: httpx.AsyncClient, alice: User) -> None:
        token = (await login(client, alice.email, alice.password)).json()["access_token"]

        response = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})

        assert response.status_code == 200
        assert response.json()["user"]["id"] == alice.id

    async def test_expires_in_follows_the_settings(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path, access_token_expire_minutes=5)
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
        ):
            await register(c, "new@example.com")
            response = await login(c, "new@example.com", PASSWORD)

        self.assert_token_response(response, settings)
        assert response.json()["expires_in"] == 300


class TestLoginFailures:
    async def test_unknown_email_and_wrong_password_look_identical(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        unknown = await login(client, "nobody@example.com", alice.password)
        wrong = await login(client, alice.email, "not the password")

        assert_error(unknown, 401, INVALID_CREDENTIALS)
        assert_error(wrong, 401, INVALID_CREDENTIALS)
        assert unknown.status_code == wrong.status_code
        assert unknown.content == wrong.content
        assert dict(unknown.headers) == dict(wrong.headers)
        assert wrong.headers["www-authenticate"] == "Bearer"

    async def test_form_failures_look_identical_too(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        unknown = await client.post(
            "/auth/login", data={"username": "nobody@example.com", "password": alice.password}
        )
        wrong = await client.post(
            "/auth/login", data={"username": alice.email, "password": "not the password"}
        )

        assert_error(unknown, 401, INVALID_CREDENTIALS)
        assert unknown.content == wrong.content
        assert dict(unknown.headers) == dict(wrong.headers)

    @pytest.mark.parametrize("email", ["not-an-email", "nobody@example", "@"])
    async def test_malformed_email_is_just_an_unknown_one(
        self, client: httpx.AsyncClient, alice: User, email: str
    ) -> None:
        unknown = await login(client, email, "some password")
        wrong = await login(client, alice.email, "not the password")

        assert_error(unknown, 401, INVALID_CREDENTIALS)
        assert unknown.content == wrong.content

    async def test_failure_carries_no_token(self, client: httpx.AsyncClient, alice: User) -> None:
        response = await login(client, alice.email, "not the password")

        body = response.json()
        assert "access_token" not in body
        assert "refresh_token" not in body
        assert "not the password" not in response.text

    @pytest.mark.parametrize(
        "body",
        [{}, {"email": "alice@example.com"}, {"password": "a secret pass"}, {"email": None}],
    )
    async def test_missing_json_field_is_a_422(
        self, client: httpx.AsyncClient, alice: User, body: dict[str, Any]
    ) -> None:
        response = await client.post("/auth/login", json=body)

        assert_error(response, 422)
        assert "a secret pass" not in response.text

    @pytest.mark.parametrize(
        "form",
        [{}, {"username": "alice@example.com"}, {"password": "a secret pass"}],
        ids=["empty", "no-password", "no-username"],
    )
    async def test_missing_form_field_is_a_422(
        self, client: httpx.AsyncClient, alice: User, form: dict[str, str]
    ) -> None:
        response = await client.post(
            "/auth/login",
            content=urlencode(form),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )

        assert_error(response, 422)
        assert "a secret pass" not in response.text

    async def test_a_grant_type_other_than_password_is_a_422(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        form = {"grant_type": "client_credentials", "username": alice.email, "password": PASSWORD}

        response = await client.post("/auth/login", data=form)

        assert_error(response, 422)
        assert response.json()["detail"][0]["loc"] == ["body", "grant_type"]

    async def test_form_errors_name_the_form_fields(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/auth/login", data={"password": "whatever pw"})

        assert_error(response, 422)
        assert response.json()["detail"][0]["loc"] == ["body", "username"]

    @pytest.mark.parametrize(
        "content_type", ["text/plain", "application/xml", "application/octet-stream", None]
    )
    async def test_unsupported_content_type_is_a_415(
        self, client: httpx.AsyncClient, alice: User, content_type: str | None
    ) -> None:
        headers = {"content-type": content_type} if content_type else {}
        raw = f'{{"email": "{alice.email}", "password": "{alice.password}"}}'

        response = await client.post("/auth/login", content=raw, headers=headers)

        assert_error(response, 415)
        assert alice.password not in response.text


class TestMe:
    async def test_returns_the_user(self, client: httpx.AsyncClient) -> None:
        registered = (await register(client, "me@example.com", display_name="Me")).json()["user"]
        token = (await login(client, "me@example.com", PASSWORD)).json()["access_token"]

        response = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})

        assert response.status_code == 200, response.text
        body = response.json()
        assert body == {"success": True, "user": registered}
        assert_no_password_material(body)

    async def test_each_user_sees_themselves(
        self, client: httpx.AsyncClient, alice: User, bob: User
    ) -> None:
        as_alice = await client.get("/auth/me", headers=alice.headers)
        as_bob = await client.get("/auth/me", headers=bob.headers)

        assert as_alice.json()["user"]["id"] == alice.id
        assert as_bob.json()["user"]["id"] == bob.id

    async def test_without_token_is_a_401(self, client: httpx.AsyncClient) -> None:
        assert_unauthorized(await client.get("/auth/me"), "missing_token")
