"""Helpers shared by the test modules: isolated settings, the test user, envelope checks."""

import json
import secrets
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from app.config import Settings
from app.main import create_app

TEST_SECRET = secrets.token_urlsafe(48)
PASSWORD = "correct horse battery staple"


class IsolatedSettings(Settings):
    """Settings from keyword arguments only: no environment, no .env."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_secret_key": TEST_SECRET,
        "database_url": f"sqlite:///{tmp_path / 'chatgate.db'}",
        "bcrypt_rounds": 4,
        # Tests register and log in far more often than people do; the limits have
        # their own tests (test_rate_limits.py), which turn them on.
        "rate_limit_enabled": False,
        **overrides,
    }
    return IsolatedSettings(**values)


@dataclass
class User:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def assert_error(response: httpx.Response, status: int, error: str | None = None) -> None:
    """The contract's envelope: success false, one sentence, a detail key."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False
    assert isinstance(body["error"], str)
    assert body["error"]
    assert "detail" in body
    if error is not None:
        assert body["error"] == error


def assert_unauthorized(response: httpx.Response, cause: str | None = None) -> None:
    assert_error(response, 401, "Unauthorized - Invalid or missing token")
    assert response.headers["www-authenticate"] == "Bearer"
    if cause is not None:
        assert response.json()["detail"] == cause


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """An app with its own settings through its whole lifespan, as a process runs it."""
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        yield app, c


def sse_events(lines: Iterable[str], *, complete: bool = True) -> Iterator[tuple[str, Any]]:
    """(event, data) as an EventSource reads them, each when its blank line arrives;
    comments (pings) skipped. With `complete`, an event left without its blank line
    fails; without, it is dropped (a stream the test expects to be cut)."""
    name, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
    assert not (complete and data), "the stream must end on a blank line"


def asgi_scope(user: User, body: bytes) -> dict[str, Any]:
    """The ASGI scope of `user`'s POST /chat/send with this JSON body, for tests that
    drive the app directly (httpx.ASGITransport answers only once a response is whole)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", user.headers["Authorization"].encode()),
    ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/chat/send",
        "raw_path": b"/chat/send",
        "query_string": b"",
        "root_path": "",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 1),
        "headers": headers,
    }
