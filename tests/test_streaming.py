"""Streamed replies from an OpenAI-compatible provider, over real HTTP on loopback.

The provider is tests/fake_openai.py in a thread of its own; its model name picks
the behaviour. For a client that goes away mid-stream, chatgate itself runs under
uvicorn too, since an in-process transport never disconnects.
"""

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.conftest import SessionFactory, UserFactory
from tests.fake_openai import FakeOpenAIServer
from tests.helpers import (
    User,
    asgi_scope,
    assert_error,
    assert_unauthorized,
    make_settings,
    sse_events,
)

UNAVAILABLE = "The assistant is unavailable"
NOT_FOUND = "Session not found or access denied"
MESSAGE_KEYS = {"id", "session_id", "role", "content", "created_at"}
# The slow model (50 ms a word) takes over a second to say this one.
LONG_MESSAGE = " ".join(f"word{n}" for n in range(24))
# The slow model needs 10 s for this one: far longer than any wait in these tests.
ENDLESS_MESSAGE = " ".join(f"word{n}" for n in range(200))


@dataclass(frozen=True)
class Provider:
    """How the fake provider behaves for one test, and how chatgate is told to reach it."""

    model: str = "echo-words"
    read_timeout: float = 5.0
    refused: bool = False  # point chatgate at a loopback port nothing listens on
    settings: dict[str, Any] = field(default_factory=dict)


FAILURES = [
    pytest.param(Provider("error-500"), id="http-500"),
    pytest.param(Provider("hang", read_timeout=0.5), id="read-timeout"),
    pytest.param(Provider("malformed"), id="malformed-chunk"),
    pytest.param(Provider("cut"), id="connection-cut-mid-stream"),
    pytest.param(Provider(refused=True), id="connection-refused"),
]
BLANKS = [
    pytest.param("", id="empty"),
    pytest.param(" ", id="space"),
    pytest.param("\n\t", id="newline-tab"),
]


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]


def parse_sse(text: str) -> list[Event]:
    """Events as an EventSource reads them: fields up to a blank line, comments skipped."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [Event(name, data) for name, data in sse_events(lines)]


def rebuild_from_data_lines(lines: list[str]) -> str:
    """What a client reading only `data:` lines (requests' iter_lines) puts together."""
    payloads = [
        json.loads(line.removeprefix("data:")) for line in lines if line.startswith("data:")
    ]
    return "".join(p["content"] for p in payloads if "content" in p)


def deltas_of(events: list[Event]) -> list[str]:
    return [e.data["content"] for e in events if e.name == "delta"]


def echoed(text: str) -> str:
    """The fake's reply to `text`."""
    return f"You said: {text}"


def unused_loopback_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def stream(
    client: httpx.AsyncClient, user: User, session_id: str, text: str
) -> httpx.Response:
    return await client.post(
        "/chat/send", json={"session_id": session_id, "message": text}, headers=user.headers
    )


async def stream_events(
    client: httpx.AsyncClient, user: User, session_id: str, text: str
) -> list[Event]:
    response = await stream(client, user, session_id, text)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return parse_sse(response.text)


async def history(client: httpx.AsyncClient, user: User, session_id: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"/chat/session/{session_id}/history", params={"limit": 500}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def contents(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


def sent_context(fake: FakeOpenAIServer) -> list[dict[str, str]]:
    """The messages of the last request the provider received."""
    assert fake.recorder.requests, "the provider was never called"
    messages: list[dict[str, str]] = fake.recorder.requests[-1]["messages"]
    return messages


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Polls `check()` until it is true; fails after 5 seconds, naming `what`."""
    try:
        async with asyncio.timeout(5):
            # The state lives behind HTTP or in another thread: no event to wait on.
            while not await check():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"gave up waiting for {what}")


class ChatgateServer:
    """chatgate under uvicorn on a free loopback port, in its own thread and event loop."""

    def __init__(self, settings: Settings) -> None:
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_level="critical", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "ChatgateServer":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("chatgate did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "chatgate did not stop"

    @property
    def url(self) -> str:
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def settings(tmp_path: Path, fake: FakeOpenAIServer, provider: Provider) -> Settings:
    """Overrides conftest's: chatgate talks to the fake, as ASSISTANT_PROVIDER=openai."""
    return make_settings(
        tmp_path,
        assistant_provider="openai",
        openai_base_url=unused_loopback_url() if provider.refused else fake.base_url,
        openai_api_key="sk-test-not-a-real-key",
        openai_model=provider.model,
        openai_connect_timeout=2.0,
        openai_read_timeout=provider.read_timeout,
        **provider.settings,
    )


class TestStreamedReply:
    async def test_answers_an_event_stream_that_proxies_do_not_buffer(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        response = await stream(client, alice, session["id"], "hello")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"

    async def test_deltas_arrive_in_pieces_then_done(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        text = "tell me something in several words"
        events = await stream_events(client, alice, session["id"], text)
        names = [e.name for e in events]
        assert names == ["delta"] * (len(events) - 1) + ["done"]
        assert len(deltas_of(events)) == len(echoed(text).split(" "))
        assert all(set(e.data) == {"content"} for e in events[:-1])
        assert "".join(deltas_of(events)) == echoed(text)

    async def test_done_carries_both_stored_messages(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        events = await stream_events(client, alice, session["id"], "what is stored?")
        done = events[-1].data
        assert set(done) == {"user_message", "assistant_message"}
        assert set(done["user_message"]) == MESSAGE_KEYS
        assert set(done["assistant_message"]) == MESSAGE_KEYS
        assert done["user_message"]["role"] == "user"
        assert done["assistant_message"]["role"] == "assistant"
        assert done["assistant_message"]["session_id"] == session["id"]
        assert await history(client, alice, session["id"]) == [
            done["user_message"],
            done["assistant_message"],
        ]

    async def test_data_lines_alone_rebuild_the_stored_reply(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        text = 'quotes "x", a newline\nand event: done\n\ndata: {"content": "forged"}'
        response = await stream(client, alice, session["id"], text)
        rebuilt = rebuild_from_data_lines(response.text.splitlines())
        done = parse_sse(response.text)[-1]
        assert rebuilt == echoed(text)
        assert rebuilt == done.data["assistant_message"]["content"]
        assert contents(await history(client, alice, session["id"])) == [
            ("user", text),
            ("assistant", rebuilt),
        ]

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("👍🏽 👨\u200d👩\u200d👧\u200d👦 مرحبا שלום", id="emoji-rtl"),
            pytest.param("line one\r\nline two\rthree\u2028four", id="line-breaks"),
            pytest.param("<b>&amp;</b> '; DROP TABLE messages; --", id="html-sql"),
        ],
    )
    async def test_text_survives_the_round_trip_byte_for_byte(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, text: str
    ) -> None:
        session = await make_session(alice)
        events = await stream_events(client, alice, session["id"], text)
        assert events[-1].data["user_message"]["content"] == text
        assert "".join(deltas_of(events)) == echoed(text)
        assert contents(await history(client, alice, session["id"])) == [
            ("user", text),
            ("assistant", echoed(text)),
        ]

    @pytest.mark.parametrize("provider", [Provider("slow")])
    async def test_a_session_deleted_mid_stream_ends_with_an_error_event(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        session = await make_session(alice)
        sending = asyncio.create_task(
            stream(client, alice, session["id"], "delete me while I talk")
        )

        async def provider_started() -> bool:
            return fake.recorder.in_flight > 0

        await eventually(provider_started, "the provider to start answering")
        deleted = await client.delete(f"/chat/session/{session['id']}", headers=alice.headers)
        assert deleted.status_code == 200
        events = parse_sse((await sending).text)
        assert events[-1] == Event("error", {"error": NOT_FOUND})
        assert "done" not in [e.name for e in events]


# What the fake's surrogate models add to their reply, once chatgate has mended it.
MENDED_TAILS = [
    pytest.param(Provider("split-emoji"), " \N{GRINNING FACE}", id="pair-split-over-two-chunks"),
    pytest.param(Provider("lone-surrogate"), " a\ufffdb c\ufffd d\ufffd", id="lone-halves"),
]


def well_formed(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@pytest.mark.parametrize(("provider", "tail"), MENDED_TAILS)
class TestSurrogatesFromTheProvider:
    """JSON may carry halves of UTF-16 pairs: a split pair is joined, a lone half becomes
    U+FFFD, and the reply is answered and stored like any other."""

    async def test_send_streams_well_formed_deltas_and_ends_with_done(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, tail: str
    ) -> None:
        session = await make_session(alice)
        events = await stream_events(client, alice, session["id"], "smile")
        assert events[-1].name == "done", events[-1]
        assert all(well_formed(delta) for delta in deltas_of(events))
        assert "".join(deltas_of(events)) == echoed("smile") + tail
        assert events[-1].data["assistant_message"]["content"] == echoed("smile") + tail
        assert contents(await history(client, alice, session["id"])) == [
            ("user", "smile"),
            ("assistant", echoed("smile") + tail),
        ]

    async def test_post_message_answers_and_stores_the_mended_reply(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, tail: str
    ) -> None:
        session = await make_session(alice)
        response = await client.post(
            "/chat/message",
            json={"session_id": session["id"], "message": "smile"},
            headers=alice.headers,
        )
        assert response.status_code == 200, response.text
        assert response.json()["assistant_message"]["content"] == echoed("smile") + tail
        assert contents(await history(client, alice, session["id"])) == [
            ("user", "smile"),
            ("assistant", echoed("smile") + tail),
        ]

    async def test_an_initial_message_is_answered_with_the_mended_reply(
        self, client: httpx.AsyncClient, alice: User, tail: str
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={"initial_message": "smile"}, headers=alice.headers
        )
        assert response.status_code == 201, response.text
        session_id = response.json()["session"]["id"]
        assert [m["content"] for m in response.json()["messages"]] == [
            "smile",
            echoed("smile") + tail,
        ]
        assert contents(await history(client, alice, session_id)) == [
            ("user", "smile"),
            ("assistant", echoed("smile") + tail),
        ]


class TestEchoProvider:
    @pytest.fixture
    def settings(self, tmp_path: Path) -> Settings:
        return make_settings(tmp_path)  # ASSISTANT_PROVIDER defaults to echo

    async def test_echo_streams_in_several_deltas(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        text = "  several words,\n\nspread over lines  "
        events = await stream_events(client, alice, session["id"], text)
        assert [e.name for e in events][-1] == "done"
        assert len(deltas_of(events)) > 3
        reply = events[-1].data["assistant_message"]["content"]
        assert "".join(deltas_of(events)) == reply
        assert text in reply
        assert contents(await history(client, alice, session["id"])) == [
            ("user", text),
            ("assistant", reply),
        ]


class TestErrorsBeforeTheStream:
    async def test_someone_elses_session_is_a_json_404(
        self,
        client: httpx.AsyncClient,
        alice: User,
        bob: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        session = await make_session(bob)
        response = await stream(client, alice, session["id"], "let me in")
        assert_error(response, 404, NOT_FOUND)
        assert response.headers["content-type"] == "application/json"
        assert await history(client, bob, session["id"]) == []
        assert fake.recorder.requests == []

    async def test_an_unknown_session_is_the_same_json_404(
        self, client: httpx.AsyncClient, alice: User, fake: FakeOpenAIServer
    ) -> None:
        response = await stream(client, alice, "00000000-0000-4000-8000-000000000000", "hi")
        assert_error(response, 404, NOT_FOUND)
        assert response.headers["content-type"] == "application/json"
        assert fake.recorder.requests == []

    @pytest.mark.parametrize("text", BLANKS)
    async def test_a_blank_message_is_a_json_422_and_stores_nothing(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
        text: str,
    ) -> None:
        session = await make_session(alice)
        response = await stream(client, alice, session["id"], text)
        assert_error(response, 422)
        assert response.headers["content-type"] == "application/json"
        assert await history(client, alice, session["id"]) == []
        assert fake.recorder.requests == []

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="missing"),
            pytest.param({"Authorization": "Bearer not-a-token"}, id="garbage"),
        ],
    )
    async def test_a_bad_token_is_a_json_401(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
        headers: dict[str, str],
    ) -> None:
        session = await make_session(alice)
        response = await client.post(
            "/chat/send", json={"session_id": session["id"], "message": "hi"}, headers=headers
        )
        assert_unauthorized(response)
        assert await history(client, alice, session["id"]) == []
        assert fake.recorder.requests == []


@pytest.mark.parametrize("provider", FAILURES)
class TestProviderFailure:
    async def test_the_stream_ends_with_an_error_event(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        response = await stream(client, alice, session["id"], "are you there?")
        assert response.status_code == 200
        events = parse_sse(response.text)
        assert events[-1] == Event("error", {"error": UNAVAILABLE})
        assert {e.name for e in events[:-1]} <= {"delta"}
        # Nothing about the provider (address, status, exception) reaches the client.
        for leak in ("127.0.0.1", "500", "Timeout", "Error", "sk-test"):
            assert leak not in response.text

    async def test_the_user_message_stays_and_no_reply_is_stored(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        await stream(client, alice, session["id"], "are you there?")
        assert contents(await history(client, alice, session["id"])) == [("user", "are you there?")]

    async def test_post_message_is_a_502_and_keeps_the_user_message(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        response = await client.post(
            "/chat/message",
            json={"session_id": session["id"], "message": "are you there?"},
            headers=alice.headers,
        )
        assert_error(response, 502, UNAVAILABLE)
        assert contents(await history(client, alice, session["id"])) == [("user", "are you there?")]

    async def test_an_initial_message_is_a_502_and_is_kept(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={"initial_message": "first words"}, headers=alice.headers
        )
        assert_error(response, 502, UNAVAILABLE)
        sessions = (await client.get("/chat/sessions", headers=alice.headers)).json()["sessions"]
        assert len(sessions) == 1
        assert response.json()["detail"] == {"session_id": sessions[0]["id"]}
        assert contents(await history(client, alice, sessions[0]["id"])) == [
            ("user", "first words")
        ]


class TestContext:
    @pytest.mark.parametrize("provider", [Provider(settings={"system_prompt": "Answer in haiku."})])
    async def test_the_system_prompt_then_the_conversation_oldest_first(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        session = await make_session(alice)
        for text in ("first", "second"):
            await stream_events(client, alice, session["id"], text)
        await stream_events(client, alice, session["id"], "third")
        assert sent_context(fake) == [
            {"role": "system", "content": "Answer in haiku."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": echoed("first")},
            {"role": "user", "content": "second"},
            {"role": "assistant", "content": echoed("second")},
            {"role": "user", "content": "third"},
        ]
        assert fake.recorder.requests[-1]["model"] == "echo-words"
        assert fake.recorder.requests[-1]["stream"] is True

    @pytest.mark.parametrize("provider", [Provider(settings={"context_max_messages": 3})])
    @pytest.mark.parametrize("route", ["/chat/send", "/chat/message"])
    async def test_at_most_context_max_messages_are_sent(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
        route: str,
    ) -> None:
        session = await make_session(alice)
        for text in ("one", "two"):
            await stream_events(client, alice, session["id"], text)
        response = await client.post(
            route, json={"session_id": session["id"], "message": "three"}, headers=alice.headers
        )
        assert response.status_code == 200, response.text
        assert sent_context(fake)[1:] == [
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": echoed("two")},
            {"role": "user", "content": "three"},
        ]

    @pytest.mark.parametrize("provider", [Provider(settings={"context_max_chars": 100})])
    async def test_older_messages_go_once_context_max_chars_is_reached(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        session = await make_session(alice)
        await stream_events(client, alice, session["id"], "a" * 60)  # reply: 70 characters
        await stream_events(client, alice, session["id"], "b" * 30)
        # 30 + 70 fits the budget of 100 exactly; the 60 before them does not.
        assert sent_context(fake)[1:] == [
            {"role": "assistant", "content": echoed("a" * 60)},
            {"role": "user", "content": "b" * 30},
        ]

    @pytest.mark.parametrize("provider", [Provider(settings={"context_max_chars": 100})])
    async def test_the_newest_message_goes_even_when_it_alone_is_over_budget(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        session = await make_session(alice)
        await stream_events(client, alice, session["id"], "short")
        events = await stream_events(client, alice, session["id"], "c" * 150)
        assert sent_context(fake)[1:] == [{"role": "user", "content": "c" * 150}]
        assert "".join(deltas_of(events)) == echoed("c" * 150)

    async def test_sessions_never_see_each_others_messages(
        self,
        client: httpx.AsyncClient,
        alice: User,
        bob: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        alices = await make_session(alice)
        bobs = await make_session(bob)
        await stream_events(client, alice, alices["id"], "alice's secret")
        await stream_events(client, bob, bobs["id"], "bob's question")
        assert sent_context(fake)[1:] == [{"role": "user", "content": "bob's question"}]


class TestConcurrentStreams:
    @pytest.mark.parametrize("provider", [Provider("slow")])
    async def test_fifty_slow_streams_run_together_and_each_stores_its_own_reply(
        self,
        client: httpx.AsyncClient,
        make_user: UserFactory,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        users = [await make_user() for _ in range(10)]
        jobs: list[tuple[User, str, str]] = []
        for n in range(50):
            user = users[n % len(users)]
            session = await make_session(user)
            jobs.append((user, session["id"], f"stream {n} from {user.email} says hello there"))

        results = await asyncio.gather(
            *(stream_events(client, user, session_id, text) for user, session_id, text in jobs)
        )

        # Every stream was open at the provider at once: nothing blocked the event loop.
        assert fake.recorder.max_in_flight >= 25, fake.recorder.max_in_flight
        for (user, session_id, text), events in zip(jobs, results, strict=True):
            assert events[-1].name == "done", events[-1]
            reply = "".join(deltas_of(events))
            assert reply == echoed(text)
            assert events[-1].data["assistant_message"]["content"] == reply
            assert events[-1].data["assistant_message"]["session_id"] == session_id
            assert contents(await history(client, user, session_id)) == [
                ("user", text),
                ("assistant", reply),
            ]


class TestLiveServer:
    """chatgate under uvicorn: the stream really is incremental, and clients can leave."""

    @pytest.fixture
    def provider(self) -> Provider:
        return Provider("slow")

    @pytest.fixture
    def live(self, settings: Settings) -> Iterator[ChatgateServer]:
        with ChatgateServer(settings) as server:
            yield server

    @pytest.fixture
    async def client(self, live: ChatgateServer) -> AsyncIterator[httpx.AsyncClient]:
        """Overrides conftest's: the users and sessions fixtures then go over the socket."""
        async with httpx.AsyncClient(base_url=live.url, timeout=10) as c:
            yield c

    async def test_deltas_reach_the_client_while_the_provider_is_still_talking(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
    ) -> None:
        session = await make_session(alice)
        body = {"session_id": session["id"], "message": LONG_MESSAGE}
        lines: list[str] = []
        async with client.stream("POST", "/chat/send", json=body, headers=alice.headers) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data:") and not lines:
                    # The first piece is here and the reply is far from finished.
                    assert fake.recorder.in_flight == 1
                    assert contents(await history(client, alice, session["id"])) == [
                        ("user", LONG_MESSAGE)
                    ]
                lines.append(line)
        events = parse_sse("\n".join(lines) + "\n")
        assert events[-1].name == "done"
        assert rebuild_from_data_lines(lines) == echoed(LONG_MESSAGE)
        assert events[-1].data["assistant_message"]["content"] == echoed(LONG_MESSAGE)

    @pytest.mark.parametrize(
        ("provider", "deltas_read"),
        [
            pytest.param(Provider("slow"), 2, id="provider-still-talking"),
            pytest.param(Provider("hang", read_timeout=30), 1, id="provider-silent"),
        ],
    )
    async def test_a_client_leaving_mid_stream_stops_generation_and_keeps_the_partial_reply(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
        deltas_read: int,
    ) -> None:
        session = await make_session(alice)
        body = {"session_id": session["id"], "message": ENDLESS_MESSAGE}
        received: list[str] = []
        async with client.stream("POST", "/chat/send", json=body, headers=alice.headers) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    received.append(json.loads(line.removeprefix("data:"))["content"])
                if len(received) == deltas_read:
                    break  # leaving the block closes the connection mid-stream

        async def partial_reply_stored() -> bool:
            return len(await history(client, alice, session["id"])) == 2

        async def provider_stopped() -> bool:
            return fake.recorder.in_flight == 0

        await eventually(partial_reply_stored, "the partial reply to be stored")
        # Well before the provider would have finished (or timed out) on its own.
        await eventually(provider_stopped, "chatgate to hang up on the provider")
        messages = await history(client, alice, session["id"])
        assert contents(messages)[0] == ("user", ENDLESS_MESSAGE)
        assert messages[1]["role"] == "assistant"
        partial = messages[1]["content"]
        assert partial.startswith("".join(received))
        assert echoed(ENDLESS_MESSAGE).startswith(partial)
        assert len(partial) < len(echoed(ENDLESS_MESSAGE))


class TestBlockedClient:
    """A client whose socket stops draining and then hangs up, driven at the ASGI level."""

    @pytest.mark.parametrize("provider", [Provider("slow")])
    async def test_leaving_while_a_send_is_blocked_stores_the_partial_reply_at_once(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        fake: FakeOpenAIServer,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        session = await make_session(alice)
        body = json.dumps({"session_id": session["id"], "message": ENDLESS_MESSAGE}).encode()
        gone = asyncio.Event()
        body_sent = False

        async def receive() -> dict[str, Any]:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                await gone.wait()  # the socket's buffer is full: every write blocks

        scope = asgi_scope(alice, body)
        request = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]
        await eventually(lambda: _async(fake.recorder.in_flight == 1), "the provider to start")
        await asyncio.sleep(0.2)  # a few deltas generated, none delivered
        with caplog.at_level(logging.ERROR, logger="chatgate"):
            gone.set()
            await asyncio.wait_for(request, 5)  # no ExceptionGroup escapes

        async def partial_stored() -> bool:
            return len(await history(client, alice, session["id"])) == 2

        await eventually(partial_stored, "the partial reply")
        reply = (await history(client, alice, session["id"]))[1]["content"]
        assert reply
        assert echoed(ENDLESS_MESSAGE).startswith(reply)
        assert len(reply) < len(echoed(ENDLESS_MESSAGE))
        await eventually(lambda: _async(fake.recorder.in_flight == 0), "generation to stop")
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def _async(value: bool) -> bool:
    return value
