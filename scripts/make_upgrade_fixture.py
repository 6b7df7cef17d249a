"""Make tests/fixtures/schema2.db and schema2.json with a released chatgate's own code.

    .venv/bin/python scripts/make_upgrade_fixture.py            # the first release, c89f28e
    .venv/bin/python scripts/make_upgrade_fixture.py <commit>   # another one

The commit is checked out in a temporary git worktree and served by uvicorn in a
subprocess (PYTHONPATH at the worktree, an empty working directory, the echo
assistant). Users, sessions and messages are created through its HTTP API, as
people made them; it is then stopped with SIGTERM, so it checkpoints its WAL
into the database file, and that file is copied to tests/fixtures/schema2.db.
schema2.json records every user's email and password and every session with
its messages as that version returned them: tests/test_upgrade.py checks that
the current chatgate, started on a copy of the file, gives them all back.
"""

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEFAULT_COMMIT = "c89f28e"
EXPECTED_SCHEMA = 2
GIT = shutil.which("git") or "git"

PARAGRAPH = (
    "the quick brown fox jumps over the lazy dog; Ünïcödé, 'quotes', \"double quotes\", "
    "<tags> & ampersands, a semicolon; -- a comment; 🦊🐶 مرحبا שלום. "
)
# About 19,000 characters (the limit is 32,000): many pages of the database file.
LONG_TEXT = "\n".join(f"Paragraph {n}: {PARAGRAPH * 3}" for n in range(40))
# Text that a careless layer would change: quotes, SQL, HTML, emoji (with joiners and
# flags), right-to-left scripts and direction marks, every kind of line break,
# surrounding blanks, NUL, decomposed accents, backslashes, JSON inside JSON.
TRICKY = {
    "quotes": "She said \"it's fine\" and 'it isn't', then `backticks` and "
    "\u201ccurly\u201d \u2018ones\u2019.",
    "sql": "Robert'); DROP TABLE users;-- and ' OR '1'='1 and 100% _match_ \\% LIKE",
    "html": '<script>alert("x")</script><b>bold</b> &amp; &lt;not a tag&gt; <img src=x onerror=1>',
    "emoji": "\U0001f469\u200d\U0001f4bb \U0001f680 \U0001f1eb\U0001f1f7 "
    "\U0001f3f3\ufe0f\u200d\U0001f308 \U0001f44d\U0001f3fd 🦊 and a lone ☃",
    "rtl": "مرحبا بالعالم — שלום עולם — a \u200fright-to-left mark\u200e "
    "and \u202eoverride\u202c end",
    "newlines": "line one\nline two\r\nline three\rline four\n\n\ttabbed\u2028separator\n",
    "blanks": "   padded on both sides, kept exactly   ",
    "nul": "before\u0000after a NUL character",
    "unicode": "e\u0301 (decomposed) vs \u00e9 (composed), ß, ﬁ ligature, zero\u200bwidth, "
    "\U0001d518\U0001d52b\U0001d526 (Fraktur)",
    "backslashes": 'C:\\Users\\ada\\new\\table.txt and \\n is not a newline, {"role": "x"}',
    "long": LONG_TEXT,
}

# (email as typed, password, display name or None)
USERS = [
    ("Ada.Lovelace@Example.COM", "analytical engine 1843", "Ada Lovelace 🧮"),
    ("Grace.Hopper@Navy.example.org", "first password, to be changed", None),
    ("bob@EXAMPLE.net", 'b0b\'s p@ss "quoted" wörd', None),
    ("Zoë.Müller@Example.de", "    spaces count too    ", "Zoë «Z» Müller"),
]
NEW_PASSWORD = "second password, after the change"  # noqa: S105 - a test account


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def git(*args: str) -> str:
    result = subprocess.run(  # noqa: S603 - fixed git arguments
        [GIT, "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    )
    return result.stdout.strip()


class Release:
    """One released chatgate, served from a worktree, with an HTTP client on it."""

    def __init__(self, worktree: Path, workdir: Path) -> None:
        self.db_path = workdir / "data" / "chatgate.db"
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(worktree),
            "PYTHONDONTWRITEBYTECODE": "1",
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "JWT_SECRET_KEY": secrets.token_urlsafe(48),
            "BCRYPT_ROUNDS": "4",
            "ASSISTANT_PROVIDER": "echo",
            "LOG_LEVEL": "WARNING",
        }
        self.workdir = workdir
        self.worktree = worktree
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def check_code_is_the_release(self) -> None:
        """The `app` package imported must be the worktree's, not the installed chatgate."""
        found = subprocess.run(
            [sys.executable, "-c", "import app; print(app.__file__)"],
            env=self.env,
            cwd=self.workdir,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not Path(found).resolve().is_relative_to(self.worktree.resolve()):
            sys.exit(f"the release's code is not the one imported: {found}")

    def start(self) -> None:
        self.check_code_is_the_release()
        command = [sys.executable, "-m", "uvicorn", "app.main:app", "--no-proxy-headers"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning"]
        self.process = subprocess.Popen(command, env=self.env, cwd=self.workdir)  # noqa: S603
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"the release exited at start-up with {self.process.returncode}")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        sys.exit("the release did not become ready within 30 s")

    def stop(self) -> None:
        """SIGTERM: uvicorn runs the lifespan's shutdown, closing every connection, and
        the last connection to close checkpoints the WAL into the file and removes it."""
        self.http.close()
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                sys.exit("the release did not stop within 30 s of SIGTERM")
        # uvicorn re-raises the signal once its shutdown is complete: -SIGTERM is clean.
        if self.process.returncode not in (0, -signal.SIGTERM):
            sys.exit(f"the release stopped with exit status {self.process.returncode}")

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.http.request(method, path, headers=headers, **kw)
        if response.status_code >= 300:
            sys.exit(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()

    def send_streamed(self, token: str, session_id: str, text: str) -> None:
        body = {"session_id": session_id, "message": text}
        headers = {"Authorization": f"Bearer {token}"}
        with self.http.stream("POST", "/chat/send", json=body, headers=headers) as response:
            if response.status_code != 200:
                sys.exit(f"POST /chat/send: {response.status_code}")
            events = [line for line in response.iter_lines() if line.startswith("event:")]
        if events[-1] != "event: done":
            sys.exit(f"POST /chat/send did not end with done: {events[-1]}")


def populate(release: Release) -> dict[str, Any]:
    """Accounts, sessions and messages, made the way the release's users made them."""
    tokens: dict[str, str] = {}
    passwords: dict[str, str] = {}
    for email, password, display_name in USERS:
        body: dict[str, Any] = {"email": email, "password": password}
        if display_name is not None:
            body["display_name"] = display_name
        release.call("POST", "/auth/register", json=body)
        login = release.call("POST", "/auth/login", json={"email": email, "password": password})
        tokens[email] = login["access_token"]
        passwords[email] = password

    ada, grace, bob, zoe = (tokens[email] for email, _, _ in USERS)

    def new(token: str, **body: Any) -> str:
        session_id: str = release.call("POST", "/chat/session/new", token, json=body)["session"][
            "id"
        ]
        return session_id

    def say(token: str, session_id: str, *texts: str) -> None:
        for text in texts:
            release.call(
                "POST", "/chat/message", token, json={"session_id": session_id, "message": text}
            )

    # Ada: a titled session, one named by its first message, a renamed one, a streamed one.
    s = new(ada, title="Notes on the Analytical Engine")
    say(ada, s, TRICKY["quotes"], TRICKY["sql"], TRICKY["long"])
    s = new(ada, initial_message="What is a Bernoulli number?\nAsking for a program.")
    say(ada, s, TRICKY["emoji"])
    s = new(ada)
    say(ada, s, TRICKY["html"], TRICKY["newlines"], TRICKY["nul"])
    release.call("PATCH", f"/chat/session/{s}", ada, json={"title": '<b>Renamed</b> "title" 🚀'})
    s = new(ada, title="Streamed")
    release.send_streamed(ada, s, TRICKY["rtl"])
    release.send_streamed(ada, s, "a second streamed message")

    # Grace: sessions before and after changing her password, one of them deleted.
    s = new(grace, title="COBOL")
    say(grace, s, "MOVE 'HELLO' TO GREETING.", TRICKY["backslashes"])
    doomed = new(grace, title="To be deleted")
    say(grace, doomed, "this session and its messages must not come back")
    release.call(
        "POST",
        "/auth/password",
        grace,
        json={"current_password": passwords[USERS[1][0]], "new_password": NEW_PASSWORD},
    )
    old_passwords = {USERS[1][0]: [passwords[USERS[1][0]]]}
    passwords[USERS[1][0]] = NEW_PASSWORD
    deleted = {USERS[1][0]: [snapshot(release, grace, doomed)]}
    release.call("DELETE", f"/chat/session/{doomed}", grace)
    s = new(grace, title="After the password change")
    say(grace, s, TRICKY["unicode"])
    release.call("PATCH", f"/chat/session/{s}", grace, json={"title": "Renamed twice, first"})
    release.call("PATCH", f"/chat/session/{s}", grace, json={"title": "ﾟ･✿ renamed twice ✿･ﾟ"})

    # Bob: an empty session, one busy one.
    new(bob, title="Empty on purpose")
    s = new(bob, initial_message=TRICKY["blanks"])
    say(bob, s, *(f"message number {n} in order" for n in range(1, 11)))

    # Zoë: right-to-left and emoji, a renamed session.
    s = new(zoe, title="مرحبا")
    say(zoe, s, TRICKY["rtl"], TRICKY["emoji"], TRICKY["unicode"])
    s = new(zoe, initial_message=TRICKY["html"])
    release.call("PATCH", f"/chat/session/{s}", zoe, json={"title": "   kept with its blanks  "})

    return {
        "tokens": tokens,
        "passwords": passwords,
        "old_passwords": old_passwords,
        "deleted": deleted,
    }


def snapshot(release: Release, token: str, session_id: str) -> dict[str, Any]:
    """A session and its whole history, as the release answers them."""
    session = release.call("GET", f"/chat/session/{session_id}", token)["session"]
    history = release.call(
        "GET", f"/chat/session/{session_id}/history", token, params={"limit": 500}
    )
    if history["next_cursor"] is not None:
        sys.exit("more messages than one page")
    return {"session": session, "messages": history["messages"]}


def record(release: Release, made: dict[str, Any]) -> list[dict[str, Any]]:
    """What the release answers, for each user: their account, sessions and messages."""
    users = []
    for email, _, _ in USERS:
        token = made["tokens"][email]
        me = release.call("GET", "/auth/me", token)["user"]
        listed = release.call("GET", "/chat/sessions", token, params={"limit": 100})
        if listed["next_cursor"] is not None:
            sys.exit("more sessions than one page")
        sessions = [snapshot(release, token, session["id"]) for session in listed["sessions"]]
        if [s["session"] for s in sessions] != listed["sessions"]:
            sys.exit("a session read alone differs from the same session listed")
        users.append(
            {
                "email": email,
                "password": made["passwords"][email],
                "old_passwords": made["old_passwords"].get(email, []),
                "user": me,
                "sessions": sessions,
                "deleted_sessions": made["deleted"].get(email, []),
            }
        )
    return users


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commit", nargs="?", default=DEFAULT_COMMIT)
    parser.add_argument("--out", type=Path, default=FIXTURES, help="folder for the two files")
    args = parser.parse_args()
    commit = git("rev-parse", "--verify", f"{args.commit}^{{commit}}")

    with tempfile.TemporaryDirectory(prefix="chatgate-fixture-") as tmp:
        worktree = Path(tmp) / "release"
        workdir = Path(tmp) / "run"
        workdir.mkdir()
        git("worktree", "add", "--detach", str(worktree), commit)
        try:
            release = Release(worktree, workdir)
            try:
                release.start()
                made = populate(release)
                users = record(release, made)
            finally:
                release.stop()
        finally:
            git("worktree", "remove", "--force", str(worktree))
        db_path = release.db_path
        leftovers = [p.name for p in db_path.parent.iterdir() if p.name != db_path.name]
        leftovers = [name for name in leftovers if name.startswith(db_path.name)]
        if leftovers:
            sys.exit(f"the WAL was not checkpointed on shutdown: {leftovers} left")
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(db_path, args.out / "schema2.db")
        check_file(args.out / "schema2.db", users)

    fixture = {
        "commit": commit,
        "schema_version": EXPECTED_SCHEMA,
        # The test checks the file against this: it must work on a copy, never on it.
        "sha256": hashlib.sha256((args.out / "schema2.db").read_bytes()).hexdigest(),
        "users": users,
    }
    (args.out / "schema2.json").write_text(
        json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
    )
    size = (args.out / "schema2.db").stat().st_size
    sys.stdout.write(f"{args.out}/schema2.db ({size} bytes) and schema2.json from {commit}\n")


def check_file(path: Path, users: list[dict[str, Any]]) -> None:
    """The copy is a whole schema-2 file holding exactly the sessions the API listed."""
    # immutable=1: read the copy without creating -wal or -shm files beside it.
    with sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        ids = {row[0] for row in conn.execute("SELECT id FROM chat_sessions")}
        orphans = conn.execute(
            "SELECT count(*) FROM messages WHERE session_id NOT IN (SELECT id FROM chat_sessions)"
        ).fetchone()[0]
    conn.close()
    if version != EXPECTED_SCHEMA:
        sys.exit(f"{path} has schema version {version}, not {EXPECTED_SCHEMA}")
    if integrity != [("ok",)]:
        sys.exit(f"{path} fails its integrity check: {integrity}")
    listed = {s["session"]["id"] for user in users for s in user["sessions"]}
    if ids != listed:
        sys.exit(f"{path} holds other sessions than the API listed")
    if orphans:
        sys.exit(f"{path} holds {orphans} messages of deleted sessions")


if __name__ == "__main__":
    main()
