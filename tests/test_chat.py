"""Chat sessions and messages over HTTP: shapes, text fidelity, paging, ownership, concurrency."""

import asyncio
import base64
import re
import sqlite3
import uuid
from collections.abc import AsyncGenerator, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from app.services.assistant import Turn
from tests.conftest import SessionFactory
from tests.helpers import User, assert_error, assert_unauthorized, sse_events

NOT_FOUND = "Session not found or access denied"
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
SESSION_KEYS = {"id", "title", "created_at", "updated_at", "message_count"}
MESSAGE_KEYS = {"id", "session_id", "role", "content", "created_at"}

# Every route that acts on one session; "{id}" is replaced by the session's id.
SESSION_ROUTES = [
    pytest.param("GET", "/chat/session/{id}", None, id="read"),
    pytest.param("GET", "/chat/session/{id}/history", None, id="history"),
    pytest.param("PATCH", "/chat/session/{id}", {"title": "Taken over"}, id="rename"),
    pytest.param("DELETE", "/chat/session/{id}", None, id="delete"),
    pytest.param("POST", "/chat/message", {"session_id": "{id}", "message": "hi"}, id="message"),
    pytest.param("POST", "/chat/send", {"session_id": "{id}", "message": "hi"}, id="send"),
]
ALL_ROUTES = [
    pytest.param("POST", "/chat/session/new", {"title": "T"}, id="create"),
    pytest.param("GET", "/chat/sessions", None, id="list"),
    *SESSION_ROUTES,
]

BLANKS = [
    pytest.param("", id="empty"),
    pytest.param(" ", id="space"),
    pytest.param("\n\t", id="newline-tab"),
    pytest.param("\r\n \u00a0\u2003\u3000", id="unicode-spaces"),
]
WRONG_TYPES = [
    pytest.param(42, id="int"),
    pytest.param(["hi"], id="list"),
    pytest.param({"text": "hi"}, id="object"),
    pytest.param(True, id="bool"),
]

TRICKY_TEXTS = [
    pytest.param("She said \"hi\" and 'bye' `x`", id="quotes"),
    pytest.param("'; DROP TABLE messages; --", id="sql"),
    pytest.param("<script>alert('x')</script><b onclick=\"x()\">&amp;</b>", id="html"),
    pytest.param("👍🏽 👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 🧑🏿\u200d💻", id="emoji-zwj"),
    pytest.param("مرحبا بالعالم \u200f שלום עולם 123", id="rtl"),
    pytest.param("  \n\tpadded both sides\t \n\n", id="surrounding-whitespace"),
    pytest.param("line one\r\nline two\rline three\n", id="line-endings"),
    pytest.param("before\u0000after", id="nul"),
    pytest.param("cafe\u0301 n\u0303 a\u0308\u0304 Z\u0351\u0324\u0347", id="combining"),
    pytest.param('C:\\path\\n \\u0041 %s {0} ${x} "\\"', id="backslashes-and-escapes"),
    pytest.param("\u202e\ufeffzero\u200bwidth\u2028sep", id="invisible-controls"),
]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def fill(value: Any, session_id: str) -> Any:
    if isinstance(value, str):
        return value.replace("{id}", session_id)
    if isinstance(value, dict):
        return {k: fill(v, session_id) for k, v in value.items()}
    return value


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    session_id: str,
    headers: dict[str, str],
) -> httpx.Response:
    return await client.request(
        method, fill(path, session_id), json=fill(body, session_id), headers=headers
    )


async def send(client: httpx.AsyncClient, user: User, session_id: str, text: str) -> dict[str, Any]:
    response = await client.post(
        "/chat/message", json={"session_id": session_id, "message": text}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def read_session(client: httpx.AsyncClient, user: User, session_id: str) -> dict[str, Any]:
    response = await client.get(f"/chat/session/{session_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    session: dict[str, Any] = response.json()["session"]
    return session


async def history(client: httpx.AsyncClient, user: User, session_id: str) -> list[dict[str, Any]]:
    response = await client.get(
        f"/chat/session/{session_id}/history", params={"limit": 500}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


async def list_sessions(client: httpx.AsyncClient, user: User) -> list[dict[str, Any]]:
    response = await client.get("/chat/sessions", params={"limit": 100}, headers=user.headers)
    assert response.status_code == 200, response.text
    sessions: list[dict[str, Any]] = response.json()["sessions"]
    return sessions


async def snapshot(
    client: httpx.AsyncClient, user: User, session_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return await read_session(client, user, session_id), await history(client, user, session_id)


def assert_uuid(value: object) -> None:
    """A random UUID in its canonical text form: opaque, never sequential."""
    assert isinstance(value, str)
    assert str(uuid.UUID(value)) == value
    assert uuid.UUID(value).version == 4


def assert_timestamp(value: object) -> None:
    assert isinstance(value, str)
    assert TIMESTAMP.fullmatch(value), value
    assert datetime.fromisoformat(value).utcoffset() is not None


def assert_session_shape(session: dict[str, Any]) -> None:
    assert set(session) == SESSION_KEYS
    assert_uuid(session["id"])
    assert isinstance(session["title"], str)
    assert session["title"].strip()
    assert_timestamp(session["created_at"])
    assert_timestamp(session["updated_at"])
    assert type(session["message_count"]) is int


def assert_message_shape(message: dict[str, Any], session_id: str, role: str) -> None:
    assert set(message) == MESSAGE_KEYS
    assert_uuid(message["id"])
    assert message["session_id"] == session_id
    assert message["role"] == role
    assert isinstance(message["content"], str)
    assert_timestamp(message["created_at"])


class TestCreateSession:
    async def test_answers_201_with_an_empty_session(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        response = await client.post("/chat/session/new", json={}, headers=alice.headers)
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == {"success", "session", "messages"}
        assert body["success"] is True
        assert body["messages"] == []
        assert_session_shape(body["session"])
        assert body["session"]["message_count"] == 0

    async def test_works_without_any_body(self, client: httpx.AsyncClient, alice: User) -> None:
        response = await client.post("/chat/session/new", headers=alice.headers)
        assert response.status_code == 201, response.text
        assert_session_shape(response.json()["session"])
        assert response.json()["messages"] == []

    async def test_a_null_title_gets_the_default(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        untitled = await client.post("/chat/session/new", json={}, headers=alice.headers)
        null = await client.post("/chat/session/new", json={"title": None}, headers=alice.headers)
        assert null.status_code == 201, null.text
        assert null.json()["session"]["title"] == untitled.json()["session"]["title"]

    @pytest.mark.parametrize(
        "title", ["Trip to Lisbon", "  spaced  ", "Ünïcödé 🎉 «titre»", "x" * 200]
    )
    async def test_a_given_title_is_kept_exactly(
        self, client: httpx.AsyncClient, alice: User, title: str
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={"title": title}, headers=alice.headers
        )
        assert response.status_code == 201, response.text
        session = response.json()["session"]
        assert session["title"] == title
        assert (await read_session(client, alice, session["id"]))["title"] == title

    async def test_an_initial_message_is_stored_and_answered(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        response = await client.post(
            "/chat/session/new",
            json={"title": "Q", "initial_message": "What is the capital of France?"},
            headers=alice.headers,
        )
        assert response.status_code == 201, response.text
        session, messages = response.json()["session"], response.json()["messages"]
        assert_session_shape(session)
        assert session["message_count"] == 2
        assert len(messages) == 2
        user_message, reply = messages
        assert_message_shape(user_message, session["id"], "user")
        assert_message_shape(reply, session["id"], "assistant")
        assert user_message["content"] == "What is the capital of France?"
        assert "What is the capital of France?" in reply["content"]
        assert await history(client, alice, session["id"]) == messages

    async def test_timestamps_are_utc_and_activity_is_not_before_creation(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={"initial_message": "hi"}, headers=alice.headers
        )
        session = response.json()["session"]
        created = datetime.fromisoformat(session["created_at"])
        updated = datetime.fromisoformat(session["updated_at"])
        assert created.utcoffset() == updated.utcoffset() == timedelta(0)
        assert updated >= created

    @pytest.mark.parametrize("field", ["title", "initial_message"])
    @pytest.mark.parametrize("blank", BLANKS)
    async def test_a_blank_title_or_initial_message_is_a_422(
        self, client: httpx.AsyncClient, alice: User, field: str, blank: str
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={field: blank}, headers=alice.headers
        )
        assert_error(response, 422)
        assert await list_sessions(client, alice) == []

    async def test_a_title_over_200_characters_is_a_422(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={"title": "x" * 201}, headers=alice.headers
        )
        assert_error(response, 422)
        assert await list_sessions(client, alice) == []

    @pytest.mark.parametrize("value", WRONG_TYPES)
    async def test_a_title_of_the_wrong_type_is_a_422(
        self, client: httpx.AsyncClient, alice: User, value: object
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={"title": value}, headers=alice.headers
        )
        assert_error(response, 422)


class TestSendMessage:
    async def test_answers_with_the_stored_pair(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        body = await send(client, alice, session["id"], "Hello there")
        assert set(body) == {"success", "session_id", "user_message", "assistant_message"}
        assert body["success"] is True
        assert body["session_id"] == session["id"]
        assert_message_shape(body["user_message"], session["id"], "user")
        assert_message_shape(body["assistant_message"], session["id"], "assistant")
        assert body["user_message"]["content"] == "Hello there"
        assert "Hello there" in body["assistant_message"]["content"]
        assert body["user_message"]["id"] != body["assistant_message"]["id"]
        assert await history(client, alice, session["id"]) == [
            body["user_message"],
            body["assistant_message"],
        ]
        assert (await read_session(client, alice, session["id"]))["message_count"] == 2

    async def test_an_unknown_session_is_a_404(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        response = await client.post(
            "/chat/message",
            json={"session_id": str(uuid.uuid4()), "message": "hi"},
            headers=alice.headers,
        )
        assert_error(response, 404, NOT_FOUND)

    async def test_someone_elses_session_is_a_404_and_stays_unchanged(
        self, client: httpx.AsyncClient, alice: User, bob: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(bob, initial_message="bob's secret")
        before = await snapshot(client, bob, session["id"])
        response = await client.post(
            "/chat/message",
            json={"session_id": session["id"], "message": "alice was here"},
            headers=alice.headers,
        )
        assert_error(response, 404, NOT_FOUND)
        assert "bob's secret" not in response.text
        assert await snapshot(client, bob, session["id"]) == before

    @pytest.mark.parametrize("text", BLANKS)
    async def test_an_empty_or_whitespace_message_is_a_422(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, text: str
    ) -> None:
        session = await make_session(alice)
        response = await client.post(
            "/chat/message",
            json={"session_id": session["id"], "message": text},
            headers=alice.headers,
        )
        assert_error(response, 422)
        assert await history(client, alice, session["id"]) == []

    @pytest.mark.parametrize("field", ["message", "session_id"])
    @pytest.mark.parametrize("value", [*WRONG_TYPES, pytest.param(None, id="null")])
    async def test_a_field_of_the_wrong_type_is_a_422(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        field: str,
        value: object,
    ) -> None:
        session = await make_session(alice)
        body: dict[str, object] = {"session_id": session["id"], "message": "hi", field: value}
        response = await client.post("/chat/message", json=body, headers=alice.headers)
        assert_error(response, 422)
        assert await history(client, alice, session["id"]) == []

    @pytest.mark.parametrize("missing", ["message", "session_id"])
    async def test_a_missing_field_is_a_422(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, missing: str
    ) -> None:
        session = await make_session(alice)
        body = {"session_id": session["id"], "message": "hi"}
        del body[missing]
        assert_error(await client.post("/chat/message", json=body, headers=alice.headers), 422)

    async def test_a_message_over_32000_characters_is_a_422(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        response = await client.post(
            "/chat/message",
            json={"session_id": session["id"], "message": "a" * 32_001},
            headers=alice.headers,
        )
        assert_error(response, 422)
        assert await history(client, alice, session["id"]) == []

    async def test_a_message_of_exactly_32000_characters_is_accepted(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        text = "🙂" * 32_000  # counted in characters, not bytes
        body = await send(client, alice, session["id"], text)
        assert body["user_message"]["content"] == text

    async def test_a_text_plain_body_is_a_415(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        raw = f'{{"session_id": "{session["id"]}", "message": "hi"}}'.encode()
        response = await client.post(
            "/chat/message",
            content=raw,
            headers={**alice.headers, "content-type": "text/plain"},
        )
        assert_error(response, 415)
        assert await history(client, alice, session["id"]) == []


class TestTextFidelity:
    @pytest.mark.parametrize("text", TRICKY_TEXTS)
    async def test_a_message_comes_back_byte_for_byte(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, text: str
    ) -> None:
        session = await make_session(alice)
        body = await send(client, alice, session["id"], text)
        assert body["user_message"]["content"] == text
        assert text in body["assistant_message"]["content"]
        stored = await history(client, alice, session["id"])
        assert stored[0]["content"].encode("utf-8") == text.encode("utf-8")
        assert stored[1]["content"] == body["assistant_message"]["content"]

    @pytest.mark.parametrize("text", TRICKY_TEXTS)
    async def test_an_initial_message_comes_back_byte_for_byte(
        self, client: httpx.AsyncClient, alice: User, text: str
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={"initial_message": text}, headers=alice.headers
        )
        assert response.status_code == 201, response.text
        assert response.json()["messages"][0]["content"] == text
        stored = await history(client, alice, response.json()["session"]["id"])
        assert stored[0]["content"] == text

    @pytest.mark.parametrize("title", TRICKY_TEXTS)
    async def test_a_title_comes_back_byte_for_byte(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, title: str
    ) -> None:
        session = await make_session(alice)
        response = await client.patch(
            f"/chat/session/{session['id']}", json={"title": title}, headers=alice.headers
        )
        assert response.status_code == 200, response.text
        assert response.json()["session"]["title"] == title
        assert (await read_session(client, alice, session["id"]))["title"] == title


class TestListSessions:
    async def test_answers_the_envelope_with_count(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        for _ in range(3):
            await make_session(alice)
        response = await client.get("/chat/sessions", headers=alice.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"success", "sessions", "count", "next_cursor"}
        assert body["success"] is True
        assert body["count"] == len(body["sessions"]) == 3
        assert body["next_cursor"] is None
        for session in body["sessions"]:
            assert_session_shape(session)

    async def test_a_new_user_has_no_sessions(self, client: httpx.AsyncClient, alice: User) -> None:
        response = await client.get("/chat/sessions", headers=alice.headers)
        assert response.json() == {"success": True, "sessions": [], "count": 0, "next_cursor": None}

    async def test_newest_activity_comes_first(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        first, second, third = [await make_session(alice, title=t) for t in ("1", "2", "3")]
        ids = [s["id"] for s in await list_sessions(client, alice)]
        assert ids == [third["id"], second["id"], first["id"]]

        await send(client, alice, first["id"], "bump")
        listed = await list_sessions(client, alice)
        assert [s["id"] for s in listed] == [first["id"], third["id"], second["id"]]
        assert listed[0]["message_count"] == 2
        stamps = [datetime.fromisoformat(s["updated_at"]) for s in listed]
        assert stamps == sorted(stamps, reverse=True)

    async def test_users_see_only_their_own_sessions(
        self, client: httpx.AsyncClient, alice: User, bob: User, make_session: SessionFactory
    ) -> None:
        alices = {(await make_session(alice))["id"] for _ in range(2)}
        bobs = {(await make_session(bob))["id"] for _ in range(3)}
        assert {s["id"] for s in await list_sessions(client, alice)} == alices
        assert {s["id"] for s in await list_sessions(client, bob)} == bobs

    @pytest.mark.parametrize("limit", [1, 100])
    async def test_limits_at_the_bounds_are_accepted(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, limit: int
    ) -> None:
        for _ in range(2):
            await make_session(alice)
        response = await client.get(
            "/chat/sessions", params={"limit": limit}, headers=alice.headers
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["count"] == len(body["sessions"]) == min(limit, 2)
        assert (body["next_cursor"] is None) == (limit >= 2)

    @pytest.mark.parametrize("limit", [0, 101, -1])
    async def test_limits_out_of_bounds_are_a_422(
        self, client: httpx.AsyncClient, alice: User, limit: int
    ) -> None:
        response = await client.get(
            "/chat/sessions", params={"limit": limit}, headers=alice.headers
        )
        assert_error(response, 422)

    @pytest.mark.parametrize("total", [9, 10])
    async def test_pages_have_no_gaps_or_duplicates(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, total: int
    ) -> None:
        created = [(await make_session(alice, title=f"s{i}"))["id"] for i in range(total)]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 3}
            if cursor is not None:
                params["cursor"] = cursor
            response = await client.get("/chat/sessions", params=params, headers=alice.headers)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["count"] == len(body["sessions"]) <= 3
            seen += [s["id"] for s in body["sessions"]]
            pages += 1
            cursor = body["next_cursor"]
            if cursor is None:
                break
            assert body["count"] == 3
            assert pages < 10
        assert seen == list(reversed(created))
        assert pages == -(-total // 3)

    async def test_a_session_bumped_between_pages_is_not_repeated(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        created = [(await make_session(alice))["id"] for _ in range(6)]
        first = await client.get("/chat/sessions", params={"limit": 3}, headers=alice.headers)
        first_ids = [s["id"] for s in first.json()["sessions"]]
        await send(client, alice, created[0], "bump the oldest")
        rest = await client.get(
            "/chat/sessions",
            params={"limit": 3, "cursor": first.json()["next_cursor"]},
            headers=alice.headers,
        )
        rest_ids = [s["id"] for s in rest.json()["sessions"]]
        assert first_ids == [created[5], created[4], created[3]]
        assert rest_ids == [created[2], created[1]]

    @pytest.mark.parametrize(
        "cursor",
        [
            pytest.param("garbage!!", id="garbage"),
            pytest.param("%%%", id="percent"),
            pytest.param("=", id="padding-only"),
            pytest.param("é", id="non-ascii"),
            pytest.param("A" * 501, id="too-long"),
            pytest.param(b64(b"\xff\xfe\x00"), id="not-utf8"),
            pytest.param(b64(b"not json"), id="not-json"),
            pytest.param(b64(b'{"updated_at": "x", "id": "y"}'), id="object"),
            pytest.param(b64(b'"just a string"'), id="string"),
            pytest.param(b64(b"[]"), id="empty-list"),
            pytest.param(b64(b'["2026-01-01T00:00:00.000000Z"]'), id="one-part"),
            pytest.param(b64(b'["a", "b", "c"]'), id="three-parts"),
            pytest.param(b64(b"[1, 2]"), id="ints"),
            pytest.param(b64(b'["x", null]'), id="null-part"),
            pytest.param(b64(b"[5]"), id="history-cursor"),
            pytest.param(b64(b'["\\ud800", "x"]'), id="lone-high-surrogate"),
            pytest.param(b64(b'["2026-01-01T00:00:00Z", "\\udfff"]'), id="lone-low-surrogate"),
            pytest.param(b64(b"[NaN, Infinity]"), id="non-finite"),
            pytest.param(b64(b"[" * 150 + b"]" * 150), id="deeply-nested"),
        ],
    )
    async def test_an_invalid_cursor_is_a_422_envelope(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, cursor: str
    ) -> None:
        await make_session(alice)
        response = await client.get(
            "/chat/sessions", params={"cursor": cursor}, headers=alice.headers
        )
        assert_error(response, 422)


class TestReadSession:
    async def test_answers_the_session(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice, title="Mine")
        response = await client.get(f"/chat/session/{session['id']}", headers=alice.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True, "session": session}

    async def test_message_count_follows_the_conversation(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        for n in range(1, 4):
            await send(client, alice, session["id"], f"message {n}")
            assert (await read_session(client, alice, session["id"]))["message_count"] == 2 * n


class TestReadHistory:
    async def test_an_empty_session_has_an_empty_history(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        response = await client.get(f"/chat/session/{session['id']}/history", headers=alice.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "success": True,
            "session_id": session["id"],
            "messages": [],
            "next_cursor": None,
        }

    async def test_messages_come_oldest_first(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        texts = ["one", "two", "three"]
        for text in texts:
            await send(client, alice, session["id"], text)
        messages = await history(client, alice, session["id"])
        assert [m["role"] for m in messages] == ["user", "assistant"] * 3
        assert [m["content"] for m in messages[::2]] == texts
        for user_message, reply in zip(messages[::2], messages[1::2], strict=True):
            assert user_message["content"] in reply["content"]
        stamps = [datetime.fromisoformat(m["created_at"]) for m in messages]
        assert stamps == sorted(stamps)

    @pytest.mark.parametrize("limit", [1, 3, 7, 14, 500])
    async def test_pages_walk_every_message_once_in_order(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, limit: int
    ) -> None:
        session = await make_session(alice)
        for n in range(7):
            await send(client, alice, session["id"], f"m{n}")
        everything = await history(client, alice, session["id"])
        assert len(everything) == 14

        walked: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(20):
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            response = await client.get(
                f"/chat/session/{session['id']}/history", params=params, headers=alice.headers
            )
            assert response.status_code == 200, response.text
            page = response.json()
            assert len(page["messages"]) <= limit
            walked += page["messages"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert len(page["messages"]) == limit
        assert cursor is None
        assert walked == everything

    @pytest.mark.parametrize("limit", [0, 501, -5])
    async def test_limits_out_of_bounds_are_a_422(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, limit: int
    ) -> None:
        session = await make_session(alice)
        response = await client.get(
            f"/chat/session/{session['id']}/history", params={"limit": limit}, headers=alice.headers
        )
        assert_error(response, 422)

    @pytest.mark.parametrize(
        "cursor",
        [
            pytest.param("garbage!!", id="garbage"),
            pytest.param("A" * 501, id="too-long"),
            pytest.param(b64(b"not json"), id="not-json"),
            pytest.param(b64(b'{"seq": 1}'), id="object"),
            pytest.param(b64(b"[]"), id="empty-list"),
            pytest.param(b64(b'["1"]'), id="string-position"),
            pytest.param(b64(b"[1.5]"), id="float"),
            pytest.param(b64(b"[true]"), id="bool"),
            pytest.param(b64(b"[-1]"), id="negative"),
            pytest.param(b64(b"[99999999999999999999999]"), id="huge"),
            pytest.param(b64(b"[1, 2]"), id="two-parts"),
            pytest.param(b64(b'["\\ud800"]'), id="lone-surrogate"),
            pytest.param(b64(b'["2026-01-01T00:00:00Z", "x"]'), id="session-cursor"),
        ],
    )
    async def test_an_invalid_cursor_is_a_422_envelope(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, cursor: str
    ) -> None:
        session = await make_session(alice, initial_message="hi")
        response = await client.get(
            f"/chat/session/{session['id']}/history",
            params={"cursor": cursor},
            headers=alice.headers,
        )
        assert_error(response, 422)


class TestRenameSession:
    async def test_the_new_title_shows_everywhere(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice, title="Old")
        response = await client.patch(
            f"/chat/session/{session['id']}", json={"title": "New"}, headers=alice.headers
        )
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"success", "session"}
        renamed = response.json()["session"]
        assert_session_shape(renamed)
        assert renamed["id"] == session["id"]
        assert renamed["title"] == "New"
        assert renamed["created_at"] == session["created_at"]
        assert (await read_session(client, alice, session["id"]))["title"] == "New"
        assert [s["title"] for s in await list_sessions(client, alice)] == ["New"]

    @pytest.mark.parametrize(
        "body",
        [
            pytest.param({"title": ""}, id="empty"),
            pytest.param({"title": "   "}, id="spaces"),
            pytest.param({"title": "\n\t"}, id="whitespace"),
            pytest.param({"title": "x" * 201}, id="too-long"),
            pytest.param({"title": None}, id="null"),
            pytest.param({"title": 7}, id="int"),
            pytest.param({}, id="missing"),
        ],
    )
    async def test_an_invalid_title_is_a_422_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        body: dict[str, Any],
    ) -> None:
        session = await make_session(alice, title="Keep me")
        response = await client.patch(
            f"/chat/session/{session['id']}", json=body, headers=alice.headers
        )
        assert_error(response, 422)
        assert await read_session(client, alice, session["id"]) == session

    async def test_a_text_plain_body_is_a_415(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice, title="Keep me")
        response = await client.patch(
            f"/chat/session/{session['id']}",
            content=b'{"title": "New"}',
            headers={**alice.headers, "content-type": "text/plain"},
        )
        assert_error(response, 415)
        assert (await read_session(client, alice, session["id"]))["title"] == "Keep me"


class TestDeleteSession:
    async def test_answers_success(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice, initial_message="bye")
        response = await client.delete(f"/chat/session/{session['id']}", headers=alice.headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"success": True}
        assert await list_sessions(client, alice) == []

    @pytest.mark.parametrize(("method", "path", "body"), SESSION_ROUTES)
    async def test_a_deleted_session_is_a_404_everywhere(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        session = await make_session(alice, initial_message="soon gone")
        deleted = await client.delete(f"/chat/session/{session['id']}", headers=alice.headers)
        assert deleted.status_code == 200, deleted.text
        response = await call(client, method, path, body, session["id"], alice.headers)
        assert_error(response, 404, NOT_FOUND)

    async def test_only_that_session_and_its_messages_go(
        self, client: httpx.AsyncClient, alice: User, bob: User, make_session: SessionFactory
    ) -> None:
        doomed = await make_session(alice, initial_message="doomed")
        await send(client, alice, doomed["id"], "doomed too")
        kept = await make_session(alice, initial_message="kept")
        bobs = await make_session(bob, initial_message="bob's")
        kept_before = await snapshot(client, alice, kept["id"])
        bobs_before = await snapshot(client, bob, bobs["id"])

        response = await client.delete(f"/chat/session/{doomed['id']}", headers=alice.headers)
        assert response.status_code == 200, response.text

        assert_error(
            await client.get(f"/chat/session/{doomed['id']}/history", headers=alice.headers),
            404,
            NOT_FOUND,
        )
        assert await snapshot(client, alice, kept["id"]) == kept_before
        assert await snapshot(client, bob, bobs["id"]) == bobs_before
        assert [s["id"] for s in await list_sessions(client, alice)] == [kept["id"]]
        fresh = await make_session(bob)
        assert fresh["message_count"] == 0
        assert await history(client, bob, fresh["id"]) == []
        assert {s["id"] for s in await list_sessions(client, bob)} == {bobs["id"], fresh["id"]}


class TestOwnership:
    @pytest.mark.parametrize(("method", "path", "body"), SESSION_ROUTES)
    async def test_someone_elses_session_looks_exactly_like_a_missing_one(
        self,
        client: httpx.AsyncClient,
        alice: User,
        bob: User,
        make_session: SessionFactory,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        session = await make_session(alice, title="Alice's", initial_message="private")
        before = await snapshot(client, alice, session["id"])

        foreign = await call(client, method, path, body, session["id"], bob.headers)
        missing = await call(client, method, path, body, str(uuid.uuid4()), bob.headers)
        not_a_uuid = await call(client, method, path, body, "not-a-uuid", bob.headers)

        assert_error(foreign, 404, NOT_FOUND)
        assert (foreign.status_code, foreign.json()) == (missing.status_code, missing.json())
        assert (foreign.status_code, foreign.json()) == (not_a_uuid.status_code, not_a_uuid.json())
        assert "private" not in foreign.text
        assert await snapshot(client, alice, session["id"]) == before
        assert await list_sessions(client, bob) == []

    @pytest.mark.parametrize(
        "session_id",
        [
            pytest.param("1", id="small-int"),
            pytest.param("' OR '1'='1", id="sql"),
            pytest.param("%", id="percent"),
            pytest.param("ä" * 10, id="non-ascii"),
            pytest.param("x" * 200, id="long"),
        ],
    )
    async def test_odd_ids_are_a_plain_404(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory, session_id: str
    ) -> None:
        await make_session(alice)
        response = await client.get(
            f"/chat/session/{quote(session_id, safe='')}", headers=alice.headers
        )
        assert_error(response, 404, NOT_FOUND)


class TestAuthentication:
    @pytest.mark.parametrize(("method", "path", "body"), ALL_ROUTES)
    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="no-token"),
            pytest.param({"Authorization": "Bearer not-a-token"}, id="bad-token"),
        ],
    )
    async def test_every_chat_route_needs_a_token(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
    ) -> None:
        session = await make_session(alice, initial_message="mine")
        before = await snapshot(client, alice, session["id"])
        response = await call(client, method, path, body, session["id"], headers)
        assert_unauthorized(response)
        assert "mine" not in response.text
        assert await snapshot(client, alice, session["id"]) == before
        assert len(await list_sessions(client, alice)) == 1

    def test_the_route_list_above_is_every_chat_route(self) -> None:
        """The chat router has no router-wide token check (docs/performance.md): each
        route depends on get_current_user_id itself, and ALL_ROUTES must cover them."""
        from app.routes.chat import router

        declared = {(m, r.path) for r in router.routes for m in getattr(r, "methods", ())}
        listed = {(p.values[0], p.values[1]) for p in ALL_ROUTES}
        assert declared == {(m, path.replace("{id}", "{session_id}")) for m, path in listed}


class TestConcurrency:
    async def test_concurrent_messages_into_one_session_all_land_once(
        self, client: httpx.AsyncClient, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        texts = [f"concurrent message {n:02d}" for n in range(40)]
        responses = await asyncio.gather(
            *(
                client.post(
                    "/chat/message",
                    json={"session_id": session["id"], "message": text},
                    headers=alice.headers,
                )
                for text in texts
            )
        )
        for text, response in zip(texts, responses, strict=True):
            assert response.status_code == 200, response.text
            assert response.json()["user_message"]["content"] == text
            assert text in response.json()["assistant_message"]["content"]

        messages = await history(client, alice, session["id"])
        assert len(messages) == 80
        assert len({m["id"] for m in messages}) == 80
        user_texts = [m["content"] for m in messages if m["role"] == "user"]
        assert sorted(user_texts) == texts
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert len(replies) == 40
        for text in texts:
            assert sum(text in reply for reply in replies) == 1
        assert (await read_session(client, alice, session["id"]))["message_count"] == 80

    async def test_concurrent_users_write_only_into_their_own_sessions(
        self, client: httpx.AsyncClient, alice: User, bob: User, make_session: SessionFactory
    ) -> None:
        owners = [alice, alice, bob, bob]
        sessions = [(await make_session(owner))["id"] for owner in owners]
        jobs = [
            (owner, session_id, f"{owner.email} in {session_id} #{n}")
            for n in range(8)
            for owner, session_id in zip(owners, sessions, strict=True)
        ]
        responses = await asyncio.gather(
            *(
                client.post(
                    "/chat/message",
                    json={"session_id": session_id, "message": text},
                    headers=owner.headers,
                )
                for owner, session_id, text in jobs
            )
        )
        for (_, session_id, _), response in zip(jobs, responses, strict=True):
            assert response.status_code == 200, response.text
            assert response.json()["session_id"] == session_id

        for owner, session_id in zip(owners, sessions, strict=True):
            messages = await history(client, owner, session_id)
            expected = sorted(text for _, sid, text in jobs if sid == session_id)
            assert sorted(m["content"] for m in messages if m["role"] == "user") == expected
            assert len(messages) == 16
            assert (await read_session(client, owner, session_id))["message_count"] == 16


# A bug's message may quote what the user wrote; none of it may reach the log or a client.
SECRET_TEXT = "my card number is 4111 1111 1111 1111"
UNAVAILABLE = "The assistant is unavailable"


def sse_events_of(text: str) -> list[tuple[str, Any]]:
    return list(sse_events(text.replace("\r\n", "\n").split("\n")))


class TestUnexpectedFailures:
    """Whatever breaks once the user's message is in, the message stays and the client
    gets an answer it understands: a 502, or a stream ending with `error`; never a 500
    or a dropped connection, and never the user's text in the log."""

    @pytest.fixture
    def buggy_assistant(self, app: FastAPI, monkeypatch: pytest.MonkeyPatch) -> None:
        async def buggy(conversation: Sequence[Turn]) -> AsyncGenerator[str]:
            yield "A first piece, then "
            raise RuntimeError(f"bug while answering {conversation[-1].content!r}")

        assistant = app.state.services.conversation.assistant
        monkeypatch.setattr(assistant, "stream_reply", buggy)

    @pytest.mark.usefixtures("buggy_assistant")
    async def test_post_message_is_a_502_and_keeps_the_user_message(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        session = await make_session(alice)
        response = await client.post(
            "/chat/message",
            json={
                "session_id": session["id"],
                "message": SECRET_TEXT,
            },
            headers=alice.headers,
        )
        assert_error(response, 502, UNAVAILABLE)
        assert [(m["role"], m["content"]) for m in await history(client, alice, session["id"])] == [
            ("user", SECRET_TEXT)
        ]
        assert "RuntimeError" in caplog.text
        assert SECRET_TEXT not in caplog.text

    @pytest.mark.usefixtures("buggy_assistant")
    async def test_an_initial_message_is_a_502_naming_the_session(
        self, client: httpx.AsyncClient, alice: User, caplog: pytest.LogCaptureFixture
    ) -> None:
        response = await client.post(
            "/chat/session/new", json={"initial_message": SECRET_TEXT}, headers=alice.headers
        )
        assert_error(response, 502, UNAVAILABLE)
        sessions = await list_sessions(client, alice)
        assert response.json()["detail"] == {"session_id": sessions[0]["id"]}
        assert [m["content"] for m in await history(client, alice, sessions[0]["id"])] == [
            SECRET_TEXT
        ]
        assert SECRET_TEXT not in caplog.text

    @pytest.mark.usefixtures("buggy_assistant")
    async def test_send_ends_the_stream_with_an_error_event(
        self,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        session = await make_session(alice)
        response = await client.post(
            "/chat/send",
            json={
                "session_id": session["id"],
                "message": SECRET_TEXT,
            },
            headers=alice.headers,
        )
        assert response.status_code == 200
        events = sse_events_of(response.text)
        assert events[-1] == ("error", {"error": UNAVAILABLE})
        assert [name for name, _ in events[:-1]] == ["delta"]
        assert "RuntimeError" not in response.text
        assert [(m["role"], m["content"]) for m in await history(client, alice, session["id"])] == [
            ("user", SECRET_TEXT)
        ]
        assert "RuntimeError" in caplog.text
        assert SECRET_TEXT not in caplog.text

    async def test_a_reply_that_cannot_be_stored_ends_the_stream_with_an_error_event(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        alice: User,
        make_session: SessionFactory,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        conversation = app.state.services.conversation
        store_message = conversation.store_message

        async def failing_store(**message: Any) -> Any:
            if message["role"] == "assistant":
                raise sqlite3.OperationalError(f"disk I/O error near {message['text']!r}")
            return await store_message(**message)

        monkeypatch.setattr(conversation, "store_message", failing_store)
        session = await make_session(alice)
        response = await client.post(
            "/chat/send",
            json={
                "session_id": session["id"],
                "message": SECRET_TEXT,
            },
            headers=alice.headers,
        )
        assert response.status_code == 200
        events = sse_events_of(response.text)
        assert events[-1][0] == "error"
        assert "disk" not in response.text
        assert [name for name, _ in events[:-1]] == ["delta"] * (len(events) - 1)
        assert [m["content"] for m in await history(client, alice, session["id"])] == [SECRET_TEXT]
        assert "OperationalError" in caplog.text
        assert SECRET_TEXT not in caplog.text
