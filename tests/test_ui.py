"""The Streamlit app (chatgate_ui/), driven with Streamlit's own AppTest against a real chatgate.

chatgate runs as a process on a free port (tests/server_process.py); the app
talks to it over HTTP exactly as in a browser session, and what it did is
checked both on the page and, through chatgate's API, in the service.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jose import jwt
from streamlit.testing.v1 import AppTest

from chatgate_ui.client import ChatgateClient, ChatgateError, Tokens
from tests.fake_openai import FakeOpenAIServer
from tests.server_process import ServerProcess, base_environment, free_port

APP = str(Path(__file__).resolve().parents[1] / "chatgate_ui" / "app.py")
PASSWORD = "a streamlit password"


class Service:
    def __init__(self, process: ServerProcess) -> None:
        self.url = process.url
        self.secret = process.env["JWT_SECRET_KEY"]
        self.http = httpx.Client(base_url=process.url, timeout=15)
        self._made = 0

    def user(self, *, sessions: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
        """A registered user (email, auth headers) with a session per title, each with a
        message."""
        self._made += 1
        email = f"ui{self._made}@example.com"
        assert self.http.post(
            "/auth/register", json={"email": email, "password": PASSWORD}
        ).is_success
        token = self.login(email)["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        for title in sessions:
            created = self.http.post(
                "/chat/session/new",
                json={"title": title, "initial_message": f"about {title}"},
                headers=headers,
            )
            assert created.status_code == 201, created.text
        return email, headers

    def login(self, email: str) -> dict[str, Any]:
        response = self.http.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def sessions(self, headers: dict[str, str]) -> list[dict[str, Any]]:
        response = self.http.get("/chat/sessions", headers=headers)
        assert response.status_code == 200, response.text
        sessions: list[dict[str, Any]] = response.json()["sessions"]
        return sessions

    def history(self, headers: dict[str, str], session_id: str) -> list[str]:
        response = self.http.get(f"/chat/session/{session_id}/history", headers=headers)
        return [m["content"] for m in response.json()["messages"]]

    def expired(self, access_token: str) -> str:
        """The same access token as if it had been issued two hours ago."""
        claims = jwt.decode(access_token, self.secret, algorithms=["HS256"], issuer="chatgate")
        claims.update(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
        return jwt.encode(claims, self.secret, algorithm="HS256")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("ui")
    with ServerProcess(work, base_environment(work), name="ui") as process:
        running = Service(process)
        yield running
        running.http.close()
        log = process.log()
    assert "Traceback" not in log, log[-3000:]


def open_app(url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("CHATGATE_URL", url)
    at = AppTest.from_file(APP, default_timeout=30)
    at.run()
    assert not at.exception
    return at


@pytest.fixture
def app(service: Service, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    return open_app(service.url, monkeypatch)


def log_in(at: AppTest, email: str, password: str = PASSWORD) -> None:
    at.text_input(key="login_email").input(email)
    at.text_input(key="login_password").input(password)
    at.button(key="login_submit").click().run()
    assert not at.exception


def on_login_page(at: AppTest) -> bool:
    return any(b.key == "login_submit" for b in at.button)


def sidebar_titles(at: AppTest) -> list[str]:
    return [b.label for b in at.sidebar.button if str(b.key).startswith("open_")]


def chat(at: AppTest) -> list[tuple[str, str]]:
    return [(m.name, m.markdown[0].value) for m in at.chat_message]


def page_errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error] + [w.value for w in at.warning]


class TestAccount:
    def test_register_then_chat_from_an_empty_account(self, app: AppTest) -> None:
        app.text_input(key="register_email").input("newcomer@example.com")
        app.text_input(key="register_name").input("Newcomer")
        app.text_input(key="register_password").input(PASSWORD)
        app.button(key="register_submit").click().run()
        assert not app.exception
        assert not on_login_page(app)
        assert "Newcomer" in app.sidebar.caption[0].value
        assert sidebar_titles(app) == []

    def test_a_wrong_password_is_a_sentence_on_the_page(
        self, app: AppTest, service: Service
    ) -> None:
        email, _ = service.user()
        log_in(app, email, "not the password")
        assert page_errors(app) == ["Invalid credentials"]
        assert on_login_page(app)

    @pytest.mark.parametrize(
        ("password", "says"),
        [
            ("short", "Invalid value for password: String should have at least 8 characters."),
            (PASSWORD, "User already exists"),
        ],
        ids=["short-password", "taken-email"],
    )
    def test_sign_up_mistakes_are_chatgates_own_sentences(
        self, app: AppTest, service: Service, password: str, says: str
    ) -> None:
        email, _ = service.user()
        app.text_input(key="register_email").input(email)
        app.text_input(key="register_password").input(password)
        app.button(key="register_submit").click().run()
        assert not app.exception
        assert page_errors(app) == [says]

    def test_an_unreachable_service_is_a_sentence_not_a_traceback(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        at = open_app(url, monkeypatch)
        log_in(at, "anyone@example.com")
        assert page_errors(at) == [
            f"chatgate does not answer at {url}; is it running? (CHATGATE_URL)"
        ]


class TestChat:
    def test_log_in_create_send_rename_delete_log_out(self, app: AppTest, service: Service) -> None:
        email, headers = service.user()
        log_in(app, email)
        assert not on_login_page(app)

        app.button(key="new_chat").click().run()
        [session] = service.sessions(headers)
        assert sidebar_titles(app) == ["New chat"]

        app.chat_input[0].set_value("Hello from Streamlit").run()
        assert not app.exception
        # The reply came through /chat/send and is stored; the first message names the chat.
        assert chat(app) == [
            ("user", "Hello from Streamlit"),
            ("assistant", "Echo: Hello from Streamlit"),
        ]
        assert service.history(headers, session["id"]) == [
            "Hello from Streamlit",
            "Echo: Hello from Streamlit",
        ]
        assert sidebar_titles(app) == ["Hello from Streamlit"]

        app.text_input(key=f"title_{session['id']}_Hello from Streamlit").input(
            "Renamed in the app"
        )
        app.button(key="rename").click().run()
        assert [s["title"] for s in service.sessions(headers)] == ["Renamed in the app"]
        assert sidebar_titles(app) == ["Renamed in the app"]
        assert app.title[0].value == "Renamed in the app"

        app.button(key="delete").click().run()
        assert service.sessions(headers) == []
        assert sidebar_titles(app) == []

        tokens = app.session_state["tokens"]
        app.button(key="logout").click().run()
        assert on_login_page(app)
        assert [s.value for s in app.success] == ["Logged out."]
        # Logged out at chatgate too, not just forgotten by the page.
        assert service.http.get("/auth/me", headers=bearer(tokens.access_token)).status_code == 401
        refreshed = service.http.post("/auth/refresh", json={"refresh_token": tokens.refresh_token})
        assert refreshed.status_code == 401

    def test_earlier_sessions_come_back_with_their_history(
        self, app: AppTest, service: Service
    ) -> None:
        email, _ = service.user(sessions=("First", "Second"))
        log_in(app, email)
        assert sidebar_titles(app) == ["Second", "First"]  # most recent first, opened
        assert chat(app) == [("user", "about Second"), ("assistant", "Echo: about Second")]
        app.sidebar.button[2].click().run()  # New chat, Second, First
        assert app.title[0].value == "First"
        assert chat(app) == [("user", "about First"), ("assistant", "Echo: about First")]

    def test_a_message_without_a_chat_starts_one(self, app: AppTest, service: Service) -> None:
        email, headers = service.user()
        log_in(app, email)
        app.chat_input[0].set_value("Start me a chat please").run()
        [session] = service.sessions(headers)
        assert session["title"] == "Start me a chat please"
        assert session["message_count"] == 2

    def test_a_blank_title_is_refused_and_the_chat_stays_on_the_page(
        self, app: AppTest, service: Service
    ) -> None:
        email, headers = service.user(sessions=("Keep my name",))
        log_in(app, email)
        session_id = service.sessions(headers)[0]["id"]
        app.text_input(key=f"title_{session_id}_Keep my name").input("   ")
        app.button(key="rename").click().run()
        assert page_errors(app) == ["A title cannot be empty."]
        assert app.title[0].value == "Keep my name"
        assert chat(app) == [
            ("user", "about Keep my name"),
            ("assistant", "Echo: about Keep my name"),
        ]
        assert [s["title"] for s in service.sessions(headers)] == ["Keep my name"]

    def test_after_a_logout_the_next_user_sees_only_their_own_chats(
        self, app: AppTest, service: Service
    ) -> None:
        first, _ = service.user(sessions=("Mine",))
        second, _ = service.user(sessions=("Theirs",))
        log_in(app, first)
        assert sidebar_titles(app) == ["Mine"]
        app.button(key="logout").click().run()
        log_in(app, second)
        assert sidebar_titles(app) == ["Theirs"]
        assert "Mine" not in [m for _, m in chat(app)]


class TestStreaming:
    def test_pieces_of_the_reply_arrive_while_the_model_writes(self, tmp_path: Path) -> None:
        with FakeOpenAIServer() as model:
            env = base_environment(tmp_path) | {
                "ASSISTANT_PROVIDER": "openai",
                "OPENAI_BASE_URL": model.base_url,
                "OPENAI_MODEL": "slow",  # 50 ms between pieces
            }
            with ServerProcess(tmp_path, env, name="slow") as process:
                api = ChatgateClient(process.url)
                api.register("slow@example.com", PASSWORD)
                api.login("slow@example.com", PASSWORD)
                session = api.new_session("Streamed")
                arrived: list[tuple[float, str]] = []
                for piece in api.send(session["id"], "one two three four five six seven eight"):
                    arrived.append((time.monotonic(), piece))
        assert "".join(p for _, p in arrived) == "You said: one two three four five six seven eight"
        # Not read in one go at the end: the first piece came well before the last one.
        assert arrived[-1][0] - arrived[0][0] > 0.2

    def test_an_expired_token_is_renewed_for_a_streamed_reply_too(self, service: Service) -> None:
        email, headers = service.user(sessions=("Renewed",))
        session_id = service.sessions(headers)[0]["id"]
        api = ChatgateClient(service.url)
        before = api.login(email, PASSWORD)
        api.tokens = Tokens(service.expired(before.access_token), before.refresh_token)
        assert "".join(api.send(session_id, "still streaming")) == "Echo: still streaming"
        assert api.tokens.refresh_token != before.refresh_token


class TestTokens:
    def test_an_expired_access_token_is_renewed_without_the_user_noticing(
        self, app: AppTest, service: Service
    ) -> None:
        email, _ = service.user(sessions=("Kept",))
        log_in(app, email)
        before: Tokens = app.session_state["tokens"]
        app.session_state["tokens"] = Tokens(
            service.expired(before.access_token), before.refresh_token
        )

        app.chat_input[0].set_value("Still here?").run()

        assert not app.exception
        assert not on_login_page(app)
        assert page_errors(app) == []
        assert chat(app)[-2:] == [("user", "Still here?"), ("assistant", "Echo: Still here?")]
        after: Tokens = app.session_state["tokens"]
        assert after.access_token != before.access_token
        assert after.refresh_token != before.refresh_token  # kept: the old one is used up
        assert service.http.get("/auth/me", headers=bearer(after.access_token)).status_code == 200

    def test_a_dead_refresh_token_brings_back_the_login_form(
        self, app: AppTest, service: Service
    ) -> None:
        email, _ = service.user(sessions=("Gone",))
        log_in(app, email)
        tokens: Tokens = app.session_state["tokens"]
        ended = service.http.post(
            "/auth/logout",
            json={"refresh_token": tokens.refresh_token},
            headers=bearer(tokens.access_token),
        )
        assert ended.status_code == 200
        app.session_state["tokens"] = Tokens(
            service.expired(tokens.access_token), tokens.refresh_token
        )

        app.run()

        assert on_login_page(app)
        assert page_errors(app) == ["Your login has expired; please log in again."]
        log_in(app, email)
        assert sidebar_titles(app) == ["Gone"]

    def test_a_login_ended_elsewhere_brings_back_the_login_form(
        self, app: AppTest, service: Service
    ) -> None:
        email, _ = service.user()
        log_in(app, email)
        tokens: Tokens = app.session_state["tokens"]
        service.http.post("/auth/logout", json={}, headers=bearer(tokens.access_token))
        app.button(key="new_chat").click().run()
        assert on_login_page(app)
        assert page_errors(app) == ["Your login has ended; please log in again."]


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """chatgate with tight limits: two chat writes a minute, one refresh a minute."""
    work = tmp_path_factory.mktemp("strict")
    env = base_environment(work) | {
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_CHAT": "2/minute",
        "RATE_LIMIT_REFRESH": "1/minute",
    }
    with ServerProcess(work, env, name="strict") as process:
        running = Service(process)
        yield running
        running.http.close()


class TestRateLimits:
    def test_a_refused_message_says_it_was_not_sent(
        self, strict: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        email, headers = strict.user()
        at = open_app(strict.url, monkeypatch)
        log_in(at, email)
        at.chat_input[0].set_value("first").run()  # a new chat and a message: two writes
        at.chat_input[0].set_value("second").run()
        [error] = page_errors(at)
        assert error.startswith("Too many requests")
        assert error.endswith("Your message was not sent.")
        [session] = strict.sessions(headers)
        assert strict.history(headers, session["id"]) == ["first", "Echo: first"]

    def test_a_busy_refresh_keeps_the_login(
        self, strict: Service, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        email, _ = strict.user(sessions=("Patience",))
        at = open_app(strict.url, monkeypatch)
        log_in(at, email)
        first: Tokens = at.session_state["tokens"]
        at.session_state["tokens"] = Tokens(strict.expired(first.access_token), first.refresh_token)
        at.run()  # refreshes: the one refresh this minute allows
        renewed: Tokens = at.session_state["tokens"]
        assert renewed.refresh_token != first.refresh_token
        at.session_state["tokens"] = Tokens(
            strict.expired(renewed.access_token), renewed.refresh_token
        )
        at.run()  # the refresh is refused for now (429): still logged in, told why
        assert not on_login_page(at)
        assert [e for e in page_errors(at) if e.startswith("Too many requests")]
        assert at.session_state["tokens"].refresh_token == renewed.refresh_token


class TestAssistantFailure:
    def test_a_failed_reply_is_a_sentence_and_the_message_is_kept(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        env = base_environment(tmp_path) | {
            "ASSISTANT_PROVIDER": "openai",
            "OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",  # nobody listens
            "OPENAI_MODEL": "absent",
        }
        with ServerProcess(tmp_path, env, name="no-model") as process:
            at = open_app(process.url, monkeypatch)
            at.text_input(key="register_email").input("unlucky@example.com")
            at.text_input(key="register_password").input(PASSWORD)
            at.button(key="register_submit").click().run()
            at.chat_input[0].set_value("Anyone there?").run()
            assert not at.exception
            assert page_errors(at) == ["The assistant is unavailable. Your message was kept."]
            assert chat(at) == [("user", "Anyone there?")]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_client_refuses_to_call_without_a_login(service: Service) -> None:
    with pytest.raises(ChatgateError, match="Please log in"):
        ChatgateClient(service.url).sessions()
