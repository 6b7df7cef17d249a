"""Rate limits, the client-IP rule and the bound on password work, through HTTP."""

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.helpers import PASSWORD, assert_error, make_settings
from tests.test_tokens import claims_for, signed

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def limited(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"rate_limit_enabled": True, **overrides}
    return make_settings(tmp_path, **values)


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[FastAPI]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client_from(app: FastAPI, ip: str = "127.0.0.1") -> httpx.AsyncClient:
    """A client whose connection comes from `ip` (what uvicorn puts in the scope)."""
    transport = httpx.ASGITransport(app=app, client=(ip, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def register_and_login(c: httpx.AsyncClient, email: str) -> dict[str, str]:
    registered = await c.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    login = await c.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    return {"Authorization": f"Bearer {login.json()['access_token']}"}


def assert_throttled(response: httpx.Response, window_seconds: int) -> int:
    """A 429 in the envelope whose Retry-After is a whole number within the window."""
    assert_error(response, 429)
    retry = int(response.headers["retry-after"])
    assert 1 <= retry <= window_seconds
    assert f"retry in {retry} s" in response.json()["detail"]
    return retry


async def wrong_login(c: httpx.AsyncClient, email: str) -> httpx.Response:
    return await c.post("/auth/login", json={"email": email, "password": "not the password"})


class TestChatWrites:
    async def test_a_user_over_the_limit_gets_429_and_another_keeps_chatting(
        self, tmp_path: Path
    ) -> None:
        settings = limited(tmp_path, rate_limit_chat="3/minute")
        async with serving(settings) as app, client_from(app) as c:
            alice = await register_and_login(c, "alice@example.com")
            bob = await register_and_login(c, "bob@example.com")
            created = await c.post("/chat/session/new", json={}, headers=alice)
            session_id = created.json()["session"]["id"]
            for _ in range(2):
                sent = await c.post(
                    "/chat/message",
                    json={"session_id": session_id, "message": "hi"},
                    headers=alice,
                )
                assert sent.status_code == 200
            refused = await c.post(
                "/chat/message", json={"session_id": session_id, "message": "hi"}, headers=alice
            )
            assert_throttled(refused, 60)
            history = await c.get(f"/chat/session/{session_id}/history", headers=alice)
            assert len(history.json()["messages"]) == 4  # the refused message was not stored
            streamed = await c.post(
                "/chat/send", json={"session_id": session_id, "message": "hi"}, headers=alice
            )
            assert_throttled(streamed, 60)
            assert (await c.get("/chat/sessions", headers=alice)).status_code == 200

            mine = await c.post("/chat/session/new", json={"initial_message": "hi"}, headers=bob)
            assert mine.status_code == 201

    async def test_rate_limit_enabled_false_turns_every_limit_off(self, tmp_path: Path) -> None:
        settings = make_settings(
            tmp_path, rate_limit_enabled=False, rate_limit_chat="1/minute",
            rate_limit_anonymous="1/minute", rate_limit_login_email="1/minute",
        )  # fmt: skip
        async with serving(settings) as app, client_from(app) as c:
            alice = await register_and_login(c, "alice@example.com")
            for _ in range(3):
                assert (await wrong_login(c, "alice@example.com")).status_code == 401
                assert (await c.get("/healthz")).status_code == 200
                created = await c.post("/chat/session/new", json={}, headers=alice)
                assert created.status_code == 201


class TestLogin:
    async def test_30_wrong_passwords_for_one_email_end_in_429s(self, tmp_path: Path) -> None:
        async with serving(limited(tmp_path)) as app, client_from(app) as c:
            await register_and_login(c, "victim@example.com")
            statuses = [(await wrong_login(c, "victim@example.com")).status_code for _ in range(30)]
        # The default allows 5 failures a minute for an email from one address; the
        # successful login before them is not a failure.
        assert statuses[:5] == [401] * 5
        assert set(statuses[5:]) == {429}

    async def test_an_unknown_email_is_throttled_exactly_like_a_real_one(
        self, tmp_path: Path
    ) -> None:
        settings = limited(tmp_path, rate_limit_login_email="3/minute")
        async with serving(settings) as app, client_from(app) as c:
            registered = await c.post(
                "/auth/register", json={"email": "real@example.com", "password": PASSWORD}
            )
            assert registered.status_code == 201
            real = [await wrong_login(c, "real@example.com") for _ in range(5)]
            ghost = [await wrong_login(c, "ghost@example.com") for _ in range(5)]
        assert [r.status_code for r in real] == [r.status_code for r in ghost]
        assert [r.status_code for r in real] == [401, 401, 401, 429, 429]
        assert real[3].json() == ghost[3].json()
        assert set(real[3].headers) == set(ghost[3].headers)

    async def test_the_right_password_while_throttled_is_still_a_429(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_email="2/minute")
        async with serving(settings) as app, client_from(app) as c:
            await c.post("/auth/register", json={"email": "a@example.com", "password": PASSWORD})
            for _ in range(2):
                assert (await wrong_login(c, "a@example.com")).status_code == 401
            right = await c.post(
                "/auth/login", json={"email": "a@example.com", "password": PASSWORD}
            )
            assert_throttled(right, 60)
            assert "access_token" not in right.text

    async def test_email_spellings_share_one_bucket(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_email="2/minute")
        async with serving(settings) as app, client_from(app) as c:
            for email in ["a@example.com", " A@Example.COM "]:
                assert (await wrong_login(c, email)).status_code == 401
            assert (await wrong_login(c, "a@EXAMPLE.com")).status_code == 429

    async def test_other_emails_are_not_throttled_by_one_email(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_email="1/minute")
        async with serving(settings) as app, client_from(app) as c:
            assert (await wrong_login(c, "a@example.com")).status_code == 401
            assert (await wrong_login(c, "a@example.com")).status_code == 429
            assert (await wrong_login(c, "b@example.com")).status_code == 401

    async def test_one_ip_trying_many_emails_is_throttled(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_ip="4/minute")
        async with serving(settings) as app:
            async with client_from(app, "10.0.0.1") as c:
                statuses = [
                    (await wrong_login(c, f"u{i}@example.com")).status_code for i in range(6)
                ]
            async with client_from(app, "10.0.0.2") as other:
                assert (await wrong_login(other, "u0@example.com")).status_code == 401
        assert statuses == [401] * 4 + [429] * 2

    async def test_the_oauth2_form_counts_against_the_same_email(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_email="1/minute")
        async with serving(settings) as app, client_from(app) as c:
            assert (await wrong_login(c, "a@example.com")).status_code == 401
            form = await c.post(
                "/auth/login", data={"username": "a@example.com", "password": "not it at all"}
            )
            assert_throttled(form, 60)


class TestPerIp:
    async def test_registration_is_limited_per_ip(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_register="2/hour")
        async with serving(settings) as app:
            async with client_from(app, "10.0.0.1") as c:
                for i in range(2):
                    r = await c.post(
                        "/auth/register", json={"email": f"r{i}@example.com", "password": PASSWORD}
                    )
                    assert r.status_code == 201
                third = await c.post(
                    "/auth/register", json={"email": "r9@example.com", "password": PASSWORD}
                )
                assert_throttled(third, 3600)
            async with client_from(app, "10.0.0.2") as other:
                r = await other.post(
                    "/auth/register", json={"email": "r9@example.com", "password": PASSWORD}
                )
                assert r.status_code == 201

    async def test_refresh_is_limited_per_ip(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_refresh="2/minute")
        async with serving(settings) as app, client_from(app) as c:
            await c.post("/auth/register", json={"email": "a@example.com", "password": PASSWORD})
            login = await c.post(
                "/auth/login", json={"email": "a@example.com", "password": PASSWORD}
            )
            token = login.json()["refresh_token"]
            for _ in range(2):
                r = await c.post("/auth/refresh", json={"refresh_token": token})
                assert r.status_code == 200
                token = r.json()["refresh_token"]
            assert_throttled(await c.post("/auth/refresh", json={"refresh_token": token}), 60)

    async def test_unauthenticated_requests_are_limited_per_ip(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_anonymous="3/minute")
        async with serving(settings) as app:
            async with client_from(app, "10.0.0.1") as c:
                statuses = [(await c.get("/healthz")).status_code for _ in range(3)]
                assert statuses == [200] * 3
                assert_throttled(await c.get("/healthz"), 60)
                assert_throttled(await c.get("/no/such/route"), 60)
            async with client_from(app, "10.0.0.2") as other:
                assert (await other.get("/healthz")).status_code == 200

    @pytest.mark.parametrize(
        "authorization",
        [
            pytest.param("Bearer forged.token.value", id="forged"),
            pytest.param("Bearer ", id="empty"),
            pytest.param("Basic YTpi", id="not-bearer"),
        ],
    )
    async def test_a_bad_token_counts_against_the_ip(
        self, tmp_path: Path, authorization: str
    ) -> None:
        settings = limited(tmp_path, rate_limit_anonymous="2/minute")
        async with serving(settings) as app, client_from(app, "10.0.0.1") as c:
            headers = {"Authorization": authorization}
            for _ in range(2):
                assert (await c.get("/chat/sessions", headers=headers)).status_code == 401
            assert_throttled(await c.get("/chat/sessions", headers=headers), 60)

    async def test_an_expired_token_counts_against_the_ip(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_anonymous="2/minute")
        exp = int(time.time()) - 3600
        expired = signed(claims_for("someone", settings, iat=exp - 60, exp=exp))
        async with serving(settings) as app, client_from(app, "10.0.0.1") as c:
            headers = {"Authorization": f"Bearer {expired}"}
            for _ in range(2):
                r = await c.get("/chat/sessions", headers=headers)
                assert r.json()["detail"] == "token_expired"
            assert_throttled(await c.get("/chat/sessions", headers=headers), 60)

    async def test_a_verified_token_does_not_use_up_the_ip(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_anonymous="4/minute")
        async with serving(settings) as app, client_from(app, "10.0.0.1") as c:
            alice = await register_and_login(c, "alice@example.com")  # 2 anonymous
            for _ in range(10):
                assert (await c.get("/chat/sessions", headers=alice)).status_code == 200
            assert (await c.get("/healthz")).status_code == 200


class TestClientIp:
    async def test_x_forwarded_for_is_ignored_by_default(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_anonymous="2/minute")
        async with serving(settings) as app, client_from(app, "10.0.0.1") as c:
            for i in range(2):
                r = await c.get("/healthz", headers={"X-Forwarded-For": f"192.0.2.{i}"})
                assert r.status_code == 200
            spoofed = await c.get("/healthz", headers={"X-Forwarded-For": "192.0.2.99"})
            assert_throttled(spoofed, 60)

    async def test_a_trusted_proxy_names_the_client(self, tmp_path: Path) -> None:
        settings = limited(
            tmp_path, rate_limit_anonymous="1/minute", trusted_proxies=["10.0.0.0/24"]
        )
        async with serving(settings) as app, client_from(app, "10.0.0.5") as proxy:
            first = {"X-Forwarded-For": "198.51.100.7"}
            assert (await proxy.get("/healthz", headers=first)).status_code == 200
            assert_throttled(await proxy.get("/healthz", headers=first), 60)
            # The client cannot pick its address: the proxy appends the real one.
            chained = {"X-Forwarded-For": "203.0.113.1, 198.51.100.7"}
            assert_throttled(await proxy.get("/healthz", headers=chained), 60)
            other = {"X-Forwarded-For": "198.51.100.8"}
            assert (await proxy.get("/healthz", headers=other)).status_code == 200

    async def test_an_untrusted_peer_cannot_use_the_proxy_header(self, tmp_path: Path) -> None:
        settings = limited(
            tmp_path, rate_limit_anonymous="1/minute", trusted_proxies=["10.0.0.0/24"]
        )
        async with serving(settings) as app, client_from(app, "192.0.2.50") as c:
            assert (await c.get("/healthz", headers={"X-Forwarded-For": "1.1.1.1"})).is_success
            r = await c.get("/healthz", headers={"X-Forwarded-For": "1.1.1.2"})
            assert_throttled(r, 60)

    async def test_the_login_list_shows_the_forwarded_client(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, trusted_proxies=["10.0.0.5"])
        async with serving(settings) as app, client_from(app, "10.0.0.5") as c:
            via = {"X-Forwarded-For": "198.51.100.7"}
            await c.post("/auth/register", json={"email": "a@example.com", "password": PASSWORD})
            login = await c.post(
                "/auth/login",
                json={"email": "a@example.com", "password": PASSWORD},
                headers=via,
            )
            token = {"Authorization": f"Bearer {login.json()['access_token']}"}
            logins = (await c.get("/auth/logins", headers=token)).json()["logins"]
        assert [entry["ip"] for entry in logins] == ["198.51.100.7"]


class TestPasswordWork:
    async def test_too_many_waiting_hashes_get_503_and_reads_keep_answering(
        self, tmp_path: Path
    ) -> None:
        # One hash at a time and no waiting: of 8 logins at once, most are refused at once.
        settings = make_settings(
            tmp_path, bcrypt_rounds=10, password_hash_concurrency=1, password_hash_max_wait=0
        )
        async with serving(settings) as app, client_from(app) as c:
            alice = await register_and_login(c, "alice@example.com")
            logins = [
                asyncio.create_task(
                    c.post("/auth/login", json={"email": "alice@example.com", "password": "x" * 9})
                )
                for _ in range(8)
            ]
            await asyncio.sleep(0)
            read = await c.get("/chat/sessions", headers=alice)
            assert read.status_code == 200
            responses = await asyncio.gather(*logins)
        statuses = sorted(r.status_code for r in responses)
        assert 401 in statuses
        assert 503 in statuses
        for r in responses:
            if r.status_code == 503:
                assert_error(r, 503)
                assert int(r.headers["retry-after"]) >= 1

    async def test_the_bound_is_the_same_for_unknown_emails(self, tmp_path: Path) -> None:
        settings = make_settings(
            tmp_path, bcrypt_rounds=10, password_hash_concurrency=1, password_hash_max_wait=0
        )
        async with serving(settings) as app, client_from(app) as c:
            logins = [
                asyncio.create_task(wrong_login(c, f"nobody{i}@example.com")) for i in range(4)
            ]
            responses = await asyncio.gather(*logins)
        assert sorted(r.status_code for r in responses) == [401, 503, 503, 503]

    async def test_a_burst_within_the_wait_bound_is_served_not_refused(
        self, tmp_path: Path
    ) -> None:
        settings = make_settings(
            tmp_path, bcrypt_rounds=10, password_hash_concurrency=1, password_hash_max_wait=30
        )
        async with serving(settings) as app, client_from(app) as c:
            logins = [
                asyncio.create_task(wrong_login(c, f"nobody{i}@example.com")) for i in range(4)
            ]
            responses = await asyncio.gather(*logins)
        assert [r.status_code for r in responses] == [401] * 4


def _redis_reachable() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.skipif(
    not _redis_reachable(),
    reason=f"no Redis server on {REDIS_HOST}:{REDIS_PORT} (start one to test shared counters)",
)
class TestRedisStorage:
    async def test_two_instances_share_their_counters(self, tmp_path: Path) -> None:
        prefix = f"chatgate-test-{uuid.uuid4().hex}"  # no other run's counters
        common: dict[str, Any] = {
            "rate_limit_storage_uri": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
            "rate_limit_key_prefix": prefix,
            "rate_limit_login_email": "3/minute",
        }
        first = limited(tmp_path / "a", **common)
        second = limited(tmp_path / "b", **common)
        async with (
            serving(first) as app_a,
            serving(second) as app_b,
            client_from(app_a) as a,
            client_from(app_b) as b,
        ):
            assert (await wrong_login(a, "shared@example.com")).status_code == 401
            assert (await wrong_login(b, "shared@example.com")).status_code == 401
            assert (await wrong_login(a, "shared@example.com")).status_code == 401
            assert_throttled(await wrong_login(b, "shared@example.com"), 60)
            assert_throttled(await wrong_login(a, "shared@example.com"), 60)
