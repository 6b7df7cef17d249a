"""Many users at once: chatting, renaming, deleting and reading, all in parallel.

Every user works in several sessions at the same time. In each session one sender
sends its messages one after another (alternating POST /chat/message and the
streamed POST /chat/send), while a renamer renames it, a reader reads it, the
owner lists their sessions, and some sessions are deleted mid-conversation.
Whatever the interleaving, what a client was told must be what the history says.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import SessionFactory, UserFactory
from tests.helpers import User, assert_error

USERS = 8
SESSIONS_PER_USER = 3
MESSAGES_PER_SESSION = 6
RENAMES_PER_SESSION = 3
NOT_FOUND = "Session not found or access denied"
# Text that must come back exactly, whichever session it was sent to.
SUFFIXES = [
    "",
    " 'quoted'; DROP TABLE messages; --",
    " 👩\u200d💻 مرحبا\r\nsecond line",
    " <b>&amp;",
]


@dataclass
class Exchange:
    """One acknowledged message and the reply the client was given."""

    text: str
    user_message: dict[str, Any]
    assistant_message: dict[str, Any]


@dataclass
class Chat:
    """One session under load, and everything its clients were told."""

    owner: User
    number: int
    session_id: str
    doomed: bool  # deleted while its sender is still sending
    acknowledged: list[Exchange] = field(default_factory=list)
    renamed_to: list[str] = field(default_factory=list)
    snapshots: list[list[dict[str, Any]]] = field(default_factory=list)
    deleted: bool = False
    sender_done: bool = False
    two_acknowledged: asyncio.Event = field(default_factory=asyncio.Event)

    def text(self, n: int) -> str:
        return f"{self.owner.email} session {self.number} message {n}{SUFFIXES[n % 4]}"


@dataclass
class Traffic:
    """Every response any client got, to look for server errors afterwards."""

    client: httpx.AsyncClient
    responses: list[httpx.Response] = field(default_factory=list)

    async def __call__(self, method: str, path: str, user: User, **kw: Any) -> httpx.Response:
        response = await self.client.request(method, path, headers=user.headers, **kw)
        self.responses.append(response)
        return response


def sse_events(body: str) -> list[tuple[str, Any]]:
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        lines = block.split("\n")
        name = next((line[6:].strip() for line in lines if line.startswith("event:")), None)
        data = [line[5:].strip() for line in lines if line.startswith("data:")]
        if name is not None:
            events.append((name, json.loads("\n".join(data))))
    return events


async def send(call: Traffic, chat: Chat, n: int) -> bool:
    """Sends message `n`; True when it was acknowledged, False when the session is gone."""
    text = chat.text(n)
    body = {"session_id": chat.session_id, "message": text}
    if n % 2 == 0:
        response = await call("POST", "/chat/message", chat.owner, json=body)
        if response.status_code == 404 and chat.doomed:
            return False
        assert response.status_code == 200, response.text
        pair = response.json()
    else:
        response = await call("POST", "/chat/send", chat.owner, json=body)
        if response.status_code == 404 and chat.doomed:
            return False
        assert response.status_code == 200, response.text
        name, pair = sse_events(response.text)[-1]
        if name == "error" and chat.doomed:  # deleted between the message and its reply
            assert pair == {"error": NOT_FOUND}
            return False
        assert name == "done", response.text
    chat.acknowledged.append(Exchange(text, pair["user_message"], pair["assistant_message"]))
    return True


async def sender(call: Traffic, chat: Chat) -> None:
    try:
        for n in range(MESSAGES_PER_SESSION):
            if not await send(call, chat, n):
                return
            if len(chat.acknowledged) == 2:
                chat.two_acknowledged.set()
    finally:
        chat.sender_done = True
        chat.two_acknowledged.set()


async def renamer(call: Traffic, chat: Chat) -> None:
    for n in range(RENAMES_PER_SESSION):
        title = f"{chat.owner.email} {chat.number} title {n} «ü»"
        response = await call(
            "PATCH", f"/chat/session/{chat.session_id}", chat.owner, json={"title": title}
        )
        if response.status_code == 404 and chat.doomed:
            return
        assert response.status_code == 200, response.text
        assert response.json()["session"]["title"] == title
        chat.renamed_to.append(title)
        await asyncio.sleep(0.001)


async def reader(call: Traffic, chat: Chat) -> None:
    while not chat.sender_done:
        response = await call(
            "GET", f"/chat/session/{chat.session_id}/history", chat.owner, params={"limit": 500}
        )
        if response.status_code == 404 and chat.doomed:
            return
        assert response.status_code == 200, response.text
        chat.snapshots.append(response.json()["messages"])
        await asyncio.sleep(0.002)


async def deleter(call: Traffic, chat: Chat) -> None:
    await chat.two_acknowledged.wait()
    response = await call("DELETE", f"/chat/session/{chat.session_id}", chat.owner)
    assert response.status_code == 200, response.text
    chat.deleted = True


async def lister(call: Traffic, user: User, chats: list[Chat], listed: list[set[str]]) -> None:
    while not all(chat.sender_done for chat in chats):
        response = await call("GET", "/chat/sessions", user, params={"limit": 100})
        assert response.status_code == 200, response.text
        listed.append({s["id"] for s in response.json()["sessions"]})
        await asyncio.sleep(0.002)


async def intruder(call: Traffic, user: User, victim: Chat) -> None:
    """Another user trying the victim's session while its owner is using it."""
    for n in range(3):
        response = await call(
            "POST",
            "/chat/message",
            user,
            json={"session_id": victim.session_id, "message": f"intruder {n}"},
        )
        assert_error(response, 404, NOT_FOUND)
        await asyncio.sleep(0.001)


async def history(call: Traffic, chat: Chat) -> list[dict[str, Any]]:
    response = await call(
        "GET", f"/chat/session/{chat.session_id}/history", chat.owner, params={"limit": 500}
    )
    assert response.status_code == 200, response.text
    assert response.json()["next_cursor"] is None
    messages: list[dict[str, Any]] = response.json()["messages"]
    return messages


def expected_history(chat: Chat) -> list[dict[str, Any]]:
    return [m for e in chat.acknowledged for m in (e.user_message, e.assistant_message)]


Scenario = Callable[[], Awaitable[tuple[list[Chat], dict[str, list[set[str]]]]]]


@pytest.fixture
def scenario(
    client: httpx.AsyncClient, make_user: UserFactory, make_session: SessionFactory
) -> tuple[Traffic, Scenario]:
    call = Traffic(client)

    async def run() -> tuple[list[Chat], dict[str, list[set[str]]]]:
        users = await asyncio.gather(*(make_user() for _ in range(USERS)))
        created = await asyncio.gather(
            *(
                make_session(user, title=f"{user.email} {n}")
                for user in users
                for n in range(SESSIONS_PER_USER)
            )
        )
        chats = [
            Chat(
                owner=users[i // SESSIONS_PER_USER],
                number=i % SESSIONS_PER_USER,
                session_id=session["id"],
                # The last session of every other user goes while its owner is chatting.
                doomed=i % SESSIONS_PER_USER == SESSIONS_PER_USER - 1
                and (i // SESSIONS_PER_USER) % 2 == 0,
            )
            for i, session in enumerate(created)
        ]
        listed: dict[str, list[set[str]]] = {user.id: [] for user in users}
        async with asyncio.TaskGroup() as group:
            for chat in chats:
                group.create_task(sender(call, chat))
                group.create_task(renamer(call, chat))
                group.create_task(reader(call, chat))
                if chat.doomed:
                    group.create_task(deleter(call, chat))
            for n, user in enumerate(users):
                own = [chat for chat in chats if chat.owner is user]
                group.create_task(lister(call, user, own, listed[user.id]))
                neighbour = chats[((n + 1) % USERS) * SESSIONS_PER_USER]
                group.create_task(intruder(call, user, neighbour))
        return chats, listed

    return call, run


class TestManyUsersAtOnce:
    async def test_no_request_fails_and_no_lock_error_reaches_a_client(
        self, scenario: tuple[Traffic, Scenario], caplog: pytest.LogCaptureFixture
    ) -> None:
        call, run = scenario
        with caplog.at_level(logging.WARNING):
            await run()
        assert len(call.responses) > USERS * SESSIONS_PER_USER * MESSAGES_PER_SESSION
        server_errors = [(r.request.url.path, r.status_code) for r in call.responses]
        assert [e for e in server_errors if e[1] >= 500] == []
        assert not [r for r in call.responses if "locked" in r.text.lower()]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert not [r for r in caplog.records if "locked" in r.getMessage().lower()]

    async def test_every_acknowledged_message_is_in_its_session_once_and_in_order(
        self, scenario: tuple[Traffic, Scenario]
    ) -> None:
        call, run = scenario
        chats, _ = await run()
        survivors = [chat for chat in chats if not chat.doomed]
        seen_ids: list[str] = []
        for chat in survivors:
            assert len(chat.acknowledged) == MESSAGES_PER_SESSION
            messages = await history(call, chat)
            assert messages == expected_history(chat)  # same ids, texts, order; nothing else
            assert [(m["role"], m["content"]) for m in messages] == [
                (role, text)
                for e in chat.acknowledged
                for role, text in (("user", e.text), ("assistant", f"Echo: {e.text}"))
            ]
            assert {m["session_id"] for m in messages} == {chat.session_id}
            times = [m["created_at"] for m in messages]
            assert times == sorted(times)
            seen_ids += [m["id"] for m in messages]
        assert len(seen_ids) == len(set(seen_ids)) == len(survivors) * MESSAGES_PER_SESSION * 2

    async def test_histories_read_mid_flight_are_beginnings_of_the_final_one(
        self, scenario: tuple[Traffic, Scenario]
    ) -> None:
        call, run = scenario
        chats, _ = await run()
        survivors = [chat for chat in chats if not chat.doomed]
        assert sum(len(chat.snapshots) for chat in survivors) > len(survivors)
        for chat in survivors:
            final = await history(call, chat)
            for snapshot in chat.snapshots:
                assert snapshot == final[: len(snapshot)]

    async def test_message_count_equals_the_messages_in_the_session(
        self, scenario: tuple[Traffic, Scenario]
    ) -> None:
        call, run = scenario
        chats, _ = await run()
        for user in {chat.owner.id: chat.owner for chat in chats}.values():
            listed = await call("GET", "/chat/sessions", user, params={"limit": 100})
            counts = {s["id"]: s["message_count"] for s in listed.json()["sessions"]}
            for chat in chats:
                if chat.owner is user and not chat.doomed:
                    one = await call("GET", f"/chat/session/{chat.session_id}", user)
                    assert one.json()["session"]["message_count"] == len(await history(call, chat))
                    assert counts[chat.session_id] == 2 * MESSAGES_PER_SESSION

    async def test_deleted_sessions_are_gone_with_their_messages(
        self, scenario: tuple[Traffic, Scenario], app: FastAPI
    ) -> None:
        call, run = scenario
        chats, _ = await run()
        doomed = [chat for chat in chats if chat.doomed]
        assert doomed
        for chat in doomed:
            assert chat.deleted
            assert len(chat.acknowledged) >= 2  # it was deleted mid-conversation
            path = f"/chat/session/{chat.session_id}"
            assert_error(await call("GET", path, chat.owner), 404, NOT_FOUND)
            assert_error(await call("GET", f"{path}/history", chat.owner), 404, NOT_FOUND)
            assert_error(await call("PATCH", path, chat.owner, json={"title": "back?"}), 404)
            assert_error(await call("DELETE", path, chat.owner), 404, NOT_FOUND)
            listed = await call("GET", "/chat/sessions", chat.owner, params={"limit": 100})
            assert chat.session_id not in {s["id"] for s in listed.json()["sessions"]}
        # No client can ask for the messages of a deleted session; the file says they went.
        ids = [chat.session_id for chat in doomed]
        marks = ",".join("?" * len(ids))
        rows = await app.state.services.db.reader().execute_fetchall(
            f"SELECT count(*) FROM messages WHERE session_id IN ({marks})",  # noqa: S608
            ids,
        )
        assert next(iter(rows))[0] == 0
        orphans = await app.state.services.db.reader().execute_fetchall(
            "SELECT count(*) FROM messages WHERE session_id NOT IN (SELECT id FROM chat_sessions)"
        )
        assert next(iter(orphans))[0] == 0

    async def test_the_last_successful_rename_is_the_title(
        self, scenario: tuple[Traffic, Scenario]
    ) -> None:
        call, run = scenario
        chats, _ = await run()
        for chat in chats:
            if chat.doomed:
                continue
            assert len(chat.renamed_to) == RENAMES_PER_SESSION
            one = await call("GET", f"/chat/session/{chat.session_id}", chat.owner)
            assert one.json()["session"]["title"] == chat.renamed_to[-1]
            listed = await call("GET", "/chat/sessions", chat.owner, params={"limit": 100})
            titles = {s["id"]: s["title"] for s in listed.json()["sessions"]}
            assert titles[chat.session_id] == chat.renamed_to[-1]

    async def test_nobody_ever_sees_or_writes_into_another_users_sessions(
        self, scenario: tuple[Traffic, Scenario]
    ) -> None:
        call, run = scenario
        chats, listed = await run()
        for user_id, snapshots in listed.items():
            own = {chat.session_id for chat in chats if chat.owner.id == user_id}
            assert snapshots
            for snapshot in snapshots:
                assert snapshot <= own
        for chat in chats:
            if chat.doomed:
                continue
            contents = [m["content"] for m in await history(call, chat)]
            assert all(f"{chat.owner.email} session {chat.number} " in c for c in contents)
            assert not [c for c in contents if "intruder" in c]
