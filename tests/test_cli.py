"""The `chatgate` command, run as an operator runs it: a real process in a folder of its own.

Every command is `.venv/bin/chatgate ...` in a subprocess, its environment built
as tests/server_process.py builds the server's (nothing of the caller's own
chatgate settings leaks in), its stdin a pipe or, for the password prompt, a
pseudo-terminal. What a command did is checked as a user would notice it: over
HTTP, against a real server on the same data file.
"""

import contextlib
import os
import re
import select
import shutil
import signal
import sqlite3
import stat
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.cli import DEFAULT_HOST, DEFAULT_PORT
from app.db import SCHEMA_VERSION
from tests.cli_process import (
    CHATGATE,
    COMMAND_TIMEOUT,
    Ran,
    chatgate,
    chatgate_together,
    write_newer_database,
)
from tests.server_process import (
    REPO_ROOT,
    START_TIMEOUT,
    ServerProcess,
    base_environment,
    child_environment,
    free_port,
)

TIMEOUT = httpx.Timeout(15.0)
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a new and different passphrase"
FIXTURE_DB = Path(__file__).parent / "fixtures" / "schema2.db"


class Terminal:
    """chatgate with a pseudo-terminal as stdin, stdout and stderr, as in a person's shell.

    It runs in a session of its own, without a controlling terminal, so getpass
    prompts on this pseudo-terminal and never on the terminal running the tests.
    """

    def __init__(self, workdir: Path, env: dict[str, str], *args: str) -> None:
        self.master, self.slave = os.openpty()
        self.screen = b""
        self.process = subprocess.Popen(  # noqa: S603 - our own console script and arguments
            [CHATGATE, *args],
            cwd=workdir,
            env=child_environment(env),
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            start_new_session=True,
        )

    def expect(self, text: str, timeout: float = COMMAND_TIMEOUT) -> None:
        """Waits until `text` is on the screen (typing before a prompt could be flushed)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.screen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.master], [], [], left)[0]:
                pytest.fail(f"{text!r} never appeared; the screen shows {self.screen!r}")
            self.screen += os.read(self.master, 4096)

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")  # Enter

    def echoes(self) -> bool:
        """Whether the terminal shows what is typed (a prompt turns that off for a while)."""
        return bool(termios.tcgetattr(self.slave)[3] & termios.ECHO)

    def wait(self) -> int:
        status = self.process.wait(timeout=COMMAND_TIMEOUT)
        while select.select([self.master], [], [], 0.1)[0]:
            self.screen += os.read(self.master, 4096)
        assert b"Traceback" not in self.screen, self.screen
        return status

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        os.close(self.master)
        os.close(self.slave)


@contextlib.contextmanager
def terminal(workdir: Path, env: dict[str, str], *args: str) -> Iterator[Terminal]:
    tty = Terminal(workdir, env, *args)
    try:
        yield tty
    finally:
        tty.close()


# --- the service the commands work on ---------------------------------------------


@dataclass(frozen=True)
class Login:
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class Service:
    """A running chatgate and the environment (so the data file) the commands get."""

    workdir: Path
    env: dict[str, str]
    http: httpx.Client

    def run(self, *args: str, stdin: bytes = b"") -> Ran:
        return chatgate(self.workdir, self.env, *args, stdin=stdin)

    def log_in(self, email: str, password: str) -> httpx.Response:
        return self.http.post("/auth/login", json={"email": email, "password": password})

    def login(self, email: str, password: str) -> Login:
        response = self.log_in(email, password)
        assert response.status_code == 200, response.text
        body = response.json()
        return Login(body["access_token"], body["refresh_token"])

    def register(self, email: str, password: str = PASSWORD) -> Login:
        response = self.http.post("/auth/register", json={"email": email, "password": password})
        assert response.status_code == 201, response.text
        return self.login(email, password)

    def me(self, login: Login) -> httpx.Response:
        return self.http.get("/auth/me", headers=login.headers)

    def stats(self, login: Login) -> int:
        return self.http.get("/admin/stats", headers=login.headers).status_code


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("cli")
    env = base_environment(workdir)
    with (
        ServerProcess(workdir, env, name="cli") as server,
        httpx.Client(base_url=server.url, timeout=TIMEOUT) as http,
    ):
        yield Service(workdir, env, http)


def wait_until_healthy(url: str, process: "subprocess.Popen[bytes]", log: Path) -> int:
    deadline = time.monotonic() + START_TIMEOUT
    with httpx.Client(base_url=url, timeout=2.0) as probe:
        while True:
            if process.poll() is not None:
                pytest.fail(f"chatgate serve exited at start-up:\n{log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                response = probe.get("/healthz")
                return response.status_code
            if time.monotonic() > deadline:
                pytest.fail(f"chatgate serve did not answer:\n{log.read_text()}")
            time.sleep(0.05)


@dataclass
class FirstStart:
    workdir: Path
    created: Ran
    modes: dict[str, int]  # what create-user left in the data folder, before any server ran
    healthz: int
    me: httpx.Response
    stats: int
    exit_status: int
    log: str


@pytest.fixture(scope="module")
def first_start(tmp_path_factory: pytest.TempPathFactory) -> FirstStart:
    """A fresh machine: no settings but the defaults, no data folder. The operator
    creates the first admin, then runs `chatgate serve`, logs in, and stops it."""
    workdir = tmp_path_factory.mktemp("first-start")
    env = {"BCRYPT_ROUNDS": "4"}  # and the defaults: ./data/chatgate.db, a generated key
    email, password = "  Root@Example.COM ", "the very first password"
    created = chatgate(
        workdir,
        env,
        *("create-user", "--email", email, "--display-name", "Root", "--admin"),
        stdin=f"{password}\n".encode(),
    )
    data = workdir / "data"
    modes = {}
    if data.exists():
        modes = {
            path.relative_to(workdir).as_posix(): stat.S_IMODE(path.stat().st_mode)
            for path in (data, *data.iterdir())
        }
    port = free_port()
    log_path = workdir / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own console script and arguments
            [CHATGATE, "serve", "--port", str(port)],
            cwd=workdir,
            env=child_environment(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        healthz = wait_until_healthy(url, process, log_path)
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            login = http.post(
                "/auth/login", json={"email": email.strip().lower(), "password": password}
            )
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            me = http.get("/auth/me", headers=headers)
            stats = http.get("/admin/stats", headers=headers).status_code
        process.send_signal(signal.SIGTERM)
        exit_status = process.wait(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    return FirstStart(
        workdir, created, modes, healthz, me, stats, exit_status, log_path.read_text()
    )


# --- the tests ---------------------------------------------------------------------


class TestCreateUser:
    def test_an_admin_created_from_stdin_logs_in_with_that_password(self, service: Service) -> None:
        ran = service.run(
            "create-user", "--email", "  Grace@Example.COM ", "--admin", stdin=b"hopper 1906\n"
        )
        assert ran.status == 0, ran.stderr
        assert ran.stderr == ""
        created = re.fullmatch(r"created admin grace@example\.com \(id (\S+)\)\n", ran.stdout)
        assert created, ran.stdout
        login = service.login("grace@example.com", "hopper 1906")
        me = service.me(login).json()["user"]
        assert me["id"] == created[1]
        assert me["email"] == "grace@example.com"  # stored without case or spaces
        assert me["role"] == "admin"
        assert service.stats(login) == 200

    def test_the_password_is_the_first_line_of_stdin_with_only_its_line_ending_removed(
        self, service: Service
    ) -> None:
        password = "  spaces count \t"
        ran = service.run(
            *("create-user", "--email", "ada@example.com", "--display-name", "Ada L."),
            stdin=f"{password}\r\nnot the password\n".encode(),
        )
        assert ran.status == 0, ran.stderr
        assert ran.stdout.startswith("created user ada@example.com ")
        for wrong in (password.strip(), f"{password}\r", "not the password"):
            assert service.log_in("ada@example.com", wrong).status_code == 401
        login = service.login("ada@example.com", password)
        me = service.me(login).json()["user"]
        assert (me["display_name"], me["role"]) == ("Ada L.", "user")
        assert service.stats(login) == 403

    def test_a_taken_email_is_refused_and_the_account_is_kept(self, service: Service) -> None:
        service.register("taken@example.com")
        ran = service.run(
            "create-user", "--email", "TAKEN@example.com", "--admin", stdin=b"another password\n"
        )
        assert ran.status == 1
        assert ran.error == "chatgate: User already exists"
        assert ran.stdout == ""
        assert service.log_in("taken@example.com", "another password").status_code == 401
        login = service.login("taken@example.com", PASSWORD)
        assert service.me(login).json()["user"]["role"] == "user"

    def test_the_first_admin_can_be_created_before_the_service_ever_started(
        self, first_start: FirstStart
    ) -> None:
        assert first_start.created.status == 0, first_start.created.stderr
        assert first_start.created.stdout.startswith("created admin root@example.com ")
        # The default DATABASE_URL, made private as the service makes it.
        assert first_start.modes == {"data": 0o700, "data/chatgate.db": 0o600}
        user = first_start.me.json()["user"]
        assert (user["email"], user["display_name"], user["role"]) == (
            "root@example.com",
            "Root",
            "admin",
        )
        assert first_start.stats == 200


class TestPasswordPrompt:
    def test_a_password_typed_twice_is_not_shown_and_logs_in(self, service: Service) -> None:
        password = "typed at the prompt"
        with terminal(
            service.workdir, service.env, "create-user", "--email", "tty@example.com"
        ) as tty:
            tty.expect("Password: ")
            assert not tty.echoes()
            tty.type(password)
            tty.expect("Repeat it: ")
            tty.type(password)
            assert tty.wait() == 0, tty.screen
            assert tty.echoes()
        assert b"created user tty@example.com" in tty.screen
        assert password.encode() not in tty.screen
        service.login("tty@example.com", password)

    def test_two_different_passwords_create_nothing(self, service: Service) -> None:
        with terminal(
            service.workdir, service.env, "create-user", "--email", "typo@example.com"
        ) as tty:
            tty.expect("Password: ")
            tty.type("the first password")
            tty.expect("Repeat it: ")
            tty.type("the first pasword")
            assert tty.wait() == 2, tty.screen
        assert b"chatgate: the two passwords differ; nothing was changed" in tty.screen
        for password in ("the first password", "the first pasword"):
            assert service.log_in("typo@example.com", password).status_code == 401

    def test_ctrl_d_at_the_prompt_is_a_usage_error_and_creates_nothing(
        self, service: Service
    ) -> None:
        with terminal(
            service.workdir, service.env, "create-user", "--email", "eof@example.com"
        ) as tty:
            tty.expect("Password: ")
            os.write(tty.master, b"\x04")  # Ctrl-D: end of input
            assert tty.wait() == 2, tty.screen
        assert b"chatgate: no password given; nothing was changed" in tty.screen
        assert service.log_in("eof@example.com", PASSWORD).status_code == 401

    def test_ctrl_c_at_the_prompt_exits_130_with_the_terminal_as_it_was(
        self, service: Service
    ) -> None:
        with terminal(
            service.workdir, service.env, "reset-password", "--email", "x@example.com"
        ) as tty:
            tty.expect("Password: ")
            assert not tty.echoes()
            tty.process.send_signal(signal.SIGINT)
            assert tty.wait() == 130, tty.screen
            assert tty.echoes()  # what is typed next in that shell shows again
        assert tty.screen.endswith(b"chatgate: interrupted\r\n")


@dataclass(frozen=True)
class Mistake:
    args: tuple[str, ...]
    stdin: bytes
    status: int
    says: str  # in the last line of stderr
    email: str | None = None  # an account that must still not exist


ENOUGH = b"long enough password\n"
MISTAKES = {
    "an invalid email": Mistake(
        ("create-user", "--email", "ada@"), ENOUGH, 2, "chatgate: --email: "
    ),
    "a password under 8 characters": Mistake(
        ("create-user", "--email", "short@example.com"),
        b"seven77\n",
        2,
        "chatgate: the password: String should have at least 8 characters",
        "short@example.com",
    ),
    "no password on stdin": Mistake(
        ("create-user", "--email", "empty@example.com"),
        b"",
        2,
        "chatgate: no password: type it at the prompt, or pipe it on stdin",
        "empty@example.com",
    ),
    "a password on the command line": Mistake(
        ("create-user", "--email", "argv@example.com", "--password", "long enough password"),
        ENOUGH,
        2,
        "chatgate: error: unrecognized arguments: --password",
        "argv@example.com",
    ),
    "no command": Mistake((), b"", 2, "chatgate: error: the following arguments are required"),
    "an unknown role": Mistake(
        ("set-role", "--email", "ada@example.com", "root"),
        b"",
        2,
        "chatgate set-role: error: argument role: invalid choice: 'root'",
    ),
    "a new password for an unknown email": Mistake(
        ("reset-password", "--email", "nobody@example.com"), ENOUGH, 1, "chatgate: User not found"
    ),
    "a role for an unknown email": Mistake(
        ("set-role", "--email", "nobody@example.com", "admin"), b"", 1, "chatgate: User not found"
    ),
}


@pytest.fixture(scope="module")
def mistakes(service: Service) -> dict[str, Ran]:
    runs = [(m.args, m.stdin) for m in MISTAKES.values()]
    return dict(zip(MISTAKES, chatgate_together(service.workdir, service.env, runs), strict=True))


class TestMistakes:
    @pytest.mark.parametrize("mistake", MISTAKES)
    def test_end_with_one_line_saying_why_and_change_nothing(
        self, mistake: str, mistakes: dict[str, Ran], service: Service
    ) -> None:
        expected, ran = MISTAKES[mistake], mistakes[mistake]
        assert ran.status == expected.status, ran.stderr
        assert ran.stdout == ""
        lines = ran.stderr.splitlines()
        assert lines[-1].startswith(expected.says), ran.stderr
        if not ran.stderr.startswith("usage: "):  # argparse's own: usage, then the error
            assert ran.error == lines[-1]  # ours: that one line and nothing else
        if expected.email:
            registered = service.http.post(
                "/auth/register", json={"email": expected.email, "password": PASSWORD}
            )
            assert registered.status_code == 201, registered.text

    @pytest.mark.parametrize(
        "args",
        [
            ("reset-password", "--email", "ada@example.com"),
            ("set-role", "--email", "ada@example.com", "admin"),
            ("migrate",),
        ],
        ids=["reset-password", "set-role", "migrate"],
    )
    def test_a_mistyped_database_url_is_refused_and_no_database_is_made(
        self, tmp_path: Path, args: tuple[str, ...]
    ) -> None:
        env = base_environment(tmp_path) | {"DATABASE_URL": "sqlite:///./dta/chat.db"}
        ran = chatgate(tmp_path, env, *args, stdin=ENOUGH)
        assert ran.status == 1, ran.stderr
        assert ran.error.startswith("chatgate: there is no database at dta/chat.db")
        assert not (tmp_path / "dta").exists()

    def test_a_placeholder_jwt_secret_is_refused_before_anything_is_touched(
        self, tmp_path: Path
    ) -> None:
        env = base_environment(tmp_path) | {"JWT_SECRET_KEY": "changeme"}
        ran = chatgate(tmp_path, env, "create-user", "--email", "ada@example.com", stdin=ENOUGH)
        assert ran.status == 1
        assert ran.error.startswith(
            "chatgate: JWT_SECRET_KEY is a well-known placeholder, not a secret; generate one"
        )
        assert "changeme" not in ran.stderr  # the rejected secret is not printed back
        assert not (tmp_path / "chat.db").exists()


class TestResetPassword:
    def test_the_new_password_works_and_every_earlier_login_ends(self, service: Service) -> None:
        phone = service.register("forgetful@example.com")
        laptop = service.login("forgetful@example.com", PASSWORD)
        ran = service.run(
            "reset-password",
            "--email",
            " Forgetful@Example.com",
            stdin=f"{NEW_PASSWORD}\n".encode(),
        )
        assert ran.status == 0, ran.stderr
        assert ran.stdout == (
            "new password set for forgetful@example.com; every login of theirs has ended\n"
        )
        assert service.log_in("forgetful@example.com", PASSWORD).status_code == 401
        fresh = service.login("forgetful@example.com", NEW_PASSWORD)
        assert service.me(fresh).status_code == 200
        for old in (phone, laptop):
            assert service.me(old).status_code == 401
            refreshed = service.http.post(
                "/auth/refresh", json={"refresh_token": old.refresh_token}
            )
            assert refreshed.status_code == 401, refreshed.text


class TestSetRole:
    def test_promoting_a_user_lets_them_into_the_admin_api(self, service: Service) -> None:
        before = service.register("promoted@example.com")
        assert service.stats(before) == 403
        ran = service.run("set-role", "--email", "Promoted@example.com", "admin")
        assert ran.status == 0, ran.stderr
        assert ran.stdout == "promoted@example.com is now an admin (was user)\n"
        assert service.stats(service.login("promoted@example.com", PASSWORD)) == 200
        # The stored role is read on every request: the token from before counts too.
        assert service.stats(before) == 200
        assert service.me(before).json()["user"]["role"] == "admin"

    def test_demoting_an_admin_shuts_them_out_at_once(self, service: Service) -> None:
        made = service.run(
            "create-user",
            "--email",
            "demoted@example.com",
            "--admin",
            stdin=f"{PASSWORD}\n".encode(),
        )
        assert made.status == 0, made.stderr
        login = service.login("demoted@example.com", PASSWORD)
        assert service.stats(login) == 200
        ran = service.run("set-role", "--email", "demoted@example.com", "user")
        assert ran.status == 0, ran.stderr
        assert ran.stdout == "demoted@example.com is now a user (was admin)\n"
        assert service.stats(login) == 403
        assert service.me(login).json()["user"]["role"] == "user"


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


class TestMigrate:
    def test_an_old_database_is_brought_up_to_date_once(self, tmp_path: Path) -> None:
        data_file = tmp_path / "chat.db"
        shutil.copyfile(FIXTURE_DB, data_file)
        env = base_environment(tmp_path)
        assert user_version(data_file) == 2 < SCHEMA_VERSION
        first = chatgate(tmp_path, env, "migrate")
        assert first.status == 0, first.stderr
        assert first.stdout == (f"{data_file} migrated from schema version 2 to {SCHEMA_VERSION}\n")
        assert user_version(data_file) == SCHEMA_VERSION
        again = chatgate(tmp_path, env, "migrate")
        assert again.status == 0, again.stderr
        assert again.stdout == f"{data_file} is already at schema version {SCHEMA_VERSION}\n"

    def test_a_database_from_a_newer_chatgate_is_refused(self, tmp_path: Path) -> None:
        data_file = tmp_path / "chat.db"
        write_newer_database(data_file)
        data_file.chmod(0o600)  # as chatgate makes it, or it says it fixed the mode
        ran = chatgate(tmp_path, base_environment(tmp_path), "migrate")
        assert ran.status == 1
        assert "newer than this chatgate" in ran.error
        assert ran.stdout == ""
        assert user_version(data_file) == SCHEMA_VERSION + 1


class TestServe:
    def test_answers_health_checks_and_logins(self, first_start: FirstStart) -> None:
        assert first_start.healthz == 200
        assert first_start.me.status_code == 200

    def test_stops_cleanly_on_sigterm(self, first_start: FirstStart) -> None:
        # uvicorn shuts down, then re-raises the signal it caught: 0 or "ended by SIGTERM".
        assert first_start.exit_status in (0, -signal.SIGTERM), first_start.log
        assert "Application shutdown complete" in first_start.log
        assert "Traceback" not in first_start.log
        # The last connection checkpointed the write-ahead log into the file.
        data = first_start.workdir / "data"
        assert not list(data.glob("chatgate.db-*"))

    def test_listens_where_the_readme_and_make_run_say_by_default(self) -> None:
        assert (DEFAULT_HOST, DEFAULT_PORT) == ("127.0.0.1", 8009)
        readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
        assert f"http://{DEFAULT_HOST}:{DEFAULT_PORT}" in readme
        makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
        assert re.search(rf"^HOST\s*\?=\s*{re.escape(DEFAULT_HOST)}$", makefile, re.M)
        assert re.search(rf"^PORT\s*\?=\s*{DEFAULT_PORT}$", makefile, re.M)
