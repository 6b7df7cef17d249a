"""`chatgate backup` and `chatgate restore`: a copy taken while the service writes, and back.

The key scenario runs once per module, in a fixture: writers keep posting chat
messages to a real server (tests/server_process.py) while `chatgate backup`
copies its data file; the backup is then restored into a fresh data folder and
served by a second server. The tests check the copy as SQLite sees it and the
history as a user reads it over HTTP. The other tests are the operator's
mistakes, each of which must leave every file as it was.
"""

import contextlib
import hashlib
import json
import re
import sqlite3
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db import SCHEMA_VERSION
from tests.cli_process import Ran, chatgate, finish, start, write_newer_database
from tests.helpers import make_settings, running
from tests.server_process import ServerProcess, base_environment

PASSWORD = "correct horse battery staple"
TIMEOUT = httpx.Timeout(15.0)
FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_DB = FIXTURES / "schema2.db"
RECORDED: dict[str, Any] = json.loads((FIXTURES / "schema2.json").read_text(encoding="utf-8"))
# Text a careless copy would change: combining accents, emoji, CR LF, a NUL, a BOM.
TRICKY = (
    "e\u0301 cafe\u0301",
    "\U0001f9d1\u200d\U0001f4bb",
    "two\r\nlines\n",
    "nul\x00in",
    "\ufeffbom",
)
ACKS_BEFORE = 60  # acknowledged before the backup starts
ACKS_AFTER = 60  # acknowledged after it has ended
# The copy's snapshot is taken within milliseconds of its first file appearing in the
# target folder; this much earlier, a commit is surely in it (a watcher can be late).
COPY_MARGIN = 0.25  # seconds: how late the polling loop may notice the first file
MAX_SENDS = 20_000  # per writer: a bound on the loop, never reached
COUNTS = re.compile(
    r"schema version (\d+), (\d+) users, (\d+) sessions, (\d+) messages; integrity check ok"
)


def read_only(path: Path) -> "contextlib.closing[sqlite3.Connection]":
    """A connection that cannot change the file, nor put a -wal or -shm beside it."""
    return contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True))


def stored_messages(path: Path) -> dict[str, list[tuple[str, str, str]]]:
    """session id -> its (id, role, content) in order, as the file holds them."""
    sessions: dict[str, list[tuple[str, str, str]]] = {}
    with read_only(path) as db:
        for session_id, message_id, role, content in db.execute(
            "SELECT session_id, id, role, content FROM messages ORDER BY session_id, seq"
        ):
            sessions.setdefault(session_id, []).append((message_id, role, content))
    return sessions


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def log_in(http: httpx.Client, email: str, password: str = PASSWORD) -> dict[str, str]:
    response = http.post("/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def history(http: httpx.Client, headers: dict[str, str], session_id: str) -> list[dict[str, Any]]:
    """Every message of the session, oldest first, page after page."""
    messages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    for _ in range(1_000):
        response = http.get(f"/chat/session/{session_id}/history", params=params, headers=headers)
        assert response.status_code == 200, response.text
        messages += response.json()["messages"]
        if response.json()["next_cursor"] is None:
            return messages
        params["cursor"] = response.json()["next_cursor"]
    pytest.fail("the history never reached its last page")


# --- the backup under write load ---------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """An exchange the server answered 200 for, and when the answer arrived."""

    session_id: str
    text: str
    id: str
    reply: str
    reply_id: str
    at: float  # time.monotonic()


@dataclass
class Load:
    acks: list[Ack] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, since: float = 0.0) -> int:
        with self.lock:
            return sum(ack.at > since for ack in self.acks)


def writer(url: str, headers: dict[str, str], session_id: str, name: str, load: Load) -> None:
    """POST /chat/message, one after another, into one session, until told to stop."""
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            for n in range(MAX_SENDS):
                if load.stop.is_set():
                    return
                text = f"[{name}.{n}] {TRICKY[n % len(TRICKY)]}"
                response = http.post(
                    "/chat/message",
                    json={"session_id": session_id, "message": text},
                    headers=headers,
                )
                at = time.monotonic()
                if response.status_code != 200:
                    raise AssertionError(f"{response.status_code} {response.text}")
                body = response.json()
                asked, answered = body["user_message"], body["assistant_message"]
                with load.lock:
                    load.acks.append(
                        Ack(session_id, text, asked["id"], answered["content"], answered["id"], at)
                    )
    except Exception as exc:  # recorded, then asserted on by the tests
        with load.lock:
            load.failures.append(f"{name}: {exc!r}")


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)


@dataclass
class BackupUnderLoad:
    load: Load
    sessions: dict[str, dict[str, str]]  # session id -> the headers of its owner
    launched_at: float
    began_at: float | None  # when the first file appeared in the backup's folder
    ended_at: float
    ran: Ran
    backup: Path
    beside: list[str]  # the backup's folder, right after the backup
    mode: int
    integrity: list[str]
    counts: tuple[int, int, int]  # users, sessions, messages in the file
    stored: dict[str, list[tuple[str, str, str]]]
    message_counts: dict[str, int]  # chat_sessions.message_count

    def acked_before_launch(self) -> list[Ack]:
        return [ack for ack in self.load.acks if ack.at < self.launched_at]


@pytest.fixture(scope="module")
def under_load(tmp_path_factory: pytest.TempPathFactory) -> BackupUnderLoad:
    """Writers on /chat/message, `chatgate backup` while they write, writers going on."""
    workdir = tmp_path_factory.mktemp("live")
    env = base_environment(workdir)
    backup = tmp_path_factory.mktemp("backups") / "chatgate-backup.db"
    load = Load()
    threads: list[threading.Thread] = []
    sessions: dict[str, dict[str, str]] = {}
    with ServerProcess(workdir, env, name="live") as server:
        try:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
                for name in ("ada", "grace"):
                    email = f"{name}@example.com"
                    registered = http.post(
                        "/auth/register", json={"email": email, "password": PASSWORD}
                    )
                    assert registered.status_code == 201, registered.text
                    headers = log_in(http, email)
                    for _ in range(2):
                        created = http.post("/chat/session/new", json={}, headers=headers)
                        assert created.status_code == 201, created.text
                        sessions[created.json()["session"]["id"]] = headers
            for n, (session_id, headers) in enumerate(sessions.items()):
                args = (server.url, headers, session_id, f"w{n}", load)
                threads.append(threading.Thread(target=writer, args=args, daemon=True))
            for thread in threads:
                thread.start()
            wait_for(lambda: load.count() >= ACKS_BEFORE or bool(load.failures), "writes")
            launched_at = time.monotonic()
            process = start(workdir, env, ("backup", str(backup)))
            began_at = None
            while began_at is None and process.poll() is None:
                if any(backup.parent.iterdir()):
                    began_at = time.monotonic()
                time.sleep(0.001)
            ran = finish(process, b"")
            ended_at = time.monotonic()
            wait_for(
                lambda: load.count(since=ended_at) >= ACKS_AFTER or bool(load.failures),
                "writes after the backup",
            )
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads), "a writer never stopped"
    beside = sorted(p.name for p in backup.parent.iterdir())
    mode = mode_of(backup) if backup.exists() else 0
    with read_only(backup) as db:
        integrity = [row[0] for row in db.execute("PRAGMA integrity_check")]
        users, session_count, messages = (
            db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608 - our names
            for table in ("users", "chat_sessions", "messages")
        )
        message_counts = dict(db.execute("SELECT id, message_count FROM chat_sessions"))
    return BackupUnderLoad(
        load=load,
        sessions=sessions,
        launched_at=launched_at,
        began_at=began_at,
        ended_at=ended_at,
        ran=ran,
        backup=backup,
        beside=beside,
        mode=mode,
        integrity=integrity,
        counts=(users, session_count, messages),
        stored=stored_messages(backup),
        message_counts=message_counts,
    )


@dataclass
class Restored:
    ran: Ran
    data_file: Path
    mode: int
    histories: dict[str, list[dict[str, Any]]]  # session id -> as the restored server answers


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory, under_load: BackupUnderLoad) -> Restored:
    """The backup restored into a fresh data folder, served by a second server."""
    workdir = tmp_path_factory.mktemp("restored")
    data_file = workdir / "data" / "chat.db"  # a folder that does not exist yet
    env = base_environment(data_file.parent)
    ran = chatgate(workdir, env, "restore", str(under_load.backup))
    assert ran.status == 0, ran.stderr
    mode = mode_of(data_file)
    histories: dict[str, list[dict[str, Any]]] = {}
    with (
        ServerProcess(workdir, env, name="restored") as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        for email in ("ada@example.com", "grace@example.com"):
            headers = log_in(http, email)
            listed = http.get("/chat/sessions", params={"limit": 100}, headers=headers)
            assert listed.status_code == 200, listed.text
            for session in listed.json()["sessions"]:
                histories[session["id"]] = history(http, headers, session["id"])
    return Restored(ran, data_file, mode, histories)


class TestABackupTakenUnderWriteLoad:
    def test_the_writers_kept_writing_before_during_and_after_it(
        self, under_load: BackupUnderLoad
    ) -> None:
        assert under_load.load.failures == []
        assert under_load.ran.status == 0, under_load.ran.stderr
        acks = under_load.load.acks
        assert sum(a.at < under_load.launched_at for a in acks) >= ACKS_BEFORE
        assert any(under_load.launched_at < a.at < under_load.ended_at for a in acks)
        assert sum(a.at > under_load.ended_at for a in acks) >= ACKS_AFTER

    def test_holds_every_message_acknowledged_before_it_started(
        self, under_load: BackupUnderLoad
    ) -> None:
        before = under_load.acked_before_launch()
        assert before
        for ack in before:
            stored = under_load.stored[ack.session_id]
            assert (ack.id, "user", ack.text) in stored, ack.text
            assert (ack.reply_id, "assistant", ack.reply) in stored, ack.reply

    def test_holds_every_message_acknowledged_before_it_began_copying(
        self, under_load: BackupUnderLoad
    ) -> None:
        # Stronger than the above: the process spends most of a second starting, while
        # the service checkpoints its older commits into the data file. What was
        # committed since is only in the write-ahead log, and must be in the copy too
        # (a plain `cp` of the data file would miss it).
        assert under_load.began_at is not None, "the backup never wrote into its folder"
        cutoff = under_load.began_at - COPY_MARGIN
        since_launch = [a for a in under_load.load.acks if under_load.launched_at < a.at < cutoff]
        assert since_launch, "nothing was acknowledged while the backup started"
        for ack in since_launch:
            stored = under_load.stored[ack.session_id]
            assert (ack.id, "user", ack.text) in stored, ack.text
            assert (ack.reply_id, "assistant", ack.reply) in stored, ack.reply

    def test_is_the_database_as_of_one_commit(self, under_load: BackupUnderLoad) -> None:
        assert set(under_load.stored) <= set(under_load.sessions)
        replies = {ack.id: (ack.reply_id, ack.reply) for ack in under_load.load.acks}
        for session_id, messages in under_load.stored.items():
            # No question without its answer: each exchange is one write.
            assert [role for _, role, _ in messages] == ["user", "assistant"] * (len(messages) // 2)
            for (asked_id, _, text), (reply_id, _, reply) in zip(
                messages[::2], messages[1::2], strict=True
            ):
                assert reply == f"Echo: {text}"
                if asked_id in replies:
                    assert replies[asked_id] == (reply_id, reply)
            assert under_load.message_counts[session_id] == len(messages)
        # And not what was written after it ended: it is a snapshot, not the live file.
        later = [a for a in under_load.load.acks if a.at > under_load.ended_at]
        stored_ids = {m[0] for messages in under_load.stored.values() for m in messages}
        assert any(ack.id not in stored_ids for ack in later)

    def test_passes_sqlites_integrity_check(self, under_load: BackupUnderLoad) -> None:
        assert under_load.integrity == ["ok"]

    def test_is_one_file_only_its_owner_can_read(self, under_load: BackupUnderLoad) -> None:
        assert under_load.beside == [under_load.backup.name]  # no -wal, -shm or partial copy
        assert under_load.mode == 0o600
        with read_only(under_load.backup) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"

    def test_says_what_it_holds(self, under_load: BackupUnderLoad) -> None:
        assert f" to {under_load.backup}: " in under_load.ran.stdout
        said = COUNTS.search(under_load.ran.stdout)
        assert said, under_load.ran.stdout
        users, sessions, messages = under_load.counts
        assert [int(n) for n in said.groups()] == [SCHEMA_VERSION, users, sessions, messages]
        assert (users, sessions) == (2, len(under_load.sessions))

    def test_restores_into_a_fresh_folder_and_serves_every_acknowledged_message(
        self, under_load: BackupUnderLoad, restored: Restored
    ) -> None:
        assert COUNTS.search(restored.ran.stdout)
        assert "migrated" not in restored.ran.stdout
        assert restored.mode == 0o600
        assert set(restored.histories) == set(under_load.sessions)
        for ack in under_load.acked_before_launch():
            messages = restored.histories[ack.session_id]
            ids = [m["id"] for m in messages]
            asked, answered = messages[ids.index(ack.id)], messages[ids.index(ack.id) + 1]
            assert asked["content"].encode() == ack.text.encode()
            assert (answered["id"], answered["content"]) == (ack.reply_id, ack.reply)

    def test_serves_exactly_what_the_backup_holds(
        self, under_load: BackupUnderLoad, restored: Restored
    ) -> None:
        for session_id, messages in restored.histories.items():
            served = [(m["id"], m["role"], m["content"]) for m in messages]
            assert served == under_load.stored.get(session_id, [])


# --- the operator's mistakes, and an old backup ------------------------------------


@dataclass
class Database:
    """A chatgate database (one user, one exchange) and the environment naming it."""

    workdir: Path
    path: Path
    env: dict[str, str]

    def files(self) -> dict[str, str]:
        """Every file in the data folder and its contents' hash."""
        return {p.name: sha256_of(p) for p in sorted(self.path.parent.iterdir())}


@pytest.fixture
async def database(tmp_path: Path) -> Database:
    path = tmp_path / "data" / "chat.db"
    env = base_environment(path.parent)
    async with running(make_settings(path.parent, database_url=env["DATABASE_URL"])) as (_, c):
        registered = await c.post(
            "/auth/register", json={"email": "ada@example.com", "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        login = await c.post("/auth/login", json={"email": "ada@example.com", "password": PASSWORD})
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = await c.post(
            "/chat/session/new", json={"initial_message": "hello"}, headers=headers
        )
        assert created.status_code == 201, created.text
    return Database(tmp_path, path, env)


class TestBackupTargets:
    def test_into_a_folder_writes_a_timestamped_file_inside_it(self, database: Database) -> None:
        folder = database.workdir / "backups"
        folder.mkdir()
        ran = chatgate(database.workdir, database.env, "backup", str(folder))
        assert ran.status == 0, ran.stderr
        [made] = list(folder.iterdir())
        stamp = re.fullmatch(r"chat-(\d{8}T\d{6}Z)\.db", made.name)
        assert stamp, made.name
        taken = datetime.strptime(stamp[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        assert abs(datetime.now(UTC) - taken) < timedelta(minutes=5)
        assert f" to {made}: " in ran.stdout
        assert mode_of(made) == 0o600
        said = COUNTS.search(ran.stdout)
        assert said
        assert [int(n) for n in said.groups()] == [SCHEMA_VERSION, 1, 1, 2]
        assert stored_messages(made) == stored_messages(database.path)

    def test_two_backups_into_a_folder_within_a_second_both_land(self, database: Database) -> None:
        folder = database.workdir / "twice"
        folder.mkdir()
        for _ in range(2):
            ran = chatgate(database.workdir, database.env, "backup", str(folder))
            assert ran.status == 0, ran.stderr
        assert len(list(folder.iterdir())) == 2

    def test_into_a_folder_that_does_not_exist_fails_and_makes_nothing(
        self, database: Database
    ) -> None:
        ran = chatgate(database.workdir, database.env, "backup", "missing/")
        assert ran.status == 1, ran.stderr
        assert ran.error == "chatgate: missing is not a folder; create it first"
        assert not (database.workdir / "missing").exists()

    def test_onto_an_existing_file_fails_and_leaves_it_alone(self, database: Database) -> None:
        folder = database.workdir / "backups"
        folder.mkdir()
        precious = folder / "last-week.db"
        precious.write_bytes(b"last week's backup")
        ran = chatgate(database.workdir, database.env, "backup", str(precious))
        assert ran.status == 1
        assert ran.error.startswith(f"chatgate: {precious} already exists")
        assert ran.stdout == ""
        assert precious.read_bytes() == b"last week's backup"
        assert [p.name for p in folder.iterdir()] == ["last-week.db"]  # no partial copy

    def test_without_a_database_fails_and_creates_none(self, tmp_path: Path) -> None:
        env = base_environment(tmp_path / "data")
        ran = chatgate(tmp_path, env, "backup", str(tmp_path / "backup.db"))
        assert ran.status == 1
        assert ran.error.startswith("chatgate: there is no database at ")
        assert sorted(p.name for p in tmp_path.iterdir()) == []


class TestRestoreMistakes:
    @pytest.mark.parametrize("existing", ["chat.db", "chat.db-wal"])
    def test_into_an_existing_database_fails_and_changes_nothing(
        self, existing: str, database: Database
    ) -> None:
        data = database.path.parent
        if existing != database.path.name:
            # A write-ahead log left by a crash, its database moved away: SQLite would
            # apply it to whatever file appears there next.
            database.path.rename(database.workdir / "moved-away.db")
            (data / existing).write_bytes(b"not ours to replace")
        before = database.files()
        ran = chatgate(database.workdir, database.env, "restore", str(FIXTURE_DB))
        assert ran.status == 1
        assert ran.error.startswith(f"chatgate: {data / existing} already exists")
        assert ran.stdout == ""
        assert database.files() == before

    @pytest.mark.parametrize(
        ("content", "says"),
        [
            (b"just some text, not a database\n" * 200, "is not a chatgate database"),
            (None, "that file is an SQLite database, but not chatgate's"),
        ],
        ids=["a text file", "another program's SQLite file"],
    )
    def test_of_a_file_that_is_not_a_chatgate_backup_fails(
        self, content: bytes | None, says: str, tmp_path: Path
    ) -> None:
        backup = tmp_path / "backup.db"
        if content is None:
            with contextlib.closing(sqlite3.connect(backup)) as db:
                db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
                db.commit()
        else:
            backup.write_bytes(content)
        data_file = tmp_path / "data" / "chat.db"
        env = base_environment(data_file.parent)
        ran = chatgate(tmp_path, env, "restore", str(backup))
        assert ran.status == 1
        assert says in ran.error
        assert ran.stdout == ""
        assert not data_file.exists()
        assert not data_file.parent.exists() or list(data_file.parent.iterdir()) == []

    def test_of_a_backup_from_a_newer_chatgate_fails(self, tmp_path: Path) -> None:
        backup = tmp_path / "backup.db"
        write_newer_database(backup)
        data_file = tmp_path / "data" / "chat.db"
        ran = chatgate(tmp_path, base_environment(data_file.parent), "restore", str(backup))
        assert ran.status == 1
        assert "newer than this chatgate" in ran.error
        assert not data_file.exists()


class TestRestoreOfAnOldBackup:
    def test_migrates_it_and_serves_every_old_users_history(self, tmp_path: Path) -> None:
        data_file = tmp_path / "data" / "chat.db"
        env = base_environment(data_file.parent)
        ran = chatgate(tmp_path, env, "restore", str(FIXTURE_DB))
        assert ran.status == 0, ran.stderr
        assert f"migrated from schema version 2 to {SCHEMA_VERSION}\n" in ran.stdout
        with read_only(data_file) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert sha256_of(FIXTURE_DB) == RECORDED["sha256"]  # the backup itself untouched
        with (
            ServerProcess(tmp_path, env, name="old-backup") as server,
            httpx.Client(base_url=server.url, timeout=TIMEOUT) as http,
        ):
            for user in RECORDED["users"]:
                headers = log_in(http, user["email"], user["password"])
                listed = http.get("/chat/sessions", params={"limit": 100}, headers=headers)
                assert listed.json()["sessions"] == [s["session"] for s in user["sessions"]]
                for recorded in user["sessions"]:
                    messages = history(http, headers, recorded["session"]["id"])
                    assert messages == recorded["messages"]
