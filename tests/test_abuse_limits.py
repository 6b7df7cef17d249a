"""Limits an attacker cannot sidestep: per-address limits whatever the headers, password
checks throttled by their failures (login and re-authentication alike) without letting
a stranger lock the owner out, IPv6 clients counted by network, admins that remain."""

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from app.main import create_app
from app.services import admin as admin_service
from tests.helpers import PASSWORD, assert_error
from tests.test_rate_limits import (
    assert_throttled,
    client_from,
    limited,
    register_and_login,
    serving,
    wrong_login,
)

OWNER_IP, STRANGER_IP = "10.0.0.1", "10.6.6.6"


def _every_route(routes: Iterable[Any]) -> Iterator[Any]:
    """The app's routes, also those of included routers (which FastAPI keeps by router)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _every_route(included.routes) if included is not None else [route]


async def tokens_of(c: httpx.AsyncClient, email: str) -> dict[str, str]:
    """Registers and logs in `email`; its access and refresh tokens."""
    registered = await c.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    login = await c.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.text
    tokens: dict[str, str] = login.json()
    return tokens


async def right_login(c: httpx.AsyncClient, email: str) -> httpx.Response:
    return await c.post("/auth/login", json={"email": email, "password": PASSWORD})


# (path, the body of a request that does not succeed, the setting that limits it to 2)
ADDRESS_LIMITED = [
    pytest.param(
        "/auth/login",
        {"email": "nobody@example.com", "password": "wrong password"},
        {"rate_limit_login_ip": "2/minute", "rate_limit_login_email": "100/minute"},
        id="login",
    ),
    pytest.param(
        "/auth/register",
        {"email": "taken@example.com", "password": PASSWORD},
        {"rate_limit_register": "2/hour"},
        id="register",
    ),
    pytest.param(
        "/auth/refresh",
        {"refresh_token": "not.a.token"},
        {"rate_limit_refresh": "2/minute"},
        id="refresh",
    ),
    pytest.param(
        "/auth/login",
        {"email": "nobody@example.com", "password": "wrong password"},
        {"rate_limit_anonymous": "2/minute", "rate_limit_login_email": "100/minute"},
        id="anonymous-bucket",
    ),
]


class TestATokenNeverLiftsAnAddressLimit:
    @pytest.mark.parametrize("logged_out", [False, True], ids=["live-token", "logged-out-token"])
    @pytest.mark.parametrize(("path", "body", "setting"), ADDRESS_LIMITED)
    async def test_a_bearer_token_does_not_skip_the_routes_limit(
        self,
        tmp_path: Path,
        path: str,
        body: dict[str, Any],
        setting: dict[str, str],
        logged_out: bool,
    ) -> None:
        async with serving(limited(tmp_path, **setting)) as app:
            async with client_from(app, "10.0.0.50") as setup:
                tokens = await tokens_of(setup, "taken@example.com")
                headers = {"Authorization": f"Bearer {tokens['access_token']}"}
                if logged_out:
                    bye = await setup.post("/auth/logout", json={}, headers=headers)
                    assert bye.status_code == 200
            async with client_from(app, "10.0.0.9") as c:
                for _ in range(2):
                    refused = await c.post(path, json=body, headers=headers)
                    assert refused.status_code in {401, 409}, refused.text
                assert_throttled(await c.post(path, json=body, headers=headers), 3600)

    def test_every_route_is_a_limited_route(self, tmp_path: Path) -> None:
        """Limits are attached to routes: a route of another class would have none."""
        from app.routes.limited_route import LimitedRoute

        app = create_app(limited(tmp_path))
        routes = [r for r in _every_route(app.routes) if isinstance(r, APIRoute)]
        assert len(routes) > 20
        assert all(isinstance(r, LimitedRoute) for r in routes), [
            r.path for r in routes if not isinstance(r, LimitedRoute)
        ]
        declared = {(r.path, r.limits.per_user, r.limits.per_address) for r in routes}  # type: ignore[attr-defined]
        assert ("/auth/login", None, ("login_ip",)) in declared
        assert ("/chat/send", "chat", ()) in declared


class TestNoLockOut:
    async def test_a_stranger_failing_cannot_lock_the_owner_out(self, tmp_path: Path) -> None:
        async with serving(limited(tmp_path)) as app:
            async with client_from(app, OWNER_IP) as owner:
                await owner.post(
                    "/auth/register", json={"email": "victim@example.com", "password": PASSWORD}
                )
            async with client_from(app, STRANGER_IP) as stranger:
                statuses = [
                    (await wrong_login(stranger, "victim@example.com")).status_code
                    for _ in range(25)
                ]
            async with client_from(app, OWNER_IP) as owner:
                welcome = await right_login(owner, "victim@example.com")
        # 5 failures a minute from one address and one account; then 429 before the check.
        assert statuses == [401] * 5 + [429] * 20
        assert welcome.status_code == 200, welcome.text

    async def test_a_successful_login_is_not_a_failure(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_email="2/minute")
        async with serving(settings) as app, client_from(app) as c:
            await c.post("/auth/register", json={"email": "a@example.com", "password": PASSWORD})
            for _ in range(5):
                assert (await right_login(c, "a@example.com")).status_code == 200
            assert (await wrong_login(c, "a@example.com")).status_code == 401

    async def test_failures_from_many_addresses_are_capped_per_account(
        self, tmp_path: Path
    ) -> None:
        settings = limited(
            tmp_path, rate_limit_login_email="5/minute", rate_limit_login_account="4/hour"
        )
        async with serving(settings) as app:
            async with client_from(app, OWNER_IP) as owner:
                await tokens_of(owner, "victim@example.com")  # a live login from OWNER_IP
            for n in range(4):
                async with client_from(app, f"10.6.6.{n}") as stranger:
                    assert (await wrong_login(stranger, "victim@example.com")).status_code == 401
            async with client_from(app, "10.6.6.99") as stranger:
                assert_throttled(await wrong_login(stranger, "victim@example.com"), 3600)
                # Even the right password, from an address the account is not known at.
                assert_throttled(await right_login(stranger, "victim@example.com"), 3600)
            async with client_from(app, "10.6.6.98") as stranger:
                # An unknown email whose budget is spent answers the same.
                for _ in range(4):
                    await wrong_login(stranger, "ghost@example.com")
                assert_throttled(await wrong_login(stranger, "ghost@example.com"), 3600)
            async with client_from(app, OWNER_IP) as owner:
                assert (await right_login(owner, "victim@example.com")).status_code == 200


class TestReauthentication:
    @pytest.mark.parametrize(
        ("method", "path", "field"),
        [
            pytest.param("POST", "/auth/password", "current_password", id="password-change"),
            pytest.param("DELETE", "/auth/me", "password", id="account-deletion"),
        ],
    )
    async def test_wrong_current_passwords_end_in_429(
        self, tmp_path: Path, method: str, path: str, field: str
    ) -> None:
        settings = limited(tmp_path, rate_limit_login_email="3/minute")
        async with serving(settings) as app, client_from(app) as c:
            headers = await register_and_login(c, "a@example.com")

            def attempt(password: str) -> dict[str, Any]:
                body = {field: password, "new_password": "a brand new password"}
                if field == "password":
                    body.pop("new_password")
                return {"json": body, "headers": headers}

            for _ in range(3):
                wrong = await c.request(method, path, **attempt("a guessed password"))
                assert_error(wrong, 403)
            assert_throttled(await c.request(method, path, **attempt("another guess")), 60)
            # The right one too, while the budget is spent: no oracle.
            assert_throttled(await c.request(method, path, **attempt(PASSWORD)), 60)
            still = await c.get("/auth/me", headers=headers)
            assert still.status_code == 200

    async def test_reauthentication_shares_the_budget_of_failed_logins(
        self, tmp_path: Path
    ) -> None:
        settings = limited(tmp_path, rate_limit_login_email="3/minute")
        async with serving(settings) as app, client_from(app) as c:
            headers = await register_and_login(c, "a@example.com")
            assert (await wrong_login(c, "a@example.com")).status_code == 401
            body = {"current_password": "a guess", "new_password": "a brand new password"}
            for _ in range(2):
                assert_error(await c.post("/auth/password", json=body, headers=headers), 403)
            # 3 failures: 1 login and 2 re-authentications, one budget.
            assert_throttled(await wrong_login(c, "a@example.com"), 60)

    async def test_the_right_password_within_the_budget_works(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_email="3/minute")
        async with serving(settings) as app, client_from(app) as c:
            headers = await register_and_login(c, "a@example.com")
            body = {"current_password": "a guess", "new_password": "a brand new password"}
            assert_error(await c.post("/auth/password", json=body, headers=headers), 403)
            body["current_password"] = PASSWORD
            changed = await c.post("/auth/password", json=body, headers=headers)
            assert changed.status_code == 200, changed.text


class TestIpv6Networks:
    async def _statuses(self, app: FastAPI, addresses: list[str]) -> list[int]:
        statuses = []
        for n, ip in enumerate(addresses):
            async with client_from(app, ip) as c:
                statuses.append((await wrong_login(c, f"u{n}@example.com")).status_code)
        return statuses

    async def test_addresses_of_one_slash_64_share_a_bucket(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_ip="2/minute")
        async with serving(settings) as app:
            statuses = await self._statuses(
                app, ["2001:db8::1", "2001:db8::2", "2001:db8::ffff:1", "2001:db8:0:1::1"]
            )
        assert statuses == [401, 401, 429, 401]

    async def test_ipv4_mapped_ipv6_is_the_ipv4_address(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_ip="2/minute")
        async with serving(settings) as app:
            statuses = await self._statuses(app, ["10.0.0.7", "::ffff:10.0.0.7", "10.0.0.7"])
        assert statuses == [401, 401, 429]

    async def test_ipv4_stays_per_address(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_ip="1/minute")
        async with serving(settings) as app:
            statuses = await self._statuses(app, ["10.0.0.1", "10.0.0.2", "10.0.0.3"])
        assert statuses == [401, 401, 401]

    async def test_the_prefix_length_is_a_setting(self, tmp_path: Path) -> None:
        settings = limited(tmp_path, rate_limit_login_ip="1/minute", rate_limit_ipv6_prefix=128)
        async with serving(settings) as app:
            statuses = await self._statuses(app, ["2001:db8::1", "2001:db8::2", "2001:db8::1"])
        assert statuses == [401, 401, 429]


class TestAdminsRemain:
    async def test_an_admin_cannot_delete_their_own_account(self, tmp_path: Path) -> None:
        async with serving(limited(tmp_path)) as app, client_from(app) as c:
            await register_and_login(c, "root@example.com")
            db = app.state.services.db
            await admin_service.set_role_by_email(db, email="root@example.com", role="admin")
            login = await right_login(c, "root@example.com")
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            refused = await c.request(
                "DELETE", "/auth/me", json={"password": PASSWORD}, headers=headers
            )
            assert_error(refused, 409)
            assert "demote" in refused.json()["error"]
            assert "chatgate set-role" in refused.json()["error"]
            me = await c.get("/auth/me", headers=headers)
            assert me.json()["user"]["role"] == "admin"
            for method, path, body in [
                ("PATCH", "/admin/users/{id}", {"role": "user"}),
                ("PATCH", "/admin/users/{id}", {"disabled": True}),
                ("POST", "/admin/users/{id}/disable", None),
                ("DELETE", "/admin/users/{id}", None),
            ]:
                target = path.format(id=me.json()["user"]["id"])
                assert_error(await c.request(method, target, json=body, headers=headers), 409)
            assert (await c.get("/auth/me", headers=headers)).json()["user"]["role"] == "admin"

    async def test_a_demoted_admin_can_then_leave(self, tmp_path: Path) -> None:
        async with serving(limited(tmp_path)) as app, client_from(app) as c:
            headers = await register_and_login(c, "was-admin@example.com")
            db = app.state.services.db
            await admin_service.set_role_by_email(db, email="was-admin@example.com", role="admin")
            await admin_service.set_role_by_email(db, email="was-admin@example.com", role="user")
            gone = await c.request(
                "DELETE", "/auth/me", json={"password": PASSWORD}, headers=headers
            )
            assert gone.status_code == 200, gone.text
