"""How many replies are written at once: ASSISTANT_MAX_CONCURRENT_REPLIES, and nothing else.

Up to the limit every reply starts at once (no hidden pool makes one wait in
silence); past it, a new one is refused at once with 503 and Retry-After, and
nothing of it is stored. Streams are held open by the fake provider's `pause`
model under a real uvicorn, since an in-process transport buffers whole responses.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.services import assistant as assistant_module
from app.services.assistant import Turn
from tests.conftest import SessionFactory
from tests.fake_openai import FakeOpenAIServer
from tests.helpers import User, asgi_scope, assert_error, make_settings, running, sse_events
from tests.test_streaming import ChatgateServer

TOO_MANY = "Too many replies are being written right now; retry shortly."
REPLY_ROUTES = [
    pytest.param("/chat/send", id="send"),
    pytest.param("/chat/message", id="message"),
]


@dataclass(frozen=True)
class Held:
    asked: asyncio.Event
    go_on: asyncio.Event


@pytest.fixture
def limit() -> int | None:
    """ASSISTANT_MAX_CONCURRENT_REPLIES for the test; None keeps the default."""
    return None


@pytest.fixture
def live_settings(tmp_path: Path, fake: FakeOpenAIServer, limit: int | None) -> Settings:
    overrides = {} if limit is None else {"assistant_max_concurrent_replies": limit}
    return make_settings(
        tmp_path,
        assistant_provider="openai",
        openai_base_url=fake.base_url,
        openai_model="pause",
        openai_read_timeout=20.0,
        **overrides,
    )


@pytest.fixture
def live(live_settings: Settings) -> Iterator[ChatgateServer]:
    with ChatgateServer(live_settings) as server:
        yield server


@pytest.fixture
async def live_client(
    live: ChatgateServer, fake: FakeOpenAIServer
) -> AsyncIterator[httpx.AsyncClient]:
    """chatgate under uvicorn, over sockets with no pool limit of their own. Before
    chatgate stops, every paused reply is let go: its shutdown never waits for one."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    try:
        async with httpx.AsyncClient(base_url=live.url, timeout=30, limits=limits) as c:
            yield c
    finally:
        fake.recorder.resume.set()


async def new_user(client: httpx.AsyncClient) -> User:
    email = f"limits-{time.monotonic_ns()}@example.com"
    password = "correct horse battery staple"
    registered = await client.post("/auth/register", json={"email": email, "password": password})
    assert registered.status_code == 201, registered.text
    login = await client.post("/auth/login", json={"email": email, "password": password})
    assert login.status_code == 200, login.text
    tokens = login.json()
    return User(
        registered.json()["user"]["id"],
        email,
        password,
        tokens["access_token"],
        tokens["refresh_token"],
    )


async def new_session(client: httpx.AsyncClient, user: User) -> str:
    response = await client.post("/chat/session/new", json={}, headers=user.headers)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session"]["id"]
    return session_id


async def history(client: httpx.AsyncClient, user: User, session_id: str) -> list[str]:
    response = await client.get(f"/chat/session/{session_id}/history", headers=user.headers)
    assert response.status_code == 200, response.text
    return [m["content"] for m in response.json()["messages"]]


async def session_count(client: httpx.AsyncClient, user: User) -> int:
    response = await client.get("/chat/sessions", headers=user.headers)
    assert response.status_code == 200, response.text
    count: int = response.json()["count"]
    return count


async def read_stream(
    client: httpx.AsyncClient, user: User, session_id: str, started: asyncio.Event | None = None
) -> list[tuple[str, Any]]:
    """POST /chat/send, read to the end; `started` is set once the first delta is in."""
    body = {"session_id": session_id, "message": f"hello from {session_id}"}
    lines: list[str] = []
    async with client.stream("POST", "/chat/send", json=body, headers=user.headers) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            lines.append(line)
            if started is not None and line.startswith("data:"):
                started.set()
    return list(sse_events([*lines, ""]))


async def wait_for_all(events: list[asyncio.Event], seconds: float) -> int:
    """How many of `events` were set within `seconds`."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await asyncio.gather(*(e.wait() for e in events))
    return sum(e.is_set() for e in events)


def assert_refused(response: httpx.Response) -> None:
    assert_error(response, 503, TOO_MANY)
    assert int(response.headers["retry-after"]) >= 1


@dataclass
class AsgiSend:
    """One POST /chat/send driven at the ASGI level, as a server would: httpx's
    ASGITransport hands over a response only once it is complete, and these tests
    watch for its first delta."""

    status: int = 0
    body: bytes = b""
    first_delta: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, app: FastAPI, user: User, session_id: str, text: str) -> None:
        request = json.dumps({"session_id": session_id, "message": text}).encode()
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request, "more_body": False}
            await asyncio.Future()  # the client stays to the end
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
            elif message["type"] == "http.response.body":
                self.body += message.get("body", b"")
                if b"event: delta" in self.body:
                    self.first_delta.set()

        await app(asgi_scope(user, request), receive, send)  # type: ignore[arg-type]

    def events(self) -> list[tuple[str, Any]]:
        return list(sse_events(self.body.decode().split("\n")))


class TestNoHiddenCap:
    @pytest.fixture
    def settings(self, live_settings: Settings) -> Settings:
        """In process, with the fake provider (and its `pause` model) over loopback."""
        return live_settings

    async def test_150_replies_at_once_all_get_their_first_delta(
        self,
        app: FastAPI,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        """With the default limit (1000), no pool of 100 leaves 50 users waiting in silence."""
        session_id = (await make_session(alice))["id"]
        sends = [AsgiSend() for _ in range(150)]
        tasks = [
            asyncio.create_task(send.run(app, alice, session_id, f"message {n}"))
            for n, send in enumerate(sends)
        ]
        try:
            first_deltas = await wait_for_all([send.first_delta for send in sends], 5)
        finally:
            fake.recorder.resume.set()
            async with asyncio.timeout(10):
                await asyncio.gather(*tasks)
        assert first_deltas == 150, f"only {first_deltas} of 150 replies started"
        assert fake.recorder.max_in_flight == 150
        assert {send.status for send in sends} == {200}
        assert all(send.events()[-1][0] == "done" for send in sends)


class TestOverTheLimit:
    @pytest.fixture
    def limit(self) -> int:
        return 2

    async def test_a_third_reply_is_refused_at_once_and_nothing_of_it_is_stored(
        self, live_client: httpx.AsyncClient, fake: FakeOpenAIServer
    ) -> None:
        client = live_client
        user = await new_user(client)
        first, second, third = [await new_session(client, user) for _ in range(3)]
        started = [asyncio.Event(), asyncio.Event()]
        held = [
            asyncio.create_task(read_stream(client, user, session_id, event))
            for session_id, event in zip((first, second), started, strict=True)
        ]
        try:
            assert await wait_for_all(started, 5) == 2
            async with asyncio.timeout(2):  # at once, never a silent wait
                refusals = [
                    await client.post(
                        route,
                        json={"session_id": third, "message": "one too many"},
                        headers=user.headers,
                    )
                    for route in ("/chat/send", "/chat/message")
                ]
                refusals.append(
                    await client.post(
                        "/chat/session/new",
                        json={"initial_message": "one too many"},
                        headers=user.headers,
                    )
                )
        finally:
            fake.recorder.resume.set()
            results = await asyncio.gather(*held, return_exceptions=True)
        for refused in refusals:
            assert_refused(refused)
        assert await history(client, user, third) == []
        assert await session_count(client, user) == 3  # no session for the refused one
        assert [r[-1][0] for r in results if not isinstance(r, BaseException)] == ["done"] * 2

        # The two are done: their places are free again, at once.
        events = await read_stream(client, user, third)
        assert events[-1][0] == "done"
        assert len(await history(client, user, third)) == 2


class TestEveryProvider:
    """The limit is chatgate's, not the provider client's: the echo provider has it too."""

    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        return make_settings(tmp_path, assistant_max_concurrent_replies=1)

    @pytest.fixture
    def held(self, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> Held:
        """The echo assistant, made to wait before answering until `go_on` is set."""
        state = Held(asyncio.Event(), asyncio.Event())
        assistant = app.state.services.conversation.assistant
        echo = assistant.stream_reply

        async def held_echo(conversation: Sequence[Turn]) -> AsyncGenerator[str]:
            state.asked.set()
            await state.go_on.wait()
            async for piece in echo(conversation):
                yield piece

        monkeypatch.setattr(assistant, "stream_reply", held_echo)
        return state

    @pytest.mark.parametrize("route", REPLY_ROUTES)
    async def test_a_second_reply_is_refused_while_the_only_place_is_taken(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        held: Held,
        route: str,
    ) -> None:
        busy, other = (await make_session(alice))["id"], (await make_session(alice))["id"]
        first = asyncio.create_task(
            client.post(
                "/chat/message", json={"session_id": busy, "message": "hi"}, headers=alice.headers
            )
        )
        try:
            async with asyncio.timeout(5):
                await held.asked.wait()
            async with asyncio.timeout(2):  # at once, never a silent wait
                refused = await client.post(
                    route, json={"session_id": other, "message": "me too"}, headers=alice.headers
                )
        finally:
            held.go_on.set()
            answered = await first
        assert answered.status_code == 200, answered.text
        assert_refused(refused)
        assert await history(client, alice, other) == []
        again = await client.post(
            route, json={"session_id": other, "message": "me too"}, headers=alice.headers
        )
        assert again.status_code == 200, again.text


class TestOpenFiles:
    """Each reply needs a socket to the client and one to the provider."""

    def _rlimit(
        self, monkeypatch: pytest.MonkeyPatch, soft: int, hard: int
    ) -> list[tuple[int, int]]:
        resource = assistant_module.resource
        assert resource is not None
        calls: list[tuple[int, int]] = []
        monkeypatch.setattr(resource, "getrlimit", lambda _: (soft, hard))
        monkeypatch.setattr(resource, "setrlimit", lambda _, limits: calls.append(limits))
        return calls

    def _settings(self, tmp_path: Path) -> Settings:
        return make_settings(
            tmp_path, assistant_provider="openai", openai_model="m", openai_api_key="sk-secret"
        )

    async def test_a_low_soft_limit_is_raised_at_startup(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls = self._rlimit(monkeypatch, 1024, 1_048_576)
        async with running(self._settings(tmp_path)):
            pass
        assert len(calls) == 1
        soft, hard = calls[0]
        assert 2000 <= soft < 1_048_576
        assert hard == 1_048_576

    async def test_a_hard_limit_too_low_is_a_warning(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        calls = self._rlimit(monkeypatch, 1024, 1024)
        with caplog.at_level(logging.WARNING, logger="chatgate"):
            async with running(self._settings(tmp_path)):
                pass
        assert calls == []
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any("ASSISTANT_MAX_CONCURRENT_REPLIES" in w for w in warnings), warnings


class TestOpenAPI:
    @pytest.mark.parametrize(
        ("path", "method"),
        [("/chat/send", "post"), ("/chat/message", "post"), ("/chat/session/new", "post")],
    )
    async def test_the_503_is_declared(
        self, client: httpx.AsyncClient, path: str, method: str
    ) -> None:
        schema = (await client.get("/openapi.json")).json()
        assert "503" in schema["paths"][path][method]["responses"]
