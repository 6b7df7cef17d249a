"""Django tokens: access tokens minted by a real djangorestframework-simplejwt, in-process.

Django is configured once per test process (`django_site`), with a strong random
SECRET_KEY that the apps here receive as EXTERNAL_JWT_SECRET.
"""

import base64
import json
import secrets
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from pydantic import ValidationError

from app.config import ConfigError, Settings, load_settings
from app.keys import SECRET_FILE_NAME
from app.main import create_app
from tests.conftest import SessionFactory
from tests.helpers import (
    PASSWORD,
    TEST_SECRET,
    User,
    assert_error,
    assert_unauthorized,
    make_settings,
    running,
)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()
DJANGO_PK = 42
SESSION_NOT_FOUND = "Session not found or access denied"


class DjangoSite:
    """simplejwt as a Django site runs it: `token()` is what its login view hands out."""

    def __init__(self) -> None:
        # Imported here: these modules read Django's settings when imported.
        from django.contrib.auth.models import User as DjangoUser  # type: ignore[import-untyped]
        from rest_framework_simplejwt.state import token_backend
        from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, SlidingToken

        key = token_backend.signing_key
        assert isinstance(key, str)
        self.key: str = key
        self._user_model = DjangoUser
        self._classes: dict[str, Any] = {
            "access": AccessToken,
            "refresh": RefreshToken,
            "sliding": SlidingToken,
        }

    def user(self, pk: int | str) -> Any:
        return self._user_model(id=pk, username=f"django-user-{pk}")

    def token(self, pk: int | str = DJANGO_PK, kind: str = "access", **claims: Any) -> str:
        """`for_user` as installed simplejwt writes it, then `claims` set (MISSING deletes)."""
        token = self._classes[kind].for_user(self.user(pk))
        for name, value in claims.items():
            if value is MISSING:
                token.payload.pop(name, None)
            else:
                token[name] = value
        return str(token)

    def refreshed_access_token(self, pk: int | str = DJANGO_PK) -> str:
        """The access token TokenRefreshView hands out for a refresh token."""
        return str(self._classes["refresh"].for_user(self.user(pk)).access_token)

    def expired_token(self, pk: int | str = DJANGO_PK, ago: timedelta = timedelta(0)) -> str:
        token = self._classes["access"].for_user(self.user(pk))
        token.set_exp(lifetime=-ago)
        return str(token)

    def int_id_token(self, pk: int = DJANGO_PK) -> str:
        """The shape simplejwt <= 5.5.0 writes: the user id as a JSON number."""
        return self.token(pk, user_id=pk)

    def str_id_token(self, pk: int = DJANGO_PK) -> str:
        """The shape simplejwt >= 5.5.1 writes: the user id as a string."""
        return self.token(pk, user_id=str(pk))


def _configure_django() -> None:
    import django  # type: ignore[import-untyped]
    from django.conf import settings as django_settings  # type: ignore[import-untyped]

    if not django_settings.configured:
        key = secrets.token_urlsafe(48)
        django_settings.configure(
            SECRET_KEY=key,
            USE_TZ=True,
            TIME_ZONE="UTC",
            INSTALLED_APPS=[
                "django.contrib.contenttypes",
                "django.contrib.auth",
                "rest_framework",
                "rest_framework_simplejwt",
            ],
            DATABASES={},
            LOGGING_CONFIG=None,  # leave pytest's logging alone
            SIMPLE_JWT={
                "SIGNING_KEY": key,
                "ALGORITHM": "HS256",
                "ACCESS_TOKEN_LIFETIME": timedelta(minutes=5),
                "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
                "USER_ID_FIELD": "id",
                "USER_ID_CLAIM": "user_id",
            },
        )
    django.setup()


@pytest.fixture(scope="session")
def django_site() -> DjangoSite:
    _configure_django()
    return DjangoSite()


@pytest.fixture
def settings(tmp_path: Path, django_site: DjangoSite) -> Settings:
    """Overrides conftest's: every app in this module accepts the Django site's tokens."""
    return make_settings(tmp_path, external_jwt_secret=django_site.key)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.get_unverified_claims(token)
    return claims


def assert_refused(response: httpx.Response, token: str, cause: str | None = None) -> None:
    """The contract's 401, with no piece of the token echoed back."""
    assert_unauthorized(response, cause)
    for piece in {token, *(part for part in token.split(".") if len(part) >= 8)}:
        assert piece not in response.text


async def new_session(client: httpx.AsyncClient, token: str, **body: Any) -> dict[str, Any]:
    response = await client.post("/chat/session/new", json=body, headers=bearer(token))
    assert response.status_code == 201, response.text
    session: dict[str, Any] = response.json()["session"]
    return session


async def session_ids(client: httpx.AsyncClient, token: str) -> list[str]:
    response = await client.get("/chat/sessions", headers=bearer(token))
    assert response.status_code == 200, response.text
    return [session["id"] for session in response.json()["sessions"]]


async def me(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await client.get("/auth/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    user: dict[str, Any] = response.json()["user"]
    return user


class TestDjangoTokensOpenChat:
    async def test_a_simplejwt_access_token_creates_and_lists_a_session(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.token()
        session = await new_session(client, token, title="from Django")

        listed = await client.get("/chat/sessions", headers=bearer(token))

        assert listed.status_code == 200, listed.text
        assert listed.json()["success"] is True
        assert [s["id"] for s in listed.json()["sessions"]] == [session["id"]]
        assert listed.json()["sessions"][0]["title"] == "from Django"

    async def test_the_access_token_of_a_refresh_token_is_accepted(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.refreshed_access_token()
        session = await new_session(client, token)
        assert await session_ids(client, token) == [session["id"]]

    async def test_a_django_user_chats_and_reads_the_history(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.token()
        session = await new_session(client, token, initial_message="hello")

        reply = await client.post(
            "/chat/message",
            json={"session_id": session["id"], "message": "and again"},
            headers=bearer(token),
        )
        history = await client.get(f"/chat/session/{session['id']}/history", headers=bearer(token))

        assert reply.status_code == 200, reply.text
        assert history.status_code == 200, history.text
        contents = [m["content"] for m in history.json()["messages"] if m["role"] == "user"]
        assert contents == ["hello", "and again"]


class TestOneUserPerDjangoId:
    @pytest.mark.parametrize(
        ("first", "second"), [("int", "str"), ("str", "int")], ids=["int-then-str", "str-then-int"]
    )
    async def test_int_and_string_claims_name_the_same_user(
        self, client: httpx.AsyncClient, django_site: DjangoSite, first: str, second: str
    ) -> None:
        shapes = {"int": django_site.int_id_token, "str": django_site.str_id_token}
        assert claims_of(shapes["int"]())["user_id"] == DJANGO_PK
        assert claims_of(shapes["str"]())["user_id"] == str(DJANGO_PK)
        first_token, second_token = shapes[first](), shapes[second]()
        session = await new_session(client, first_token)

        assert await session_ids(client, second_token) == [session["id"]]
        shown = await client.get(f"/chat/session/{session['id']}", headers=bearer(second_token))
        assert shown.status_code == 200, shown.text
        assert (await me(client, first_token))["id"] == (await me(client, second_token))["id"]

    async def test_text_ids_are_taken_as_written(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        # A text primary key (USER_ID_FIELD = "username") "007" is not user 7.
        seven, padded = django_site.token(user_id=7), django_site.token(user_id="007")

        assert (await me(client, seven))["id"] == "django:7"
        assert (await me(client, padded))["id"] == "django:007"

    async def test_another_django_user_never_sees_the_session(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        session = await new_session(client, django_site.token(DJANGO_PK))
        other = bearer(django_site.token(DJANGO_PK + 1))
        path = f"/chat/session/{session['id']}"

        assert await session_ids(client, django_site.token(DJANGO_PK + 1)) == []
        assert_error(await client.get(path, headers=other), 404, SESSION_NOT_FOUND)
        assert_error(await client.get(f"{path}/history", headers=other), 404, SESSION_NOT_FOUND)
        renamed = await client.patch(path, json={"title": "mine"}, headers=other)
        assert_error(renamed, 404, SESSION_NOT_FOUND)
        assert_error(await client.delete(path, headers=other), 404, SESSION_NOT_FOUND)
        assert await session_ids(client, django_site.token(DJANGO_PK)) == [session["id"]]

    async def test_a_local_user_never_sees_a_django_users_session(
        self, client: httpx.AsyncClient, django_site: DjangoSite, alice: User
    ) -> None:
        session = await new_session(client, django_site.token())

        assert await session_ids(client, alice.access_token) == []
        shown = await client.get(f"/chat/session/{session['id']}", headers=alice.headers)
        assert_error(shown, 404, SESSION_NOT_FOUND)

    async def test_a_django_user_never_sees_a_local_users_session(
        self,
        client: httpx.AsyncClient,
        django_site: DjangoSite,
        alice: User,
        make_session: SessionFactory,
    ) -> None:
        session = await make_session(alice)
        token = django_site.token()

        assert await session_ids(client, token) == []
        shown = await client.get(f"/chat/session/{session['id']}", headers=bearer(token))
        assert_error(shown, 404, SESSION_NOT_FOUND)

    async def test_a_local_users_id_in_the_claim_names_a_different_user(
        self,
        client: httpx.AsyncClient,
        django_site: DjangoSite,
        alice: User,
        make_session: SessionFactory,
    ) -> None:
        await make_session(alice)
        token = django_site.token(alice.id)

        user = await me(client, token)

        assert user["id"] == f"django:{alice.id}"
        assert user["email"] is None
        assert await session_ids(client, token) == []

    async def test_the_django_key_cannot_vouch_for_a_local_user(
        self, client: httpx.AsyncClient, django_site: DjangoSite, alice: User
    ) -> None:
        # Our claims copied into a Django token: only the Django user claim counts.
        ours = claims_of(alice.access_token)
        token = django_site.token(**{k: ours[k] for k in ("sub", "iss", "type", "fam")})

        assert (await me(client, token))["id"] == f"django:{DJANGO_PK}"


class TestDjangoAccount:
    @pytest.mark.parametrize("shape", ["int", "str"])
    async def test_me_shows_the_namespaced_id_and_no_email(
        self, client: httpx.AsyncClient, django_site: DjangoSite, shape: str
    ) -> None:
        token = django_site.int_id_token() if shape == "int" else django_site.str_id_token()

        user = await me(client, token)

        assert user["id"] == f"django:{DJANGO_PK}"
        assert user["email"] is None
        assert user["role"] == "user"
        assert "password_hash" not in user

    async def test_the_user_is_created_on_first_use_only_once(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        first = await me(client, django_site.str_id_token())
        again = await me(client, django_site.int_id_token())
        assert again == first

    @pytest.mark.parametrize("current_password", ["!", PASSWORD], ids=["marker", "password"])
    async def test_changing_the_password_is_forbidden(
        self, client: httpx.AsyncClient, django_site: DjangoSite, current_password: str
    ) -> None:
        response = await client.post(
            "/auth/password",
            json={"current_password": current_password, "new_password": PASSWORD},
            headers=bearer(django_site.token()),
        )
        assert_error(response, 403)

    @pytest.mark.parametrize("password", ["!", PASSWORD], ids=["marker", "password"])
    async def test_deleting_the_account_is_forbidden(
        self, client: httpx.AsyncClient, django_site: DjangoSite, password: str
    ) -> None:
        token = django_site.token()
        session = await new_session(client, token)

        response = await client.request(
            "DELETE", "/auth/me", json={"password": password}, headers=bearer(token)
        )

        assert_error(response, 403)
        assert await session_ids(client, token) == [session["id"]]

    @pytest.mark.parametrize("password", ["!", PASSWORD], ids=["marker", "password"])
    @pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
    async def test_nobody_logs_in_as_a_django_user(
        self, client: httpx.AsyncClient, django_site: DjangoSite, password: str, form: bool
    ) -> None:
        await me(client, django_site.token())  # the user now exists here
        username = f"django:{DJANGO_PK}"

        if form:
            response = await client.post(
                "/auth/login", data={"username": username, "password": password}
            )
        else:
            response = await client.post(
                "/auth/login", json={"email": username, "password": password}
            )

        assert_error(response, 401, "Invalid credentials")

    @pytest.mark.parametrize(
        "email", [f"django:{DJANGO_PK}", f"django:{DJANGO_PK}@example.com", "DJANGO:42"]
    )
    async def test_nobody_registers_a_django_users_id(
        self, client: httpx.AsyncClient, django_site: DjangoSite, email: str
    ) -> None:
        await me(client, django_site.token())

        response = await client.post("/auth/register", json={"email": email, "password": PASSWORD})

        assert_error(response, 422)

    async def test_a_django_user_has_no_logins_here(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        response = await client.get("/auth/logins", headers=bearer(django_site.token()))
        assert response.status_code == 200, response.text
        assert response.json()["logins"] == []

    async def test_a_django_user_cannot_end_a_local_users_login(
        self, client: httpx.AsyncClient, django_site: DjangoSite, alice: User
    ) -> None:
        logins = await client.get("/auth/logins", headers=alice.headers)
        login_id = logins.json()["logins"][0]["id"]

        ended = await client.delete(f"/auth/logins/{login_id}", headers=bearer(django_site.token()))

        assert_error(ended, 404)
        assert (await client.get("/auth/me", headers=alice.headers)).status_code == 200


class TestAdministeringDjangoUsers:
    async def test_a_disabled_django_user_is_refused_even_with_a_fresh_token(
        self, app: FastAPI, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        from app.services import admin

        token = django_site.token()
        user = await me(client, token)
        await admin.update_user(
            app.state.services.db, actor_id=None, user_id=user["id"], disabled=True
        )

        # Nothing of a Django login lives here to end: the disabled flag refuses them.
        sessions = await client.get("/chat/sessions", headers=bearer(token))
        assert_unauthorized(sessions, "user_disabled")
        fresh = django_site.token()
        assert_unauthorized(await client.get("/auth/me", headers=bearer(fresh)), "user_disabled")

    async def test_enabling_again_does_not_bring_back_tokens_from_before(
        self, app: FastAPI, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        from app.services import admin

        db = app.state.services.db
        before = django_site.token()
        user = await me(client, before)
        await admin.update_user(db, actor_id=None, user_id=user["id"], disabled=True)
        await admin.update_user(db, actor_id=None, user_id=user["id"], disabled=False)

        assert_unauthorized(await client.get("/auth/me", headers=bearer(before)), "token_revoked")
        # What Django issues from now on works (iat a second ahead: this test is quick).
        after = django_site.token(iat=int(time.time()) + 1)
        assert (await client.get("/auth/me", headers=bearer(after))).status_code == 200


class TestDjangoTokenChecks:
    @pytest.mark.parametrize("kind", ["refresh", "sliding"])
    async def test_other_simplejwt_token_types_are_not_access_tokens(
        self, client: httpx.AsyncClient, django_site: DjangoSite, kind: str
    ) -> None:
        token = django_site.token(kind=kind)
        assert claims_of(token)["token_type"] == kind

        response = await client.get("/chat/sessions", headers=bearer(token))

        assert_refused(response, token, "wrong_token_type")

    @pytest.mark.parametrize(
        "value",
        [True, False, 42.0, 4.2, [42], ["42"], {"id": 42}, "", "   ", None, MISSING],
        ids=repr,
    )
    async def test_an_unusable_user_claim_is_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite, value: Any
    ) -> None:
        token = django_site.token(user_id=value)
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)

    @pytest.mark.parametrize(
        "changes",
        [
            {"exp": MISSING},
            {"jti": MISSING},
            {"token_type": MISSING},
            {"exp": float(int(time.time()) + 300)},
            {"exp": str(int(time.time()) + 300)},
            {"jti": ""},
            {"jti": 42},
            {"jti": None},
            {"token_type": "ACCESS"},
        ],
        ids=[
            "no-exp",
            "no-jti",
            "no-token_type",
            "float-exp",
            "string-exp",
            "empty-jti",
            "int-jti",
            "null-jti",
            "upper-case-token_type",
        ],
    )
    async def test_missing_or_malformed_required_claims_are_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite, changes: dict[str, Any]
    ) -> None:
        token = django_site.token(**changes)
        assert_refused(await client.get("/chat/sessions", headers=bearer(token)), token)

    async def test_an_expired_token_is_rejected_as_expired(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.expired_token(ago=timedelta(minutes=5))
        response = await client.get("/chat/sessions", headers=bearer(token))
        assert_refused(response, token, "token_expired")

    async def test_a_token_from_the_future_is_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.token(iat=int(time.time()) + 3600)
        assert_refused(await client.get("/chat/sessions", headers=bearer(token)), token)

    @pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
    async def test_other_algorithms_with_the_django_key_are_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite, algorithm: str
    ) -> None:
        token = jwt.encode(claims_of(django_site.token()), django_site.key, algorithm=algorithm)
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)

    @pytest.mark.parametrize("alg", ["none", "None", "NONE"])
    async def test_an_unsigned_token_is_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite, alg: str
    ) -> None:
        header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        payload = b64url(json.dumps(claims_of(django_site.token())).encode())
        token = f"{header}.{payload}."
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)

    async def test_a_payload_swapped_under_a_django_signature_is_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        header, _, signature = django_site.token(DJANGO_PK).split(".")
        _, other_payload, _ = django_site.token(DJANGO_PK + 1).split(".")
        token = f"{header}.{other_payload}.{signature}"
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)

    async def test_a_token_signed_with_another_django_key_is_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        other_key = secrets.token_urlsafe(48)
        token = jwt.encode(claims_of(django_site.token()), other_key, algorithm="HS256")
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)

    async def test_only_the_configured_claim_names_the_user(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.token(user_id=MISSING, sub=str(DJANGO_PK))
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)


class TestKeysDoNotCross:
    async def test_our_access_token_signed_with_the_django_key_is_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite, alice: User
    ) -> None:
        token = jwt.encode(claims_of(alice.access_token), django_site.key, algorithm="HS256")
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)

    async def test_our_refresh_token_signed_with_the_django_key_does_not_refresh(
        self, client: httpx.AsyncClient, django_site: DjangoSite, alice: User
    ) -> None:
        token = jwt.encode(claims_of(alice.refresh_token), django_site.key, algorithm="HS256")
        response = await client.post("/auth/refresh", json={"refresh_token": token})
        assert_refused(response, token)

    @pytest.mark.parametrize("kind", ["access", "refresh"])
    async def test_a_django_token_signed_with_our_key_is_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite, kind: str
    ) -> None:
        token = jwt.encode(claims_of(django_site.token(kind=kind)), TEST_SECRET, algorithm="HS256")
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)


class TestCustomUserClaim:
    @pytest.fixture
    def settings(self, tmp_path: Path, django_site: DjangoSite) -> Settings:
        return make_settings(
            tmp_path,
            external_jwt_secret=django_site.key,
            external_jwt_user_id_claim="identity",
        )

    def identity_token(self, django_site: DjangoSite, value: int | str) -> str:
        # simplejwt's settings are read once at import: rename the claim on a real token.
        return django_site.token(user_id=MISSING, identity=value)

    async def test_the_configured_claim_names_the_user_as_int_or_string(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        as_int, as_str = self.identity_token(django_site, 7), self.identity_token(django_site, "7")
        session = await new_session(client, as_int)

        assert await session_ids(client, as_str) == [session["id"]]
        assert (await me(client, as_str))["id"] == "django:7"

    async def test_the_default_claim_no_longer_names_anyone(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.token()
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)

    @pytest.mark.parametrize("value", [True, 7.0, [7], "", MISSING], ids=repr)
    async def test_an_unusable_configured_claim_is_rejected(
        self, client: httpx.AsyncClient, django_site: DjangoSite, value: Any
    ) -> None:
        token = django_site.token(user_id=MISSING, identity=value)
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token)


class TestWithoutDjangoKey:
    @pytest.mark.parametrize("kind", ["access", "refresh"])
    async def test_django_tokens_are_rejected(
        self, tmp_path: Path, django_site: DjangoSite, kind: str
    ) -> None:
        token = django_site.token(kind=kind)
        async with running(make_settings(tmp_path)) as (_, client):
            assert_refused(await client.get("/chat/sessions", headers=bearer(token)), token)


class TestRefreshingDjangoTokens:
    @pytest.mark.parametrize("kind", ["refresh", "access"])
    async def test_refresh_refuses_django_tokens(
        self, client: httpx.AsyncClient, django_site: DjangoSite, kind: str
    ) -> None:
        token = django_site.token(kind=kind)
        response = await client.post("/auth/refresh", json={"refresh_token": token})
        assert_refused(response, token)
        assert "access_token" not in response.json()


class TestLoggingOutDjangoTokens:
    async def test_logout_revokes_the_token(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.token()
        await new_session(client, token)

        logout = await client.post("/auth/logout", headers=bearer(token))

        assert logout.status_code == 200, logout.text
        assert logout.json() == {"success": True}
        for route in ("/auth/me", "/chat/sessions"):
            response = await client.get(route, headers=bearer(token))
            assert_refused(response, token, "token_revoked")

    async def test_the_users_other_tokens_keep_working(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token, other = django_site.str_id_token(), django_site.int_id_token()
        session = await new_session(client, token)

        await client.post("/auth/logout", headers=bearer(token))

        assert await session_ids(client, other) == [session["id"]]

    async def test_a_django_refresh_token_in_the_body_does_not_save_the_access_token(
        self, client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.token()

        logout = await client.post(
            "/auth/logout",
            json={"refresh_token": django_site.token(kind="refresh")},
            headers=bearer(token),
        )

        assert logout.status_code == 200, logout.text
        assert_refused(await client.get("/auth/me", headers=bearer(token)), token, "token_revoked")

    async def test_a_local_users_refresh_token_in_the_body_is_left_alone(
        self, client: httpx.AsyncClient, django_site: DjangoSite, alice: User
    ) -> None:
        logout = await client.post(
            "/auth/logout",
            json={"refresh_token": alice.refresh_token},
            headers=bearer(django_site.token()),
        )

        assert logout.status_code == 200, logout.text
        refreshed = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
        assert refreshed.status_code == 200, refreshed.text

    async def test_the_revocation_survives_a_restart(
        self, tmp_path: Path, django_site: DjangoSite, settings: Settings
    ) -> None:
        token = django_site.token()
        async with running(settings) as (_, before):
            assert (await before.post("/auth/logout", headers=bearer(token))).status_code == 200

        async with running(settings) as (_, after):
            response = await after.get("/auth/me", headers=bearer(token))

        assert_refused(response, token, "token_revoked")

    async def test_a_token_in_its_grace_period_stays_revoked_after_anyone_logs_in(
        self, client: httpx.AsyncClient, django_site: DjangoSite, alice: User
    ) -> None:
        # Past `exp` but within the clock-skew allowance: still accepted, so still revocable.
        token = django_site.expired_token(ago=timedelta(seconds=5))
        assert (await client.get("/auth/me", headers=bearer(token))).status_code == 200
        assert (await client.post("/auth/logout", headers=bearer(token))).status_code == 200

        # A login purges expired bookkeeping; it must not purge this revocation.
        login = await client.post("/auth/login", json={"email": alice.email, "password": PASSWORD})
        assert login.status_code == 200, login.text

        assert_refused(await client.get("/auth/me", headers=bearer(token)), token, "token_revoked")


WEAK_DJANGO_KEYS = [
    "your-actual-django-secret-key-here",
    "django-insecure-your-actual-django-secret-key-here",
    "changeme",
    "CHANGE_THIS_TO_ENV_SECRET",
    "Xq93-short-but-random",
    "django-insecure-Xq93-short-but-random",
]


class TestStartUp:
    def test_the_django_key_must_differ_from_ours(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path, external_jwt_secret=TEST_SECRET)
        with pytest.raises(ConfigError, match="EXTERNAL_JWT_SECRET must differ") as raised:
            create_app(settings)
        assert TEST_SECRET not in str(raised.value)

    def test_the_django_key_must_differ_from_a_generated_key(self, tmp_path: Path) -> None:
        generated = secrets.token_urlsafe(48)
        (tmp_path / SECRET_FILE_NAME).write_text(generated + "\n")
        (tmp_path / SECRET_FILE_NAME).chmod(0o600)
        settings = make_settings(tmp_path, jwt_secret_key=None, external_jwt_secret=generated)
        with pytest.raises(ConfigError, match="EXTERNAL_JWT_SECRET must differ"):
            create_app(settings)

    @pytest.mark.parametrize("value", WEAK_DJANGO_KEYS)
    def test_a_weak_django_key_stops_start_up_naming_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str
    ) -> None:
        monkeypatch.chdir(tmp_path)  # no .env here
        monkeypatch.setenv("JWT_SECRET_KEY", TEST_SECRET)
        monkeypatch.setenv("EXTERNAL_JWT_SECRET", value)
        with pytest.raises(ConfigError) as raised:
            load_settings()
        message = str(raised.value)
        assert "EXTERNAL_JWT_SECRET" in message
        assert value not in message

    @pytest.mark.parametrize("value", WEAK_DJANGO_KEYS)
    def test_a_weak_django_key_fails_validation(self, tmp_path: Path, value: str) -> None:
        with pytest.raises(ValidationError) as raised:
            make_settings(tmp_path, external_jwt_secret=value)
        assert value not in str(raised.value)

    def test_a_startproject_key_is_accepted(self, tmp_path: Path) -> None:
        key = "django-insecure-" + secrets.token_urlsafe(38)
        settings = make_settings(tmp_path, external_jwt_secret=key)
        assert settings.external_jwt_secret is not None
        assert settings.external_jwt_secret.get_secret_value() == key
        create_app(settings)

    def test_the_settings_are_read_from_the_environment(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, django_site: DjangoSite
    ) -> None:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("JWT_SECRET_KEY", TEST_SECRET)
        monkeypatch.setenv("EXTERNAL_JWT_SECRET", django_site.key)
        monkeypatch.setenv("EXTERNAL_JWT_USER_ID_CLAIM", "identity")
        settings = load_settings()
        assert settings.external_jwt_secret is not None
        assert settings.external_jwt_secret.get_secret_value() == django_site.key
        assert settings.external_jwt_user_id_claim == "identity"

    def test_an_empty_django_key_turns_django_tokens_off(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("JWT_SECRET_KEY", TEST_SECRET)
        monkeypatch.setenv("EXTERNAL_JWT_SECRET", "")
        monkeypatch.delenv("EXTERNAL_JWT_USER_ID_CLAIM", raising=False)
        assert load_settings().external_jwt_secret is None
        assert load_settings().external_jwt_user_id_claim == "user_id"
