"""Fuzzing from our own OpenAPI schema: no 5xx, and every answer is one the schema declares.

A real server (uvicorn in a subprocess, as users run it) on a throwaway data
file; schemathesis generates requests for every operation, authenticated as
a real user who is an admin (so the admin routes' own handling is fuzzed, not
only their 403; tests/test_admin.py covers non-admins), with real session and
user ids fed to the id parameters half the time,
with valid data (positive) and invalid data (negative) for each operation.
FUZZ_EXAMPLES (default 50 per operation and kind) bounds the run to one or two
minutes.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from tests.cli_process import chatgate
from tests.server_process import ServerProcess, base_environment

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "50"))
EMAIL, PASSWORD = "fuzz@example.com", "fuzzing password 1"
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


@dataclass
class Server:
    url: str
    token: str = ""
    sessions: list[str] = field(default_factory=list)
    users_made: int = 0

    def login(self) -> None:
        r = httpx.post(f"{self.url}/auth/login", json={"email": EMAIL, "password": PASSWORD})
        r.raise_for_status()
        self.token = r.json()["access_token"]

    def ensure_token(self) -> None:
        """Fuzzed logouts and password changes end the token: log in again when they did."""
        me = httpx.get(f"{self.url}/auth/me", headers=self.headers)
        if me.status_code == 401:
            self.login()

    def fresh_session(self) -> str:
        """A session of our user, with a message in it (fuzzed deletes eat them)."""
        r = httpx.post(
            f"{self.url}/chat/session/new",
            json={"title": "fuzz", "initial_message": "hello"},
            headers=self.headers,
        )
        r.raise_for_status()
        session_id: str = r.json()["session"]["id"]
        return session_id

    def fresh_user(self) -> str:
        """Another account (fuzzed deletes and disables act on it, never on ours)."""
        self.users_made += 1
        r = httpx.post(
            f"{self.url}/admin/users",
            json={"email": f"target{self.users_made}@example.com", "password": PASSWORD},
            headers=self.headers,
        )
        r.raise_for_status()
        user_id: str = r.json()["user"]["id"]
        return user_id

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("fuzz")
    with ServerProcess(work, base_environment(work), name="fuzz") as process:
        httpx.post(f"{process.url}/auth/register", json={"email": EMAIL, "password": PASSWORD})
        promoted = chatgate(work, process.env, "set-role", "--email", EMAIL, "admin")
        assert promoted.status == 0, promoted.stderr
        fuzz_server = Server(process.url)
        fuzz_server.login()
        yield fuzz_server
        log = process.log()
    assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def test_every_operation_answers_as_its_schema_says(
    server: Server, api_schema: schemathesis.BaseSchema
) -> None:
    # Each operation is its own Hypothesis run (schemathesis' lazy pytest fixtures do
    # not work with pytest 9); a failure is collected, the others still run.
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 15, "the schema lost its operations"
    runs = [(op, mode) for op in operations for mode in GenerationMode]
    for operation, mode in runs:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            server.ensure_token()
            path_parameters = case.path_parameters or {}
            # Half the cases (by the generated id's length, so runs repeat) get a real id.
            if "session_id" in path_parameters and len(str(path_parameters["session_id"])) % 2:
                path_parameters["session_id"] = server.fresh_session()
            if "user_id" in path_parameters and len(str(path_parameters["user_id"])) % 2:
                path_parameters["user_id"] = server.fresh_user()
            case.call_and_validate(headers=server.headers, checks=CHECKS, timeout=30)

        try:
            fuzz()
        except Unsatisfiable:
            # Nothing in this operation can be made invalid (no parameters, no body).
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:
            failures.append(f"{operation.label} ({mode.value} data): {exc}")
    assert not failures, "\n\n".join(failures)


TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=2000)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=TEXT.filter(lambda t: t.strip() != ""))
def test_any_text_comes_back_byte_for_byte(server: Server, text: str) -> None:
    server.ensure_token()
    session_id = server.fresh_session()
    sent = httpx.post(
        f"{server.url}/chat/message",
        json={"session_id": session_id, "message": text},
        headers=server.headers,
    )
    assert sent.status_code == 200, sent.text
    history = httpx.get(f"{server.url}/chat/session/{session_id}/history", headers=server.headers)
    assert [m["content"] for m in history.json()["messages"]][-2:] == [text, f"Echo: {text}"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    token=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=600)
)
def test_any_bearer_string_but_a_real_token_is_a_401(server: Server, token: str) -> None:
    response = httpx.get(
        f"{server.url}/chat/sessions", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    # The whole body is fixed text and a cause from a closed list: nothing of the token
    # can be in it (a substring check failed on "fals", which is in "false").
    assert response.json() == {
        "success": False,
        "error": "Unauthorized - Invalid or missing token",
        "detail": response.json()["detail"],
    }
    assert response.json()["detail"] in {"invalid_token", "missing_token", "token_expired"}
