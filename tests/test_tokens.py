"""Every way a bearer token can be wrong ends in the contract's 401, never a 500 or an echo."""

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from app.config import Settings
from tests.helpers import (
    PASSWORD,
    TEST_SECRET,
    User,
    assert_unauthorized,
    make_settings,
    running,
)

PROTECTED_ROUTES = ["/auth/me", "/chat/sessions"]
MISSING = object()


@pytest.fixture(params=PROTECTED_ROUTES)
def route(request: pytest.FixtureRequest) -> str:
    path: str = request.param
    return path


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    """A JWT segment from a JSON value, or from raw JSON text given as bytes."""
    return b64url(value if isinstance(value, bytes) else json.dumps(value).encode())


def hand_made(
    header: Any,
    payload: Any,
    key: str | bytes = TEST_SECRET,
    digest: Callable[..., Any] = hashlib.sha256,
) -> str:
    """A token signed by hand, for headers and payloads jose refuses to write."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    raw_key = key.encode() if isinstance(key, str) else key
    signature = hmac.new(raw_key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{b64url(signature)}"


def claims_for(user: User | str, settings: Settings, **changes: Any) -> dict[str, Any]:
    """Valid access-token claims of a user's login (or of a user id with a made-up login);
    a change to MISSING drops that claim."""
    now = int(time.time())
    if isinstance(user, str):
        sub, family = user, str(uuid.uuid4())
    else:
        sub, family = user.id, jwt.get_unverified_claims(user.access_token)["fam"]
    claims: dict[str, Any] = {
        "sub": sub,
        "fam": family,
        "iat": now,
        "exp": now + settings.access_token_expire_minutes * 60,
        "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "type": "access",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not MISSING}


def signed(claims: dict[str, Any], key: str = TEST_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


async def call(client: httpx.AsyncClient, route: str, authorization: str | None) -> httpx.Response:
    # Bytes, so that non-ASCII tokens reach the app as UTF-8 instead of failing in httpx.
    headers = [] if authorization is None else [(b"Authorization", authorization.encode())]
    return await client.get(route, headers=headers)


async def call_with_token(client: httpx.AsyncClient, route: str, token: str) -> httpx.Response:
    return await call(client, route, f"Bearer {token}")


def assert_rejected(response: httpx.Response, token: str, cause: str | None = None) -> None:
    """The contract's 401, and not a trace of the token in the body or the headers."""
    assert_unauthorized(response, cause)
    pieces = {token, *(part for part in token.split(".") if len(part) >= 8)}
    pieces.discard("")
    seen = [response.text, *response.headers.values()]
    for piece in pieces:
        for text in seen:
            assert piece not in text, f"token echoed in {text[:200]!r}"


class TestValidTokens:
    """The controls: if these fail, the rejections below prove nothing."""

    async def test_token_from_login_is_accepted(
        self, client: httpx.AsyncClient, alice: User, route: str
    ) -> None:
        response = await call_with_token(client, route, alice.access_token)

        assert response.status_code == 200, response.text

    async def test_jose_built_token_is_accepted(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        token = signed(claims_for(alice, settings))

        assert (await call_with_token(client, route, token)).status_code == 200

    async def test_hand_made_token_is_accepted(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        token = hand_made({"alg": "HS256", "typ": "JWT"}, claims_for(alice, settings))

        assert (await call_with_token(client, route, token)).status_code == 200


class TestAuthorizationHeader:
    async def test_missing_header_is_rejected(self, client: httpx.AsyncClient, route: str) -> None:
        assert_unauthorized(await call(client, route, None), "missing_token")

    @pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNzd29yZA==", "Token abc", "Digest x"])
    async def test_other_scheme_is_rejected(
        self, client: httpx.AsyncClient, route: str, value: str
    ) -> None:
        assert_unauthorized(await call(client, route, value))

    async def test_valid_token_under_basic_scheme_is_rejected(
        self, client: httpx.AsyncClient, alice: User, route: str
    ) -> None:
        response = await call(client, route, f"Basic {alice.access_token}")

        assert_rejected(response, alice.access_token)

    async def test_bare_token_without_scheme_is_rejected(
        self, client: httpx.AsyncClient, alice: User, route: str
    ) -> None:
        assert_rejected(await call(client, route, alice.access_token), alice.access_token)

    @pytest.mark.parametrize("value", ["Bearer", "Bearer ", "Bearer    ", ""])
    async def test_bearer_with_empty_token_is_rejected(
        self, client: httpx.AsyncClient, route: str, value: str
    ) -> None:
        assert_unauthorized(await call(client, route, value))


class TestGarbage:
    @pytest.mark.parametrize(
        "token",
        [
            "garbage",
            "not a token at all",
            "a.b.c",
            "....",
            "..",
            "a.b",
            "a.b.c.d.e",
            "x" * 4000,
            "x" * 5000,
            "eyJ" + "A" * 100_000,
            "ünïcødé.tøkén.sïgnåtürë",
            "😀.😀.😀",
            "токен.токен.токен",
            segment({"alg": "HS256"}) + ".%%%%.@@@@",
            ".".join(b64url(secrets.token_bytes(1200)) for _ in range(3)),
            ".".join(b64url(secrets.token_bytes(3000)) for _ in range(3)),
            b64url(b"not json") + "." + b64url(b"not json") + "." + b64url(b"sig"),
        ],
        ids=[
            "word",
            "words",
            "a.b.c",
            "dots",
            "two-dots",
            "two-segments",
            "five-segments",
            "4000-chars",
            "5000-chars",
            "100k-chars",
            "latin-accents",
            "emoji",
            "cyrillic",
            "bad-base64",
            "big-random-segments",
            "huge-random-segments",
            "segments-not-json",
        ],
    )
    async def test_garbage_is_rejected(
        self, client: httpx.AsyncClient, alice: User, route: str, token: str
    ) -> None:
        assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize(
        "payload",
        [b"[1, 2, 3]", b'"a string"', b"42", b"null", b"true", b"{", b"{}"],
        ids=["array", "string", "number", "null", "bool", "broken", "empty-object"],
    )
    async def test_signed_payload_that_is_not_claims_is_rejected(
        self, client: httpx.AsyncClient, alice: User, route: str, payload: bytes
    ) -> None:
        token = hand_made({"alg": "HS256", "typ": "JWT"}, payload)

        assert_rejected(await call_with_token(client, route, token), token)


class TestTampering:
    @pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
    async def test_alg_none_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str, alg: str
    ) -> None:
        unsigned = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims_for(alice, settings))}"

        for token in (unsigned + ".", unsigned, unsigned + ".c2lnbmF0dXJl"):
            assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize(
        "key",
        [secrets.token_urlsafe(48), TEST_SECRET + "x", TEST_SECRET[:-1], TEST_SECRET.upper()],
        ids=["random", "longer", "shorter", "upper-case"],
    )
    async def test_wrong_key_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str, key: str
    ) -> None:
        token = signed(claims_for(alice, settings), key=key)

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_empty_key_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        token = hand_made({"alg": "HS256", "typ": "JWT"}, claims_for(alice, settings), key=b"")

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_a_critical_header_extension_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        header = {"alg": "HS256", "typ": "JWT", "crit": ["exp-policy"], "exp-policy": 1}
        token = hand_made(header, claims_for(alice, settings))

        assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
    async def test_other_hmac_algorithm_with_the_right_key_is_rejected(
        self,
        client: httpx.AsyncClient,
        alice: User,
        settings: Settings,
        route: str,
        algorithm: str,
    ) -> None:
        token = signed(claims_for(alice, settings), algorithm=algorithm)

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_rs256_token_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        token = jwt.encode(claims_for(alice, settings), pem, algorithm="RS256")

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_rs256_header_signed_with_the_hmac_key_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        token = hand_made({"alg": "RS256", "typ": "JWT"}, claims_for(alice, settings))

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_payload_swapped_under_a_valid_signature_is_rejected(
        self, client: httpx.AsyncClient, alice: User, bob: User, route: str
    ) -> None:
        header, _, signature = alice.access_token.split(".")
        _, bob_payload, _ = bob.access_token.split(".")
        token = f"{header}.{bob_payload}.{signature}"

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_altered_signature_is_rejected(
        self, client: httpx.AsyncClient, alice: User, route: str
    ) -> None:
        header, payload, signature = alice.access_token.split(".")
        # The first character: the last one of a base64 signature holds padding bits.
        altered = ("B" if signature[0] == "A" else "A") + signature[1:]
        token = f"{header}.{payload}.{altered}"

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_stripped_signature_is_rejected(
        self, client: httpx.AsyncClient, alice: User, route: str
    ) -> None:
        header, payload, _ = alice.access_token.split(".")

        for token in (f"{header}.{payload}.", f"{header}.{payload}"):
            assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize(
        "header",
        [
            {"alg": ["HS256"], "typ": "JWT"},
            {"alg": None, "typ": "JWT"},
            {"alg": 256, "typ": "JWT"},
            {"alg": {"HS256": True}, "typ": "JWT"},
            {"typ": "JWT"},
            [{"alg": "HS256", "typ": "JWT"}],
            ["HS256"],
            "HS256",
            None,
            42,
        ],
        ids=[
            "alg-list",
            "alg-null",
            "alg-number",
            "alg-object",
            "no-alg",
            "array-of-header",
            "array-of-alg",
            "string-header",
            "null-header",
            "number-header",
        ],
    )
    async def test_malformed_header_is_rejected(
        self,
        client: httpx.AsyncClient,
        alice: User,
        settings: Settings,
        route: str,
        header: Any,
    ) -> None:
        token = hand_made(header, claims_for(alice, settings))

        assert_rejected(await call_with_token(client, route, token), token)


class TestExpiry:
    @pytest.mark.parametrize("ago", [120, 3600, 10**6], ids=["2-minutes", "1-hour", "11-days"])
    async def test_expired_token_is_rejected_as_expired(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str, ago: int
    ) -> None:
        exp = int(time.time()) - ago
        token = signed(claims_for(alice, settings, iat=exp - 60, exp=exp))

        assert_rejected(await call_with_token(client, route, token), token, "token_expired")

    @pytest.mark.parametrize("ahead", [120, 3600, 10**6], ids=["2-minutes", "1-hour", "11-days"])
    async def test_token_issued_in_the_future_is_rejected(
        self,
        client: httpx.AsyncClient,
        alice: User,
        settings: Settings,
        route: str,
        ahead: int,
    ) -> None:
        iat = int(time.time()) + ahead
        token = signed(claims_for(alice, settings, iat=iat, exp=iat + 60))

        assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize(
        "extra_seconds", [3600, 365 * 86400, 10**12], ids=["1-hour", "1-year", "forever"]
    )
    async def test_lifetime_longer_than_allowed_is_rejected(
        self,
        client: httpx.AsyncClient,
        alice: User,
        settings: Settings,
        route: str,
        extra_seconds: int,
    ) -> None:
        now = int(time.time())
        lifetime = settings.access_token_expire_minutes * 60 + extra_seconds
        token = signed(claims_for(alice, settings, iat=now - 10, exp=now - 10 + lifetime))

        assert_rejected(await call_with_token(client, route, token), token)


class TestClaims:
    @pytest.mark.parametrize("claim", ["sub", "exp", "iat", "jti", "iss", "type", "fam"])
    async def test_missing_required_claim_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str, claim: str
    ) -> None:
        token = signed(claims_for(alice, settings, **{claim: MISSING}))

        assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize(
        "issuer", ["someone-else", "", "Chatgate", "chatgate ", None, ["chatgate"]]
    )
    async def test_wrong_issuer_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str, issuer: Any
    ) -> None:
        token = signed(claims_for(alice, settings, iss=issuer))

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_refresh_token_from_login_is_not_an_access_token(
        self, client: httpx.AsyncClient, alice: User, route: str
    ) -> None:
        response = await call_with_token(client, route, alice.refresh_token)

        assert_rejected(response, alice.refresh_token)

    @pytest.mark.parametrize(
        "token_type", ["refresh", "ACCESS", "Access", "", None, ["access"], {"access": True}, 1]
    )
    async def test_other_token_type_is_rejected(
        self,
        client: httpx.AsyncClient,
        alice: User,
        settings: Settings,
        route: str,
        token_type: Any,
    ) -> None:
        token = signed(claims_for(alice, settings, type=token_type))

        assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize("claim", ["exp", "iat"])
    @pytest.mark.parametrize(
        "make_value",
        [
            lambda v: v + 0.5,
            lambda v: str(v),
            lambda v: [v],
            lambda v: {"value": v},
            lambda v: None,
            lambda v: 10**30,
            lambda v: -(10**30),
            lambda v: True,
            lambda v: False,
        ],
        ids=["float", "string", "list", "object", "null", "huge", "huge-negative", "true", "false"],
    )
    async def test_non_integer_time_claim_is_rejected(
        self,
        client: httpx.AsyncClient,
        alice: User,
        settings: Settings,
        route: str,
        claim: str,
        make_value: Callable[[int], Any],
    ) -> None:
        valid = claims_for(alice, settings)
        token = signed({**valid, claim: make_value(valid[claim])})

        assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize("claim", ["exp", "iat"])
    @pytest.mark.parametrize("literal", ["1e400", "-1e400", "NaN", "Infinity", "1e3"])
    async def test_non_finite_or_exponent_time_claim_is_rejected(
        self,
        client: httpx.AsyncClient,
        alice: User,
        settings: Settings,
        route: str,
        claim: str,
        literal: str,
    ) -> None:
        valid = claims_for(alice, settings)
        placeholder = "__TIME__"
        raw = json.dumps({**valid, claim: placeholder}).replace(f'"{placeholder}"', literal)
        token = hand_made({"alg": "HS256", "typ": "JWT"}, raw.encode())

        assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize(
        "sub",
        [123, 0, None, True, [], ["user"], {}, "", "x" * 1000],
        ids=["int", "zero", "null", "bool", "empty-list", "list", "object", "empty", "very-long"],
    )
    async def test_subject_that_is_not_a_user_id_string_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str, sub: Any
    ) -> None:
        token = signed(claims_for(alice, settings, sub=sub))

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_numeric_form_of_a_real_user_id_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        token = signed(claims_for(alice, settings, sub=uuid.UUID(alice.id).int))

        assert_rejected(await call_with_token(client, route, token), token)

    @pytest.mark.parametrize("jti", ["", None, 42, ["id"]], ids=["empty", "null", "int", "list"])
    async def test_bad_token_id_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str, jti: Any
    ) -> None:
        token = signed(claims_for(alice, settings, jti=jti))

        assert_rejected(await call_with_token(client, route, token), token)

    async def test_unknown_user_is_rejected(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        token = signed(claims_for(str(uuid.uuid4()), settings))

        assert_rejected(await call_with_token(client, route, token), token, "user_not_found")

    async def test_upper_case_user_id_is_not_the_user(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, route: str
    ) -> None:
        token = signed(claims_for(alice.id.upper(), settings))

        assert_rejected(await call_with_token(client, route, token), token, "user_not_found")


async def register_and_login(client: httpx.AsyncClient) -> str:
    credentials = {"email": "restart@example.com", "password": PASSWORD}
    assert (await client.post("/auth/register", json=credentials)).status_code == 201
    login = await client.post("/auth/login", json=credentials)
    assert login.status_code == 200, login.text
    token: str = login.json()["access_token"]
    return token


class TestRestart:
    async def test_token_survives_a_restart_with_the_same_secret(self, tmp_path: Path) -> None:
        async with running(make_settings(tmp_path)) as (_, before):
            token = await register_and_login(before)

        async with running(make_settings(tmp_path)) as (_, after):
            for route in PROTECTED_ROUTES:
                response = await call_with_token(after, route, token)
                assert response.status_code == 200, response.text

    async def test_second_instance_with_the_same_secret_accepts_the_token(
        self, client: httpx.AsyncClient, alice: User, tmp_path: Path
    ) -> None:
        async with running(make_settings(tmp_path)) as (_, other):
            response = await call_with_token(other, "/auth/me", alice.access_token)

        assert response.status_code == 200, response.text
        assert response.json()["user"]["id"] == alice.id

    async def test_token_survives_a_restart_with_a_generated_secret(self, tmp_path: Path) -> None:
        async with running(make_settings(tmp_path, jwt_secret_key=None)) as (_, before):
            token = await register_and_login(before)

        async with running(make_settings(tmp_path, jwt_secret_key=None)) as (_, after):
            response = await call_with_token(after, "/auth/me", token)

        assert response.status_code == 200, response.text

    async def test_token_dies_when_the_secret_changes(self, tmp_path: Path) -> None:
        async with running(make_settings(tmp_path)) as (_, before):
            token = await register_and_login(before)

        other_secret = secrets.token_urlsafe(48)
        async with running(make_settings(tmp_path, jwt_secret_key=other_secret)) as (_, after):
            response = await call_with_token(after, "/auth/me", token)

        assert_rejected(response, token)
