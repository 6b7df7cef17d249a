"""What a real chatgate process keeps when it dies (SIGKILL) or is asked to stop (SIGTERM).

Each scenario runs once per module, in a fixture, against `python -m uvicorn
app.main:app` in a child process (tests/server_process.py); the tests then
check what a user would see after a restart on the same data file, through
HTTP, and the file itself with the sqlite3 module once no server has it open.
docs/durability.md says what these tests show.
"""

import contextlib
import shutil
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_openai import FakeOpenAIServer
from tests.helpers import sse_events
from tests.server_process import ServerProcess, base_environment

PASSWORD = "correct horse battery staple"
TIMEOUT = httpx.Timeout(15.0)
# Text a careless store would change: combining accents, emoji (4 UTF-8 bytes), CR LF,
# a NUL, a byte order mark, Unicode line and paragraph separators, spaces at the ends.
TRICKY = (
    "e\u0301 cafe\u0301",
    "\U0001f600 \U0001f9d1\u200d\U0001f4bb",
    "two\r\nlines\n",
    "nul\x00inside",
    "\ufeffbom first",
    "\u2028line\u2029para",
    '  "quoted" \\ back\tslash  ',
    "\u65e5\u672c\u8a9e \u0627\u0644\u0639\u0631\u0628\u064a\u0629",
)
# The echo assistant answers in one delta per word: about 10,000 deltas, far longer to
# stream than the moment between its first delta and the SIGKILL.
LONG_BODY = "ab " * 10_000
ACKS_BEFORE_KILL = 60  # acknowledged messages before the long stream starts
MAX_SENDS = 3_000  # per worker: a bound on every loop, never reached in practice
CREATED_SESSIONS_MAX = 20
# The fake's slow model: 50 ms a word, so this takes about 3 s to answer.
SLOW_MESSAGE = " ".join(f"word{n}" for n in range(60))


# --- talking to chatgate -------------------------------------------------------


def register(client: httpx.Client, email: str) -> dict[str, str]:
    """Registers and logs in; the headers that carry the access token."""
    registered = client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    login = client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def new_session(client: httpx.Client, headers: dict[str, str]) -> str:
    response = client.post("/chat/session/new", json={}, headers=headers)
    assert response.status_code == 201, response.text
    session_id: str = response.json()["session"]["id"]
    return session_id


def full_history(
    client: httpx.Client, headers: dict[str, str], session_id: str
) -> list[dict[str, Any]]:
    """Every message of the session, oldest first, following next_cursor page by page."""
    messages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    for _ in range(1_000):
        response = client.get(f"/chat/session/{session_id}/history", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        messages.extend(body["messages"])
        if body["next_cursor"] is None:
            return messages
        params["cursor"] = body["next_cursor"]
    pytest.fail("the history never reached its last page")


def all_sessions(client: httpx.Client, headers: dict[str, str]) -> list[dict[str, Any]]:
    sessions: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 7}
    for _ in range(1_000):
        response = client.get("/chat/sessions", params=params, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        sessions.extend(body["sessions"])
        if body["next_cursor"] is None:
            return sessions
        params["cursor"] = body["next_cursor"]
    pytest.fail("the session list never reached its last page")


def integrity_of(db_path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]


def foreign_key_problems(db_path: Path) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(db_path)) as db:
        return list(db.execute("PRAGMA foreign_key_check"))


def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Polls `check()` until it is true; fails after `timeout` seconds, naming `what`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


# --- the crash: many writers, then SIGKILL -------------------------------------


@dataclass(frozen=True)
class Ack:
    """A message the server acknowledged: a 2xx for it (or, for a reply, the done event)."""

    session_id: str
    role: str
    content: str
    id: str | None  # a streamed user message's id comes only with `done`
    follows: str | None = None  # the id of the user message it answers, in one write


@dataclass
class Ledger:
    """What the clients sent and what the server acknowledged, shared by their threads."""

    acks: list[Ack] = field(default_factory=list)
    sent: dict[str, set[str]] = field(default_factory=dict)  # session id -> texts tried
    owners: dict[str, str] = field(default_factory=dict)  # acknowledged session -> email
    creations_in_flight: dict[str, set[str]] = field(default_factory=dict)  # email -> texts
    unexpected: list[str] = field(default_factory=list)
    cut_streams: int = 0
    killed: threading.Event = field(default_factory=threading.Event)
    enough: threading.Event = field(default_factory=threading.Event)
    mid_stream: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ack(self, *acks: Ack) -> None:
        with self.lock:
            self.acks.extend(acks)
            if len(self.acks) >= ACKS_BEFORE_KILL:
                self.enough.set()

    def sending(self, session_id: str, text: str) -> None:
        with self.lock:
            self.sent.setdefault(session_id, set()).add(text)

    def failed(self, what: str) -> None:
        """A failure is expected once the server is killed, and a defect before."""
        if not self.killed.is_set():
            with self.lock:
                self.unexpected.append(what)


@dataclass(frozen=True)
class Client:
    email: str
    headers: dict[str, str]
    sessions: tuple[str, ...]


def echo_of(text: str) -> str:
    return f"Echo: {text}"


def plain_sender(url: str, client: Client, worker: int, ledger: Ledger) -> None:
    """POST /chat/message in a loop, round the client's sessions, until the server dies."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        for n in range(MAX_SENDS):
            session_id = client.sessions[n % len(client.sessions)]
            text = f"[{session_id} plain {worker}.{n}] {TRICKY[n % len(TRICKY)]}"
            ledger.sending(session_id, text)
            try:
                response = http.post(
                    "/chat/message",
                    json={"session_id": session_id, "message": text},
                    headers=client.headers,
                )
            except httpx.TransportError as exc:
                ledger.failed(f"plain {worker}.{n}: {exc!r}")
                return
            if response.status_code != 200:
                ledger.failed(f"plain {worker}.{n}: {response.status_code} {response.text}")
                return
            body = response.json()
            asked, answered = body["user_message"], body["assistant_message"]
            if (asked["content"], answered["content"]) != (text, echo_of(text)):
                ledger.failed(f"plain {worker}.{n}: answered {body!r}")
            ledger.ack(
                Ack(session_id, "user", text, asked["id"]),
                Ack(session_id, "assistant", echo_of(text), answered["id"], follows=asked["id"]),
            )


def stream_one(
    http: httpx.Client, client: Client, session_id: str, text: str, ledger: Ledger, label: str
) -> bool:
    """One POST /chat/send, recorded as it goes; False once the server is gone."""
    ledger.sending(session_id, text)
    acknowledged_user = False
    try:
        with http.stream(
            "POST",
            "/chat/send",
            json={"session_id": session_id, "message": text},
            headers=client.headers,
        ) as response:
            if response.status_code != 200:
                response.read()
                ledger.failed(f"{label}: {response.status_code} {response.text}")
                return False
            # The user's message is on disk before the response starts.
            acknowledged_user = True
            ledger.ack(Ack(session_id, "user", text, None))
            for name, data in sse_events(response.iter_lines(), complete=False):
                if name == "delta":
                    if label == "long":
                        ledger.mid_stream.set()
                elif name == "done":
                    asked, answered = data["user_message"], data["assistant_message"]
                    if (asked["content"], answered["content"]) != (text, echo_of(text)):
                        ledger.failed(f"{label}: done with {data!r}")
                    ledger.ack(
                        Ack(session_id, "user", text, asked["id"]),
                        Ack(session_id, "assistant", answered["content"], answered["id"]),
                    )
                    return True
                else:
                    ledger.failed(f"{label}: event {name} {data!r}")
                    return False
            ledger.failed(f"{label}: the stream ended without done")
            return False
    except httpx.TransportError as exc:
        ledger.failed(f"{label}: {exc!r}")
        if acknowledged_user and ledger.killed.is_set():
            with ledger.lock:
                ledger.cut_streams += 1
        return False


def stream_sender(url: str, client: Client, worker: int, ledger: Ledger) -> None:
    """Short POST /chat/send streams in a loop, round the client's sessions."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        for n in range(MAX_SENDS):
            session_id = client.sessions[n % len(client.sessions)]
            text = f"[{session_id} stream {worker}.{n}] {TRICKY[-1 - n % len(TRICKY)]}"
            if not stream_one(http, client, session_id, text, ledger, f"stream {worker}.{n}"):
                return


def long_streamer(url: str, client: Client, ledger: Ledger) -> None:
    """Once enough is acknowledged, one stream so long that the kill lands in its middle."""
    if not ledger.enough.wait(timeout=30):
        return  # the test fails on the missing mid_stream
    session_id = client.sessions[0]
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        stream_one(http, client, session_id, f"[{session_id} long] {LONG_BODY}", ledger, "long")


def session_creator(url: str, client: Client, ledger: Ledger) -> None:
    """POST /chat/session/new with an initial message: a new session and two messages."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        for n in range(CREATED_SESSIONS_MAX):
            text = f"[new {client.email} {n}] {TRICKY[n % len(TRICKY)]}"
            with ledger.lock:
                ledger.creations_in_flight.setdefault(client.email, set()).add(text)
            try:
                response = http.post(
                    "/chat/session/new", json={"initial_message": text}, headers=client.headers
                )
            except httpx.TransportError as exc:
                ledger.failed(f"creator {n}: {exc!r}")
                return
            if response.status_code != 201:
                ledger.failed(f"creator {n}: {response.status_code} {response.text}")
                return
            body = response.json()
            session_id = body["session"]["id"]
            asked, answered = body["messages"]
            with ledger.lock:
                ledger.owners[session_id] = client.email
                ledger.creations_in_flight[client.email].discard(text)
                ledger.sent[session_id] = {text}
            ledger.ack(
                Ack(session_id, "user", text, asked["id"]),
                Ack(session_id, "assistant", echo_of(text), answered["id"], follows=asked["id"]),
            )


def guarded(ledger: Ledger, target: Any, *args: Any) -> threading.Thread:
    """A worker thread whose surprises become test failures, not thread warnings."""

    def run() -> None:
        try:
            target(*args)
        except Exception as exc:  # recorded, then asserted on by the tests
            with ledger.lock:
                ledger.unexpected.append(f"{target.__name__} raised {exc!r}")

    return threading.Thread(target=run, name=target.__name__, daemon=True)


@dataclass
class CrashRun:
    ledger: Ledger
    clients: list[Client]
    exit_status: int
    wal_left_behind: bool
    crash_image_integrity: list[str]
    sessions: dict[str, list[dict[str, Any]]]  # email -> its sessions after the restart
    histories: dict[str, list[dict[str, Any]]]  # session id -> its messages after the restart
    integrity: list[str]
    foreign_key_problems: list[tuple[Any, ...]]


@pytest.fixture(scope="module")
def crash(tmp_path_factory: pytest.TempPathFactory) -> CrashRun:
    """Writers on every route that writes chat data, a SIGKILL mid-stream, a restart."""
    workdir = tmp_path_factory.mktemp("crash")
    db_path = workdir / "chat.db"
    env = base_environment(workdir)
    ledger = Ledger()
    threads: list[threading.Thread] = []
    with ServerProcess(workdir, env, name="before-kill") as server:
        try:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
                clients = []
                for name in ("ada", "grace", "edsger"):
                    headers = register(http, f"{name}@example.com")
                    sessions = tuple(new_session(http, headers) for _ in range(2))
                    clients.append(Client(f"{name}@example.com", headers, sessions))
            for client in clients:
                ledger.owners.update(dict.fromkeys(client.sessions, client.email))
            for worker, client in enumerate(clients):
                threads.append(guarded(ledger, plain_sender, server.url, client, worker, ledger))
                threads.append(guarded(ledger, stream_sender, server.url, client, worker, ledger))
            threads.append(guarded(ledger, session_creator, server.url, clients[0], ledger))
            threads.append(guarded(ledger, long_streamer, server.url, clients[1], ledger))
            for thread in threads:
                thread.start()
            streaming = ledger.mid_stream.wait(timeout=30)
            ledger.killed.set()  # first: a failure from now on is the kill's doing
            server.signal(signal.SIGKILL)
            assert streaming, f"the long stream never started; unexpected: {ledger.unexpected}"
            exit_status = server.wait(timeout=10)
        finally:
            ledger.killed.set()
            server.kill()
            for thread in threads:
                thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads), "a client never gave up"
    wal = workdir / "chat.db-wal"
    wal_left_behind = wal.exists() and wal.stat().st_size > 0

    # The file as the crash left it, checked on a copy so the restart still recovers it.
    image = workdir / "image"
    image.mkdir()
    shutil.copy(db_path, image / "chat.db")
    if wal.exists():
        shutil.copy(wal, image / "chat.db-wal")
    crash_image_integrity = integrity_of(image / "chat.db")

    sessions: dict[str, list[dict[str, Any]]] = {}
    histories: dict[str, list[dict[str, Any]]] = {}
    with (
        ServerProcess(workdir, env, name="after-kill") as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        # The tokens issued before the crash still work: the users and logins survived.
        for client in clients:
            sessions[client.email] = all_sessions(http, client.headers)
            for session in sessions[client.email]:
                histories[session["id"]] = full_history(http, client.headers, session["id"])
        server.signal(signal.SIGTERM)
        server.wait(timeout=20)
    return CrashRun(
        ledger=ledger,
        clients=clients,
        exit_status=exit_status,
        wal_left_behind=wal_left_behind,
        crash_image_integrity=crash_image_integrity,
        sessions=sessions,
        histories=histories,
        integrity=integrity_of(db_path),
        foreign_key_problems=foreign_key_problems(db_path),
    )


class TestCrash:
    def test_the_clients_ran_into_the_kill_and_nothing_else(self, crash: CrashRun) -> None:
        assert crash.ledger.unexpected == []
        assert crash.exit_status == -signal.SIGKILL
        assert len(crash.ledger.acks) >= ACKS_BEFORE_KILL
        assert crash.ledger.cut_streams >= 1, "no stream was cut by the kill"
        # The last commits were still in the write-ahead log: the restart had to recover.
        assert crash.wal_left_behind

    def test_every_acknowledged_message_survives_sigkill(self, crash: CrashRun) -> None:
        for ack in crash.ledger.acks:
            stored = [
                m
                for m in crash.histories.get(ack.session_id, [])
                if m["role"] == ack.role and m["content"] == ack.content
            ]
            assert len(stored) == 1, f"{ack.role} message {ack.content[:60]!r}: {len(stored)}"
            assert stored[0]["content"].encode() == ack.content.encode()
            if ack.id is not None:
                assert stored[0]["id"] == ack.id

    def test_a_question_and_its_answer_stay_together(self, crash: CrashRun) -> None:
        pairs = [ack for ack in crash.ledger.acks if ack.follows is not None]
        assert pairs
        for ack in pairs:
            ids = [m["id"] for m in crash.histories[ack.session_id]]
            assert ids.index(ack.id) == ids.index(ack.follows) + 1

    def test_every_acknowledged_session_survives_with_its_owner(self, crash: CrashRun) -> None:
        for client in crash.clients:
            listed = {s["id"] for s in crash.sessions[client.email]}
            mine = {sid for sid, email in crash.ledger.owners.items() if email == client.email}
            assert mine <= listed
            # At most the one creation the kill interrupted, besides the acknowledged ones.
            assert len(listed - mine) <= len(crash.ledger.creations_in_flight.get(client.email, ()))

    def test_no_message_appears_in_another_session(self, crash: CrashRun) -> None:
        in_flight = set().union(*crash.ledger.creations_in_flight.values())
        for session_id, messages in crash.histories.items():
            sent = crash.ledger.sent.get(session_id, in_flight)
            for message in messages:
                assert message["session_id"] == session_id
                question = (
                    message["content"]
                    if message["role"] == "user"
                    else message["content"].removeprefix("Echo: ")
                )
                # A cut stream's reply is never stored: the process died before it ended.
                assert question in sent, f"{message['content'][:60]!r} in {session_id}"

    def test_session_message_counts_match_their_history(self, crash: CrashRun) -> None:
        for sessions in crash.sessions.values():
            for session in sessions:
                messages = crash.histories[session["id"]]
                assert session["message_count"] == len(messages)
                assert len({m["id"] for m in messages}) == len(messages)

    def test_the_database_file_passes_integrity_checks(self, crash: CrashRun) -> None:
        assert crash.crash_image_integrity == ["ok"]
        assert crash.integrity == ["ok"]
        assert crash.foreign_key_problems == []


# --- the graceful stop: SIGTERM with slow replies in flight ---------------------


@dataclass
class Outcome:
    """What one in-flight request saw, and when it ended (time.monotonic())."""

    status: int | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    body: dict[str, Any] | None = None
    error: str | None = None
    ended_at: float | None = None
    started: threading.Event = field(default_factory=threading.Event)


@dataclass
class SigtermRun:
    before: list[tuple[str, str, str]]  # (session id, role, content) acknowledged earlier
    texts: dict[str, tuple[str, str]]  # label -> (session id, text)
    outcomes: dict[str, Outcome]
    signalled_at: float
    refused_at: float | None
    exit_status: int
    exited_at: float
    leftover_files: list[str]
    log: str
    integrity: list[str]
    histories: dict[str, list[tuple[str, str]]]


@pytest.fixture(scope="module")
def fake_provider() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


def slow_stream(
    url: str, headers: dict[str, str], session_id: str, text: str, out: Outcome
) -> None:
    try:
        with (
            httpx.Client(base_url=url, timeout=TIMEOUT) as http,
            http.stream(
                "POST",
                "/chat/send",
                json={"session_id": session_id, "message": text},
                headers=headers,
            ) as response,
        ):
            out.status = response.status_code
            for event in sse_events(response.iter_lines(), complete=False):
                out.events.append(event)
                out.started.set()
    except Exception as exc:  # the test asserts there was none
        out.error = repr(exc)
    finally:
        out.ended_at = time.monotonic()
        out.started.set()


def slow_message(
    url: str, headers: dict[str, str], session_id: str, text: str, out: Outcome
) -> None:
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            response = http.post(
                "/chat/message", json={"session_id": session_id, "message": text}, headers=headers
            )
            out.status = response.status_code
            out.body = response.json()
    except Exception as exc:  # the test asserts there was none
        out.error = repr(exc)
    finally:
        out.ended_at = time.monotonic()


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture(scope="module")
def sigterm(
    tmp_path_factory: pytest.TempPathFactory, fake_provider: FakeOpenAIServer
) -> SigtermRun:
    """Three streams and two plain requests in flight at a slow model, then SIGTERM."""
    workdir = tmp_path_factory.mktemp("sigterm")
    env = base_environment(workdir) | {
        "ASSISTANT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_provider.base_url,
        "OPENAI_MODEL": "slow",
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_READ_TIMEOUT": "10",
    }
    assert fake_provider.recorder.in_flight == 0
    outcomes = {label: Outcome() for label in ("stream0", "stream1", "stream2", "plain0", "plain1")}
    threads: list[threading.Thread] = []
    with ServerProcess(workdir, env, name="sigterm") as server:
        try:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
                headers = register(http, "ada@example.com")
                sessions = [new_session(http, headers) for _ in range(3)]
                done = http.post(
                    "/chat/message",
                    json={"session_id": sessions[0], "message": "hi"},
                    headers=headers,
                )
                assert done.status_code == 200, done.text
            before = [(sessions[0], "user", "hi"), (sessions[0], "assistant", "You said: hi")]
            texts = {
                label: (sessions[n % 3], f"{label} {TRICKY[n]} {SLOW_MESSAGE}")
                for n, label in enumerate(outcomes)
            }
            for label, (session_id, text) in texts.items():
                target = slow_stream if label.startswith("stream") else slow_message
                args = (server.url, headers, session_id, text, outcomes[label])
                threads.append(threading.Thread(target=target, args=args, daemon=True))
            for thread in threads:
                thread.start()
            # Every stream has shown its first words; every request is at the provider.
            for label, outcome in outcomes.items():
                if label.startswith("stream"):
                    assert outcome.started.wait(timeout=20), f"{label} never started"
            eventually(lambda: fake_provider.recorder.in_flight == len(outcomes), "the provider")
            signalled_at = time.monotonic()
            server.signal(signal.SIGTERM)
            deadline = signalled_at + 5
            refused_at = None
            while time.monotonic() < deadline:
                if refuses_connections(server.port):
                    refused_at = time.monotonic()
                    break
                time.sleep(0.01)
            exit_status = server.wait(timeout=20)
            exited_at = time.monotonic()
        finally:
            server.kill()
            for thread in threads:
                thread.join(timeout=20)
        log = server.log()
    leftover = sorted(p.name for p in workdir.glob("chat.db-*"))
    integrity = integrity_of(workdir / "chat.db")
    histories: dict[str, list[tuple[str, str]]] = {}
    with (
        ServerProcess(workdir, env, name="after-sigterm") as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        for session_id in sessions:
            histories[session_id] = [
                (m["role"], m["content"]) for m in full_history(http, headers, session_id)
            ]
        server.signal(signal.SIGTERM)
        server.wait(timeout=20)
    return SigtermRun(
        before=before,
        texts=texts,
        outcomes=outcomes,
        signalled_at=signalled_at,
        refused_at=refused_at,
        exit_status=exit_status,
        exited_at=exited_at,
        leftover_files=leftover,
        log=log,
        integrity=integrity,
        histories=histories,
    )


def said(text: str) -> str:
    """The fake provider's reply."""
    return f"You said: {text}"


class TestGracefulShutdown:
    def test_in_flight_plain_requests_get_their_whole_answer(self, sigterm: SigtermRun) -> None:
        for label in ("plain0", "plain1"):
            outcome, (_, text) = sigterm.outcomes[label], sigterm.texts[label]
            assert outcome.error is None
            assert outcome.status == 200
            assert outcome.body is not None
            assert outcome.body["user_message"]["content"] == text
            assert outcome.body["assistant_message"]["content"] == said(text)

    def test_started_streams_run_to_their_done_event(self, sigterm: SigtermRun) -> None:
        for label in ("stream0", "stream1", "stream2"):
            outcome, (_, text) = sigterm.outcomes[label], sigterm.texts[label]
            assert outcome.error is None
            assert outcome.status == 200
            names = [name for name, _ in outcome.events]
            assert names == ["delta"] * (len(names) - 1) + ["done"]
            deltas = "".join(data["content"] for name, data in outcome.events if name == "delta")
            assert deltas == said(text)
            assert outcome.events[-1][1]["assistant_message"]["content"] == said(text)

    def test_new_connections_are_refused_while_the_streams_drain(self, sigterm: SigtermRun) -> None:
        assert sigterm.refused_at is not None, "still accepting connections 5 s after SIGTERM"
        ends = [o.ended_at for o in sigterm.outcomes.values()]
        assert all(end is not None and end > sigterm.refused_at for end in ends)

    def test_the_process_exits_by_itself_once_the_requests_are_done(
        self, sigterm: SigtermRun
    ) -> None:
        # uvicorn shuts down gracefully, then re-raises the signal it caught, so the
        # exit status says "ended by SIGTERM" (shell: 143) rather than 0.
        assert sigterm.exit_status == -signal.SIGTERM
        assert sigterm.exited_at - sigterm.signalled_at < 15
        last_reply = max(o.ended_at or 0.0 for o in sigterm.outcomes.values())
        assert sigterm.exited_at >= last_reply
        assert "Application shutdown complete" in sigterm.log
        assert "Traceback" not in sigterm.log

    def test_the_database_is_closed_cleanly(self, sigterm: SigtermRun) -> None:
        # The last connection to close checkpoints the WAL into the file and deletes it.
        assert sigterm.leftover_files == []
        assert sigterm.integrity == ["ok"]

    def test_nothing_acknowledged_is_lost(self, sigterm: SigtermRun) -> None:
        expected: dict[str, list[tuple[str, str]]] = {sid: [] for sid in sigterm.histories}
        for session_id, role, content in sigterm.before:
            expected[session_id].append((role, content))
        for session_id, text in sigterm.texts.values():
            expected[session_id] += [("user", text), ("assistant", said(text))]
        for session_id, history in sigterm.histories.items():
            # Concurrent exchanges in one session interleave; each is whole and in order.
            assert sorted(history) == sorted(expected[session_id])
            for role, content in history:
                if role == "assistant":
                    question = ("user", content.removeprefix("You said: "))
                    assert history.index(question) < history.index((role, content))


class TestShutdownWithATimeout:
    """`--timeout-graceful-shutdown` cuts what is still running; what was said stays."""

    def test_streams_cut_by_the_timeout_keep_their_partial_replies(
        self, tmp_path: Path, fake_provider: FakeOpenAIServer
    ) -> None:
        env = base_environment(tmp_path) | {
            "ASSISTANT_PROVIDER": "openai",
            "OPENAI_BASE_URL": fake_provider.base_url,
            "OPENAI_MODEL": "slow",
            "OPENAI_API_KEY": "sk-test-not-a-real-key",
        }
        outcomes = [Outcome() for _ in range(3)]
        with ServerProcess(
            tmp_path, env, name="cut", uvicorn_args=("--timeout-graceful-shutdown", "1")
        ) as server:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
                headers = register(http, "cut@example.com")
                session_id = new_session(http, headers)
            threads = [
                threading.Thread(
                    target=slow_stream,
                    args=(server.url, headers, session_id, f"cut{n} {SLOW_MESSAGE}", out),
                )
                for n, out in enumerate(outcomes)
            ]
            for thread in threads:
                thread.start()
            for out in outcomes:
                assert out.started.wait(15)
            server.signal(signal.SIGTERM)
            assert server.wait(30) == -signal.SIGTERM
            for thread in threads:
                thread.join(30)
            log = server.log()
        assert "assistant failed" not in log
        # uvicorn logs each task it cancels with a traceback of its own; nothing else.
        cancelled = "CancelledError: Task cancelled, timeout graceful shutdown exceeded"
        assert log.count("Traceback") == log.count(cancelled)
        db = sqlite3.connect(tmp_path / "chat.db")
        try:
            rows = db.execute(
                "SELECT role, content FROM messages WHERE session_id = ? ORDER BY seq",
                (session_id,),
            ).fetchall()
        finally:
            db.close()
        asked = [content for role, content in rows if role == "user"]
        replies = [content for role, content in rows if role == "assistant"]
        assert len(asked) == 3
        # Each cut stream's reply is stored as far as it had got, never empty.
        assert len(replies) == 3
        full = [said(f"cut{n} {SLOW_MESSAGE}") for n in range(3)]
        assert all(reply and any(f.startswith(reply) for f in full) for reply in replies)
        assert all(not out.error or "done" not in [e for e, _ in out.events] for out in outcomes)
