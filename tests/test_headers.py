"""Security headers on every response: successes, every error envelope, streams,
CORS preflights, the explorer and its assets, and the 500."""

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.conftest import UserFactory
from tests.helpers import PASSWORD, User, assert_error, make_settings, running

SECURITY = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",
    "referrer-policy": "no-referrer",
}
ORIGIN = "http://localhost:3000"
JSON = {"content-type": "application/json"}
Call = Callable[[httpx.AsyncClient, User], Awaitable[httpx.Response]]


def assert_secured(response: httpx.Response, cache_control: str | None = "no-store") -> None:
    """Each security header once, with its value; Cache-Control as given (None: any)."""
    for name, value in SECURITY.items():
        assert response.headers.get_list(name) == [value], (name, response.headers)
    if cache_control is not None:
        assert response.headers.get_list("cache-control") == [cache_control]


async def session_of(c: httpx.AsyncClient, user: User) -> str:
    created = await c.post("/chat/session/new", json={}, headers=user.headers)
    assert created.status_code == 201
    session_id: str = created.json()["session"]["id"]
    return session_id


CASES: dict[str, tuple[int, Call]] = {
    "healthz": (200, lambda c, u: c.get("/healthz")),
    "healthz HEAD": (200, lambda c, u: c.head("/healthz")),
    "readyz": (200, lambda c, u: c.get("/readyz")),
    "openapi": (200, lambda c, u: c.get("/openapi.json")),
    "docs": (200, lambda c, u: c.get("/docs")),
    "docs oauth2 redirect page": (200, lambda c, u: c.get("/docs/oauth2-redirect")),
    "register": (
        201,
        lambda c, u: c.post(
            "/auth/register", json={"email": "n@example.com", "password": PASSWORD}
        ),
    ),
    "me": (200, lambda c, u: c.get("/auth/me", headers=u.headers)),
    "logins": (200, lambda c, u: c.get("/auth/logins", headers=u.headers)),
    "sessions": (200, lambda c, u: c.get("/chat/sessions", headers=u.headers)),
    "logout": (200, lambda c, u: c.post("/auth/logout", json={}, headers=u.headers)),
    "wrong password": (
        401,
        lambda c, u: c.post("/auth/login", json={"email": u.email, "password": "wrong one!"}),
    ),
    "used refresh token": (
        401,
        lambda c, u: c.post("/auth/refresh", json={"refresh_token": "not.a.token"}),
    ),
    "no token": (401, lambda c, u: c.get("/chat/sessions")),
    "not an admin": (403, lambda c, u: c.get("/admin/stats", headers=u.headers)),
    "unknown route": (404, lambda c, u: c.get("/no/such/route")),
    "not your session": (404, lambda c, u: c.get("/chat/session/nope", headers=u.headers)),
    "wrong method": (405, lambda c, u: c.put("/auth/login", json={})),
    "taken email": (
        409,
        lambda c, u: c.post("/auth/register", json={"email": u.email, "password": PASSWORD}),
    ),
    "too large": (
        413,
        lambda c, u: c.post("/auth/register", content=b"x" * 2_000_000, headers=JSON),
    ),
    "not json": (
        415,
        lambda c, u: c.post("/auth/register", content=b"x", headers={"content-type": "text/plain"}),
    ),
    "invalid body": (422, lambda c, u: c.post("/auth/register", json={})),
    "malformed json": (422, lambda c, u: c.post("/auth/register", content=b"{", headers=JSON)),
}


class TestEveryResponse:
    @pytest.mark.parametrize("case", CASES)
    async def test_carries_the_security_headers_and_no_store(
        self, client: httpx.AsyncClient, make_user: UserFactory, case: str
    ) -> None:
        status, call = CASES[case]
        response = await call(client, await make_user())
        assert response.status_code == status, response.text
        assert_secured(response)

    @pytest.mark.parametrize("grant", ["json", "form"])
    async def test_token_responses_keep_their_own_no_store(
        self, client: httpx.AsyncClient, alice: User, grant: str
    ) -> None:
        if grant == "json":
            login = await client.post(
                "/auth/login", json={"email": alice.email, "password": alice.password}
            )
        else:
            login = await client.post(
                "/auth/login", data={"username": alice.email, "password": alice.password}
            )
        refreshed = await client.post(
            "/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
        )
        for response in (login, refreshed):
            assert response.status_code == 200
            assert_secured(response)
            assert response.headers["pragma"] == "no-cache"

    async def test_an_event_stream_keeps_its_cache_control(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        session_id = await session_of(client, alice)
        body = {"session_id": session_id, "message": "hello"}
        async with client.stream("POST", "/chat/send", json=body, headers=alice.headers) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            assert_secured(r, cache_control="no-cache")
            assert "event: done" in (await r.aread()).decode()

    @pytest.mark.parametrize("asset", ["swagger-ui.css", "swagger-ui-bundle.js", "favicon.png"])
    async def test_the_explorer_assets_stay_cacheable(
        self, client: httpx.AsyncClient, asset: str
    ) -> None:
        response = await client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200
        assert_secured(response, cache_control=None)
        assert "cache-control" not in response.headers
        assert response.headers["etag"]

    async def test_the_explorer_cannot_be_framed(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs")
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


class TestCorsPreflights:
    @pytest.fixture
    async def cors_client(self, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
        async with running(make_settings(tmp_path, cors_origins=[ORIGIN])) as (_, c):
            yield c

    async def test_an_allowed_preflight_carries_them(self, cors_client: httpx.AsyncClient) -> None:
        response = await cors_client.options(
            "/chat/sessions",
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert_secured(response)

    async def test_a_refused_preflight_carries_them(self, cors_client: httpx.AsyncClient) -> None:
        response = await cors_client.options(
            "/chat/message",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert_error(response, 400)
        assert_secured(response)

    async def test_a_cross_origin_answer_carries_them(self, cors_client: httpx.AsyncClient) -> None:
        response = await cors_client.get("/healthz", headers={"Origin": ORIGIN})
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert_secured(response)


class TestRateLimitedAndCrashed:
    async def test_a_429_carries_them(self, tmp_path: Path) -> None:
        settings = make_settings(
            tmp_path, rate_limit_enabled=True, rate_limit_login_email="1/minute"
        )
        async with running(settings) as (_, c):
            body = {"email": "x@example.com", "password": "not the password"}
            assert (await c.post("/auth/login", json=body)).status_code == 401
            response = await c.post("/auth/login", json=body)
        assert_error(response, 429)
        assert_secured(response)

    @pytest.fixture
    async def crashing_app(self, tmp_path: Path) -> AsyncIterator[FastAPI]:
        app = create_app(make_settings(tmp_path, cors_origins=[ORIGIN]))

        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("boom")

        async with app.router.lifespan_context(app):
            yield app

    async def test_a_500_carries_them(self, crashing_app: FastAPI) -> None:
        transport = httpx.ASGITransport(app=crashing_app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            response = await c.get("/boom", headers={"Origin": ORIGIN})
        assert_error(response, 500)
        assert_secured(response)
