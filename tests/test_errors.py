"""Bad input of every kind gets the contract's envelope, and never a 500."""

import logging
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.conftest import UserFactory
from tests.helpers import PASSWORD, User, assert_error, make_settings

JSON = {"content-type": "application/json"}


class TestRouting:
    async def test_unknown_route_is_a_404_envelope(self, client: httpx.AsyncClient) -> None:
        assert_error(await client.get("/no/such/route"), 404)

    async def test_wrong_method_is_a_405_envelope(self, client: httpx.AsyncClient) -> None:
        response = await client.put("/auth/login", json={})
        assert_error(response, 405)
        assert "POST" in response.headers["allow"]

    async def test_a_405_on_a_probe_names_get(self, client: httpx.AsyncClient) -> None:
        response = await client.put("/healthz")
        assert_error(response, 405)
        assert "GET" in response.headers["allow"]


EVIL_HOST = {"Host": "evil.example"}


def assert_not_redirected(response: httpx.Response) -> None:
    """A 404 envelope, and nothing in it points at the Host the request named."""
    assert_error(response, 404)
    assert "location" not in response.headers
    assert all("evil.example" not in value for value in response.headers.values())
    assert "evil.example" not in response.text


class TestNoRedirectFromRequestHeaders:
    async def test_a_login_with_a_trailing_slash_is_not_sent_elsewhere(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        body = {"email": alice.email, "password": alice.password}
        response = await client.post("/auth/login/", json=body, headers=EVIL_HOST)
        assert_not_redirected(response)

    async def test_a_bearer_call_with_a_trailing_slash_is_not_sent_elsewhere(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        response = await client.get("/chat/sessions/", headers={**alice.headers, **EVIL_HOST})
        assert_not_redirected(response)

    @pytest.mark.parametrize(
        "path",
        [
            "/docs/",
            "/docs/assets",
            "/docs/oauth2-redirect/",
            "/openapi.json/",
            "/healthz/",
            "/readyz/",
            "/auth/logins/",
            "/auth/me/",
            "/admin/users/",
        ],
    )
    async def test_no_get_is_redirected(self, client: httpx.AsyncClient, path: str) -> None:
        assert_not_redirected(await client.get(path, headers=EVIL_HOST))

    async def test_no_operation_answers_its_slash_variant_with_a_redirect(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert len(paths) > 15
        for template, operations in paths.items():
            path = re.sub(r"\{[^}]+\}", "x", template) + "/"
            for method in operations:
                response = await client.request(
                    method, path, headers={**alice.headers, **EVIL_HOST}
                )
                assert response.status_code == 404, (method, path)
                assert_not_redirected(response)


class TestMalformedBodies:
    @pytest.mark.parametrize(
        "raw",
        [
            b"{",
            b'{"email": "a@example.com", "password": }',
            b"\xff\xfe not utf-8",
            b'{"email": "a@example.com"',
        ],
    )
    async def test_malformed_json_is_a_422_envelope(
        self, client: httpx.AsyncClient, raw: bytes
    ) -> None:
        response = await client.post("/auth/register", content=raw, headers=JSON)
        assert_error(response, 422)

    @pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
    async def test_non_finite_numbers_are_rejected_cleanly(
        self, client: httpx.AsyncClient, alice: User, literal: str
    ) -> None:
        raw = f'{{"session_id": "x", "message": {literal}}}'.encode()
        response = await client.post(
            "/chat/message", content=raw, headers={**JSON, **alice.headers}
        )
        assert_error(response, 422)

    @pytest.mark.parametrize("field", ["email", "password", "display_name"])
    async def test_lone_surrogates_are_a_422_not_a_500(
        self, client: httpx.AsyncClient, field: str
    ) -> None:
        body = {"email": "s@example.com", "password": PASSWORD, "display_name": "Sam"}
        body[field] = "abc\\ud800defghij" if field != "email" else "s\\ud800@example.com"
        raw = "{" + ", ".join(f'"{k}": "{v}"' for k, v in body.items()) + "}"
        response = await client.post("/auth/register", content=raw.encode(), headers=JSON)
        assert_error(response, 422)

    async def test_lone_surrogate_in_a_chat_message_is_a_422(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        created = await client.post("/chat/session/new", json={}, headers=alice.headers)
        session_id = created.json()["session"]["id"]
        raw = f'{{"session_id": "{session_id}", "message": "hi \\udc00"}}'.encode()
        response = await client.post(
            "/chat/message", content=raw, headers={**JSON, **alice.headers}
        )
        assert_error(response, 422)
        history = await client.get(f"/chat/session/{session_id}/history", headers=alice.headers)
        assert history.json()["messages"] == []

    @pytest.mark.parametrize(
        "raw",
        [
            b'{"email": "\xff@example.com", "password": "password123"}',
            b"[" * 5000 + b"]" * 5000,
            b'{"email": "a@example.com", "password": ' + b"9" * 5000 + b"}",
        ],
        ids=["invalid-utf8", "deep-nesting", "huge-integer"],
    )
    async def test_unreadable_json_is_a_422_like_any_malformed_json(
        self, client: httpx.AsyncClient, raw: bytes
    ) -> None:
        response = await client.post("/auth/register", content=raw, headers=JSON)
        assert_error(response, 422, "The request body is not valid JSON.")

    @pytest.mark.parametrize("raw", [b"[]", b'"text"', b"null", b"42", b"{}"])
    async def test_a_body_of_the_wrong_shape_is_a_422(
        self, client: httpx.AsyncClient, raw: bytes
    ) -> None:
        assert_error(await client.post("/auth/register", content=raw, headers=JSON), 422)

    async def test_validation_errors_never_echo_the_submitted_password(
        self, client: httpx.AsyncClient
    ) -> None:
        secret = "tiny"
        response = await client.post(
            "/auth/register", json={"email": "not-an-email", "password": secret}
        )
        assert_error(response, 422)
        assert secret not in response.text
        for item in response.json()["detail"]:
            assert set(item) == {"type", "loc", "msg"}


class TestContentType:
    @pytest.mark.parametrize("content_type", ["text/plain", "application/xml"])
    async def test_non_json_bodies_are_a_415(
        self, client: httpx.AsyncClient, content_type: str
    ) -> None:
        response = await client.post(
            "/auth/register",
            content=b'{"email": "a@example.com", "password": "password1"}',
            headers={"content-type": content_type},
        )
        assert_error(response, 415)

    async def test_a_body_without_content_type_is_a_415(self, client: httpx.AsyncClient) -> None:
        request = client.build_request(
            "POST", "/auth/register", content=b'{"email": "a@example.com"}'
        )
        assert "content-type" not in request.headers
        assert_error(await client.send(request), 415)

    async def test_json_with_a_charset_is_accepted(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/auth/register",
            content=b'{"email": "c@example.com", "password": "password1"}',
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert response.status_code == 201


class TestBodySize:
    async def test_a_declared_oversize_body_is_a_413(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        raw = b'{"email": "' + b"a" * settings.max_body_bytes + b'"}'
        assert_error(await client.post("/auth/register", content=raw, headers=JSON), 413)

    async def test_a_streamed_oversize_body_is_a_413(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(settings.max_body_bytes // 65536 + 2):
                yield b" " * 65536

        response = await client.post("/auth/register", content=chunks(), headers=JSON)
        assert_error(response, 413)

    async def test_a_body_at_the_limit_is_read(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        body = b'{"email": "big@example.com", "password": "password1"}'
        raw = body + b" " * (settings.max_body_bytes - len(body))
        response = await client.post("/auth/register", content=raw, headers=JSON)
        assert response.status_code == 201

    async def test_the_limit_is_configurable(self, tmp_path: object) -> None:
        app = create_app(make_settings(tmp_path, max_body_bytes=2048))  # type: ignore[arg-type]
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                response = await c.post("/auth/register", content=b" " * 4096, headers=JSON)
        assert_error(response, 413)


class TestQueryParameters:
    @pytest.mark.parametrize("limit", ["abc", "1e309", "NaN", "-1", "0", "999999999999999999999"])
    async def test_bad_page_sizes_are_a_422(
        self, client: httpx.AsyncClient, alice: User, limit: str
    ) -> None:
        response = await client.get(f"/chat/sessions?limit={limit}", headers=alice.headers)
        assert_error(response, 422)


@pytest.fixture
async def failing_app(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("SELECT password_hash FROM users -- secret detail")

    async with app.router.lifespan_context(app):
        yield app


class TestUnexpectedErrors:
    async def test_a_crash_is_a_generic_500_with_the_traceback_only_in_the_log(
        self, failing_app: FastAPI, caplog: pytest.LogCaptureFixture
    ) -> None:
        transport = httpx.ASGITransport(app=failing_app, raise_app_exceptions=False)
        with caplog.at_level(logging.ERROR, logger="chatgate"):
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                response = await c.get("/boom")
        assert_error(response, 500)
        assert "SELECT" not in response.text
        assert "Traceback" not in response.text
        assert response.json()["detail"] is None
        assert any("SELECT password_hash" in (r.exc_text or "") for r in caplog.records)


class TestNoSecretsInResponses:
    async def test_no_response_of_a_normal_flow_carries_a_hash(
        self, client: httpx.AsyncClient, make_user: UserFactory
    ) -> None:
        user = await make_user()
        responses = [
            await client.get("/auth/me", headers=user.headers),
            await client.post(
                "/auth/register", json={"email": user.email, "password": user.password}
            ),
            await client.post("/auth/login", json={"email": user.email, "password": "wrong-pw"}),
        ]
        for response in responses:
            assert "$2b$" not in response.text
            assert "bcrypt" not in response.text
            assert user.password not in response.text


class TestPrecedence:
    async def test_without_a_valid_token_a_wrong_content_type_is_still_a_401(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.post(
            "/chat/message",
            content=b"x",
            headers={"content-type": "text/plain", "Authorization": "Bearer junk"},
        )
        assert response.status_code == 401

    async def test_two_authorization_headers_are_refused(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        headers = [
            ("Authorization", alice.headers["Authorization"]),
            ("Authorization", "Bearer junk"),
        ]
        response = await client.get("/chat/sessions", headers=headers)
        assert response.status_code == 401
        assert response.json()["detail"] == "ambiguous_authorization"
