"""Fixtures: a fresh SQLite file and a running app per test, and factories for users."""

import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.fake_openai import FakeOpenAIServer
from tests.helpers import PASSWORD, User, make_settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


_emails = itertools.count(1)
UserFactory = Callable[..., Awaitable[User]]


@pytest.fixture
def make_user(client: httpx.AsyncClient) -> UserFactory:
    """Registers and logs in a new user through the API."""

    async def factory(email: str | None = None, password: str = PASSWORD) -> User:
        email = email or f"user{next(_emails)}@example.com"
        registered = await client.post(
            "/auth/register", json={"email": email, "password": password}
        )
        assert registered.status_code == 201, registered.text
        login = await client.post("/auth/login", json={"email": email, "password": password})
        assert login.status_code == 200, login.text
        body = login.json()
        return User(
            id=registered.json()["user"]["id"],
            email=registered.json()["user"]["email"],
            password=password,
            access_token=body["access_token"],
            refresh_token=body["refresh_token"],
        )

    return factory


@pytest.fixture
async def alice(make_user: UserFactory) -> User:
    return await make_user("alice@example.com")


@pytest.fixture
async def bob(make_user: UserFactory) -> User:
    return await make_user("bob@example.com")


SessionFactory = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture
def make_session(client: httpx.AsyncClient) -> SessionFactory:
    """Creates a chat session for a user; returns the `session` object."""

    async def factory(user: User, **body: Any) -> dict[str, Any]:
        response = await client.post("/chat/session/new", json=body, headers=user.headers)
        assert response.status_code == 201, response.text
        session: dict[str, Any] = response.json()["session"]
        return session

    return factory


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAIServer]:
    """A fake OpenAI-compatible provider on loopback, shared by a module's tests."""
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeOpenAIServer) -> FakeOpenAIServer:
    """The module's fake provider with a clean record: nothing in flight, no request
    remembered, `pause` models held until the test sets `recorder.resume`."""
    deadline = time.monotonic() + 5
    while fake_server.recorder.in_flight:  # a stream the last test left is winding down
        assert time.monotonic() < deadline, "the last test left a stream open at the provider"
        time.sleep(0.01)
    fake_server.recorder.requests.clear()
    fake_server.recorder.max_in_flight = 0
    fake_server.recorder.resume.clear()
    return fake_server
