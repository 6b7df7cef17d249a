"""Probes, the offline explorer, CORS, start-up configuration and the schema's upgrades."""

import re
import stat
from pathlib import Path

import aiosqlite
import httpx
import pytest
from fastapi import FastAPI

from app.auth import PasswordHasher
from app.config import ConfigError, Settings, load_settings
from app.db import MIGRATIONS, SCHEMA_VERSION, Database
from app.keys import SECRET_FILE_NAME
from app.main import create_app
from tests.helpers import PASSWORD, assert_error, assert_unauthorized, make_settings


async def _client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


class TestProbes:
    async def test_healthz_answers_without_auth(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"success": True, "status": "ok"}

    @pytest.mark.parametrize("path", ["/healthz", "/readyz"])
    async def test_probes_answer_head_for_uptime_checkers(
        self, client: httpx.AsyncClient, path: str
    ) -> None:
        response = await client.head(path)
        assert response.status_code == 200
        assert response.content == b""

    async def test_readyz_touches_the_database(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.json() == {"success": True, "status": "ready"}

    async def test_readyz_is_a_503_when_the_database_is_gone(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        await app.state.services.db.close()
        assert_error(await client.get("/readyz"), 503)


class TestExplorer:
    async def test_docs_page_loads_only_local_assets(self, client: httpx.AsyncClient) -> None:
        page = await client.get("/docs")
        assert page.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
        assert urls, "the page should reference its assets"
        assert not [u for u in urls if u.startswith(("http:", "https:", "//"))]
        for url in urls:
            asset = await client.get(url)
            assert asset.status_code == 200, url
        # Swagger UI would send the schema to validator.swagger.io unless told not to.
        assert '"validatorUrl": null' in page.text

    async def test_openapi_declares_the_password_flow_at_login(
        self, client: httpx.AsyncClient
    ) -> None:
        schema = (await client.get("/openapi.json")).json()
        schemes = schema["components"]["securitySchemes"]
        flows = [s["flows"]["password"] for s in schemes.values() if s["type"] == "oauth2"]
        assert flows == [{"scopes": {}, "tokenUrl": "/auth/login"}]
        login_body = schema["paths"]["/auth/login"]["post"]["requestBody"]["content"]
        assert {"application/json", "application/x-www-form-urlencoded"} <= set(login_body)

    async def test_authorize_flow_reaches_a_protected_route(
        self, client: httpx.AsyncClient
    ) -> None:
        await client.post("/auth/register", json={"email": "d@example.com", "password": PASSWORD})
        # What Swagger UI's Authorize button posts.
        token = await client.post(
            "/auth/login",
            data={"grant_type": "password", "username": "d@example.com", "password": PASSWORD},
        )
        assert token.status_code == 200
        headers = {"Authorization": f"{token.json()['token_type']} {token.json()['access_token']}"}
        sessions = await client.get("/chat/sessions", headers=headers)
        assert sessions.status_code == 200

    async def test_every_error_status_is_declared_with_the_envelope(
        self, client: httpx.AsyncClient
    ) -> None:
        schema = (await client.get("/openapi.json")).json()
        for path, operations in schema["paths"].items():
            for method, operation in operations.items():
                for status, response in operation["responses"].items():
                    if status.startswith(("4", "5")):
                        ref = response["content"]["application/json"]["schema"]["$ref"]
                        assert ref.endswith("/ErrorResponse"), (method, path, status)


class TestCors:
    @pytest.fixture
    async def cors_app(self, tmp_path: Path) -> FastAPI:
        return create_app(make_settings(tmp_path, cors_origins=["http://localhost:3000"]))

    async def test_listed_origin_may_call_with_a_bearer_token(self, cors_app: FastAPI) -> None:
        async with await _client_for(cors_app) as c:
            response = await c.options(
                "/chat/sessions",
                headers={
                    "Origin": "http://localhost:3000",
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"

    async def test_a_refused_preflight_is_an_envelope(self, cors_app: FastAPI) -> None:
        async with await _client_for(cors_app) as c:
            response = await c.options(
                "/chat/message",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
        assert_error(response, 400, "This cross-origin request is not allowed.")
        assert "access-control-allow-origin" not in response.headers

    async def test_other_origins_get_no_cors_grant(self, cors_app: FastAPI) -> None:
        async with await _client_for(cors_app) as c:
            response = await c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in response.headers

    async def test_wildcard_never_comes_with_credentials(self, tmp_path: Path) -> None:
        app = create_app(make_settings(tmp_path, cors_origins=["*"]))
        async with await _client_for(app) as c:
            response = await c.get("/healthz", headers={"Origin": "https://any.example"})
        assert response.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in response.headers

    def test_origins_are_read_comma_separated(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CORS_ORIGINS", "http://a.example, http://b.example")
        assert Settings(_env_file=None).cors_origins == ["http://a.example", "http://b.example"]


class TestSecretKey:
    @pytest.mark.parametrize(
        "value",
        [
            "CHANGE_THIS_TO_ENV_SECRET",
            "your-actual-django-secret-key-here",
            "changeme",
            "changethis-changethis-changethis-changethis",
            "too-short-but-random-Xq93",
        ],
    )
    def test_weak_keys_stop_start_up_naming_the_variable(
        self, monkeypatch: pytest.MonkeyPatch, value: str
    ) -> None:
        monkeypatch.setenv("JWT_SECRET_KEY", value)
        monkeypatch.chdir(Path(__file__).parent)  # no .env here
        with pytest.raises(ConfigError) as raised:
            load_settings()
        message = str(raised.value)
        assert "JWT_SECRET_KEY" in message
        assert "secrets.token_urlsafe" in message
        assert value not in message

    async def test_a_generated_key_is_private_and_survives_restarts(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path, jwt_secret_key=None)
        first = create_app(settings)
        async with first.router.lifespan_context(first), await _client_for(first) as c:
            await c.post("/auth/register", json={"email": "k@example.com", "password": PASSWORD})
            login = await c.post(
                "/auth/login", json={"email": "k@example.com", "password": PASSWORD}
            )
            token = login.json()["access_token"]
        key_file = tmp_path / SECRET_FILE_NAME
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text()

        second = create_app(settings)
        async with second.router.lifespan_context(second), await _client_for(second) as c:
            me = await c.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200
        assert key_file.read_text() == key

    def test_a_key_file_readable_by_others_is_made_private(self, tmp_path: Path) -> None:
        key_file = tmp_path / SECRET_FILE_NAME
        key_file.write_text("k" * 20 + "Q" * 30)
        key_file.chmod(0o644)
        create_app(make_settings(tmp_path, jwt_secret_key=None))
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    @pytest.mark.parametrize("content", ["", "short", "changeme-changeme-changeme-changeme"])
    def test_an_unusable_key_file_stops_start_up(self, tmp_path: Path, content: str) -> None:
        (tmp_path / SECRET_FILE_NAME).write_text(content)
        with pytest.raises(ConfigError, match="delete the file"):
            create_app(make_settings(tmp_path, jwt_secret_key=None))

    def test_a_key_path_that_is_a_folder_stops_start_up(self, tmp_path: Path) -> None:
        (tmp_path / SECRET_FILE_NAME).mkdir()
        with pytest.raises(ConfigError, match="JWT_SECRET_KEY"):
            create_app(make_settings(tmp_path, jwt_secret_key=None))

    async def test_tokens_signed_with_another_key_are_rejected(self, tmp_path: Path) -> None:
        first = create_app(make_settings(tmp_path))
        async with first.router.lifespan_context(first), await _client_for(first) as c:
            await c.post("/auth/register", json={"email": "r@example.com", "password": PASSWORD})
            login = await c.post(
                "/auth/login", json={"email": "r@example.com", "password": PASSWORD}
            )
        other = create_app(make_settings(tmp_path, jwt_secret_key="x" * 20 + "y" * 20))
        async with other.router.lifespan_context(other), await _client_for(other) as c:
            me = await c.get(
                "/auth/me", headers={"Authorization": f"Bearer {login.json()['access_token']}"}
            )
        assert_unauthorized(me, "invalid_token")


class TestDatabase:
    async def test_a_new_file_gets_the_current_schema_wal_and_foreign_keys(
        self, tmp_path: Path
    ) -> None:
        db = Database(tmp_path / "nested" / "folder" / "c.db")
        await db.open()
        try:
            assert await db.schema_version() == SCHEMA_VERSION
            conn = db.reader()
            assert list(await conn.execute_fetchall("PRAGMA journal_mode")) == [("wal",)]
            assert list(await conn.execute_fetchall("PRAGMA foreign_keys")) == [(1,)]
        finally:
            await db.close()

    async def test_the_data_folder_and_file_are_private(self, tmp_path: Path) -> None:
        path = tmp_path / "private" / "c.db"
        db = Database(path)
        await db.open()
        await db.close()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    async def test_reopening_keeps_data(self, tmp_path: Path, settings: Settings) -> None:
        for attempt in range(2):
            app = create_app(settings)
            async with app.router.lifespan_context(app), await _client_for(app) as c:
                if attempt == 0:
                    await c.post(
                        "/auth/register", json={"email": "p@example.com", "password": PASSWORD}
                    )
                login = await c.post(
                    "/auth/login", json={"email": "p@example.com", "password": PASSWORD}
                )
                assert login.status_code == 200

    async def test_a_schema_2_file_keeps_every_message_through_the_upgrade(
        self, tmp_path: Path
    ) -> None:
        """Schema 3 rebuilt the messages table; what schema 2 stored must come through."""
        settings = make_settings(tmp_path)
        password_hash = await PasswordHasher(4, 1).hash(PASSWORD)
        stamp = "2026-01-01T00:00:0{}.000000Z"
        async with aiosqlite.connect(settings.database_path) as conn:
            for step in MIGRATIONS[:2]:
                for statement in step:
                    await conn.execute(statement)
            await conn.execute(
                "INSERT INTO users (id, email, password_hash, display_name, role, created_at)"
                " VALUES ('u1', 'old@example.com', ?, NULL, 'user', ?)",
                (password_hash, stamp.format(0)),
            )
            await conn.execute(
                "INSERT INTO chat_sessions VALUES ('s1', 'u1', 'Old chat', ?, ?, 3)",
                (stamp.format(0), stamp.format(3)),
            )
            texts = ["first", "Echo: first", "it's <b>'; DROP TABLE messages; --</b> 🙂"]
            for seq, text in enumerate(texts, start=1):
                await conn.execute(
                    "INSERT INTO messages VALUES (?, 's1', ?, ?, ?, ?)",
                    (f"m{seq}", seq, "assistant" if seq == 2 else "user", text, stamp.format(seq)),
                )
            await conn.execute("PRAGMA user_version = 2")
            await conn.commit()

        app = create_app(settings)
        async with app.router.lifespan_context(app), await _client_for(app) as c:
            login = await c.post(
                "/auth/login", json={"email": "old@example.com", "password": PASSWORD}
            )
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            history = (await c.get("/chat/session/s1/history", headers=headers)).json()
            assert [(m["id"], m["content"]) for m in history["messages"]] == [
                (f"m{seq}", text) for seq, text in enumerate(texts, start=1)
            ]
            sent = await c.post(
                "/chat/message", json={"session_id": "s1", "message": "after"}, headers=headers
            )
            assert sent.status_code == 200, sent.text
            history = (await c.get("/chat/session/s1/history", headers=headers)).json()
            assert [m["content"] for m in history["messages"]][3:] == ["after", "Echo: after"]
            session = (await c.get("/chat/session/s1", headers=headers)).json()["session"]
            assert session["message_count"] == 5
        async with aiosqlite.connect(settings.database_path) as conn:
            assert list(await conn.execute_fetchall("PRAGMA integrity_check")) == [("ok",)]
            assert list(await conn.execute_fetchall("PRAGMA foreign_key_check")) == []

    async def test_a_file_from_a_newer_chatgate_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "future.db"
        async with aiosqlite.connect(path) as conn:
            await conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db = Database(path)
        with pytest.raises(RuntimeError, match="newer"):
            await db.open()
        await db.close()

    async def test_deleting_a_session_removes_its_message_rows(
        self, client: httpx.AsyncClient, app: FastAPI
    ) -> None:
        await client.post("/auth/register", json={"email": "m@example.com", "password": PASSWORD})
        login = await client.post(
            "/auth/login", json={"email": "m@example.com", "password": PASSWORD}
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = await client.post(
            "/chat/session/new", json={"initial_message": "hello"}, headers=headers
        )
        session_id = created.json()["session"]["id"]
        await client.delete(f"/chat/session/{session_id}", headers=headers)
        rows = await app.state.services.db.reader().execute_fetchall(
            "SELECT count(*) FROM messages WHERE session_id = ?", (session_id,)
        )
        assert list(rows) == [(0,)]

    async def test_reads_cannot_write(self, app: FastAPI) -> None:
        conn = app.state.services.db.reader()
        with pytest.raises(aiosqlite.OperationalError, match="readonly"):
            await conn.execute("DELETE FROM users")
