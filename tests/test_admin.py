"""Roles and administration: the admin API, disabled accounts, closed sign-up."""

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt

from app.deps import get_admin
from app.services import admin as admin_service
from tests.conftest import SessionFactory, UserFactory
from tests.helpers import PASSWORD, User, assert_error, assert_unauthorized, make_settings, running

ADMIN_ONLY = "This needs an administrator account."
NOBODY = "00000000-0000-4000-8000-000000000000"

# Every admin route, with a body that passes validation; {id} is the target user.
ADMIN_ROUTES = [
    pytest.param("GET", "/admin/users", None, id="list-users"),
    pytest.param(
        "POST",
        "/admin/users",
        {"email": "made@example.com", "password": PASSWORD},
        id="create-user",
    ),
    pytest.param("GET", "/admin/users/{id}", None, id="read-user"),
    pytest.param("PATCH", "/admin/users/{id}", {"role": "admin"}, id="update-user"),
    pytest.param("POST", "/admin/users/{id}/disable", None, id="disable-user"),
    pytest.param("POST", "/admin/users/{id}/enable", None, id="enable-user"),
    pytest.param("DELETE", "/admin/users/{id}", None, id="delete-user"),
    pytest.param("GET", "/admin/stats", None, id="stats"),
]


@pytest.fixture
def make_admin(app: FastAPI, client: httpx.AsyncClient, make_user: UserFactory) -> UserFactory:
    """A registered user made an admin (as `chatgate set-role` does), then logged in."""

    async def factory(email: str | None = None) -> User:
        user = await make_user(email)
        await admin_service.set_role_by_email(app.state.services.db, email=user.email, role="admin")
        return await relogin(client, user)

    return factory


@pytest.fixture
async def root(make_admin: UserFactory) -> User:
    return await make_admin("root@example.com")


async def relogin(client: httpx.AsyncClient, user: User) -> User:
    response = await client.post("/auth/login", json={"email": user.email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    return User(user.id, user.email, user.password, body["access_token"], body["refresh_token"])


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    target: str,
    headers: dict[str, str],
) -> httpx.Response:
    return await client.request(method, path.replace("{id}", target), json=body, headers=headers)


async def me(client: httpx.AsyncClient, user: User) -> httpx.Response:
    return await client.get("/auth/me", headers=user.headers)


async def admin_view(client: httpx.AsyncClient, admin: User, user_id: str) -> dict[str, Any]:
    response = await client.get(f"/admin/users/{user_id}", headers=admin.headers)
    assert response.status_code == 200, response.text
    user: dict[str, Any] = response.json()["user"]
    return user


class TestGuard:
    @pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
    async def test_without_a_token_every_admin_route_is_a_401(
        self,
        client: httpx.AsyncClient,
        alice: User,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        response = await call(client, method, path, body, alice.id, {})
        assert_unauthorized(response, "missing_token")
        assert (await me(client, alice)).status_code == 200  # untouched

    @pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
    async def test_as_a_user_every_admin_route_is_a_403_and_changes_nothing(
        self,
        client: httpx.AsyncClient,
        alice: User,
        bob: User,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        response = await call(client, method, path, body, bob.id, alice.headers)
        assert_error(response, 403, ADMIN_ONLY)
        assert "bob@example.com" not in response.text
        bob_now = (await me(client, bob)).json()["user"]
        assert bob_now["role"] == "user"
        made = await client.post(
            "/auth/login", json={"email": "made@example.com", "password": PASSWORD}
        )
        assert made.status_code == 401

    @pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
    async def test_as_an_admin_every_admin_route_answers(
        self,
        client: httpx.AsyncClient,
        root: User,
        bob: User,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ) -> None:
        response = await call(client, method, path, body, bob.id, root.headers)
        assert response.status_code in (200, 201), response.text
        assert response.json()["success"] is True

    async def test_a_user_sending_a_non_json_body_still_gets_the_403(
        self, client: httpx.AsyncClient, alice: User
    ) -> None:
        response = await client.post(
            "/admin/users",
            content=b"email=x",
            headers={**alice.headers, "Content-Type": "text/plain"},
        )
        assert_error(response, 403, ADMIN_ONLY)

    def test_the_route_list_above_is_every_admin_route(self, app: FastAPI) -> None:
        from app.routes.admin import router

        declared = {(m, r.path) for r in router.routes for m in getattr(r, "methods", ())}
        listed = {(p.values[0], p.values[1]) for p in ADMIN_ROUTES}
        assert declared == {(m, p.replace("{id}", "{user_id}")) for m, p in listed}
        # The check is router-wide: a route added later cannot forget it.
        assert any(d.dependency is get_admin for d in router.dependencies)

    async def test_the_openapi_schema_marks_admin_routes_as_needing_the_bearer(
        self, client: httpx.AsyncClient
    ) -> None:
        schema = (await client.get("/openapi.json")).json()
        operations = [
            (path, method, op)
            for path, item in schema["paths"].items()
            if path.startswith("/admin")
            for method, op in item.items()
        ]
        assert len(operations) == len(ADMIN_ROUTES)
        for path, method, op in operations:
            assert op.get("security"), (method, path)
            assert {"401", "403"} <= set(op["responses"]), (method, path)


class TestRoles:
    async def test_new_accounts_are_users(self, client: httpx.AsyncClient, alice: User) -> None:
        assert (await me(client, alice)).json()["user"]["role"] == "user"

    async def test_the_access_token_carries_the_role(
        self, client: httpx.AsyncClient, alice: User, root: User
    ) -> None:
        assert jwt.get_unverified_claims(alice.access_token)["role"] == "user"
        assert jwt.get_unverified_claims(root.access_token)["role"] == "admin"
        assert (await me(client, root)).json()["user"]["role"] == "admin"

    async def test_a_refreshed_token_carries_the_role_of_now(
        self, client: httpx.AsyncClient, root: User, bob: User
    ) -> None:
        promoted = await client.patch(
            f"/admin/users/{bob.id}", json={"role": "admin"}, headers=root.headers
        )
        assert promoted.json()["user"]["role"] == "admin"
        renewed = await client.post("/auth/refresh", json={"refresh_token": bob.refresh_token})
        assert jwt.get_unverified_claims(renewed.json()["access_token"])["role"] == "admin"

    async def test_a_promotion_counts_from_the_next_request(
        self, client: httpx.AsyncClient, root: User, bob: User
    ) -> None:
        assert (await client.get("/admin/stats", headers=bob.headers)).status_code == 403
        await client.patch(f"/admin/users/{bob.id}", json={"role": "admin"}, headers=root.headers)
        # Bob's token still says "user"; the stored role is what counts.
        assert (await client.get("/admin/stats", headers=bob.headers)).status_code == 200

    async def test_a_demoted_admin_loses_admin_routes_at_once(
        self, client: httpx.AsyncClient, root: User, make_admin: UserFactory
    ) -> None:
        other = await make_admin("other-admin@example.com")
        assert (await client.get("/admin/stats", headers=other.headers)).status_code == 200
        demoted = await client.patch(
            f"/admin/users/{other.id}", json={"role": "user"}, headers=root.headers
        )
        assert demoted.json()["user"]["role"] == "user"
        assert_error(await client.get("/admin/stats", headers=other.headers), 403, ADMIN_ONLY)
        # Still a user, with a working token: demotion is not a logout.
        assert (await me(client, other)).json()["user"]["role"] == "user"

    async def test_an_admin_cannot_demote_themselves(
        self, client: httpx.AsyncClient, root: User
    ) -> None:
        response = await client.patch(
            f"/admin/users/{root.id}", json={"role": "user"}, headers=root.headers
        )
        assert_error(response, 409)
        assert (await me(client, root)).json()["user"]["role"] == "admin"

    async def test_two_admins_disabling_each_other_at_once_leave_one_in_charge(
        self, client: httpx.AsyncClient, root: User, make_admin: UserFactory
    ) -> None:
        other = await make_admin("other-admin@example.com")
        first, second = await asyncio.gather(
            client.post(f"/admin/users/{other.id}/disable", headers=root.headers),
            client.post(f"/admin/users/{root.id}/disable", headers=other.headers),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 403]
        survivors = [u for u in (root, other) if (await me(client, u)).status_code == 200]
        assert len(survivors) == 1
        stats = await client.get("/admin/stats", headers=survivors[0].headers)
        assert stats.json()["disabled_users"] == 1

    @pytest.mark.parametrize("role", ["root", "ADMIN", "", None, 1])
    async def test_an_unknown_role_is_a_422(
        self, client: httpx.AsyncClient, root: User, bob: User, role: Any
    ) -> None:
        body = {"role": role} if role is not None else {"role": None, "disabled": "yes"}
        response = await client.patch(f"/admin/users/{bob.id}", json=body, headers=root.headers)
        assert_error(response, 422)
        assert (await me(client, bob)).json()["user"]["role"] == "user"


class TestListUsers:
    async def test_lists_accounts_newest_first_with_their_counts(
        self,
        client: httpx.AsyncClient,
        root: User,
        alice: User,
        bob: User,
        make_session: SessionFactory,
    ) -> None:
        await make_session(alice, initial_message="one")
        await make_session(alice, initial_message="two")
        await make_session(bob)
        response = await client.get("/admin/users", headers=root.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [u["email"] for u in body["users"]] == [
            "bob@example.com",
            "alice@example.com",
            "root@example.com",
        ]
        assert body["count"] == 3
        assert body["next_cursor"] is None
        by_email = {u["email"]: u for u in body["users"]}
        assert by_email["alice@example.com"]["session_count"] == 2
        assert by_email["alice@example.com"]["message_count"] == 4
        assert by_email["bob@example.com"]["session_count"] == 1
        assert by_email["bob@example.com"]["message_count"] == 0
        assert by_email["root@example.com"]["role"] == "admin"
        assert by_email["alice@example.com"]["disabled"] is False
        assert "password" not in response.text
        assert "$2b$" not in response.text

    async def test_pages_cover_every_account_once(
        self, client: httpx.AsyncClient, root: User, make_user: UserFactory
    ) -> None:
        for n in range(6):
            await make_user(f"paged{n}@example.com")
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            body = (await client.get("/admin/users", params=params, headers=root.headers)).json()
            assert body["count"] == len(body["users"]) <= 3
            seen += [u["id"] for u in body["users"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 7

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            ("alice", ["alice@example.com"]),
            ("ALICE@EXAMPLE", ["alice@example.com"]),
            ("  bob  ", ["bob@example.com"]),
            ("example.com", ["bob@example.com", "alice@example.com", "root@example.com"]),
            ("%", []),
            ("_", ["under_score@example.org"]),
            ("nobody", []),
        ],
    )
    async def test_searches_by_part_of_the_email(
        self,
        client: httpx.AsyncClient,
        root: User,
        alice: User,
        bob: User,
        make_user: UserFactory,
        query: str,
        expected: list[str],
    ) -> None:
        await make_user("under_score@example.org")
        response = await client.get("/admin/users", params={"email": query}, headers=root.headers)
        emails = [u["email"] for u in response.json()["users"]]
        assert emails == expected

    async def test_the_search_finds_only_emails_not_other_issuers_ids(
        self, app: FastAPI, client: httpx.AsyncClient, root: User
    ) -> None:
        from app import repository

        async with app.state.services.db.transaction() as conn:
            await repository.ensure_external_user(conn, "django:7", "django")
        response = await client.get(
            "/admin/users", params={"email": "django"}, headers=root.headers
        )
        assert response.json()["users"] == []
        listed = (await client.get("/admin/users", headers=root.headers)).json()["users"]
        assert "django:7" in [u["id"] for u in listed]

    async def test_a_forged_cursor_is_a_422(self, client: httpx.AsyncClient, root: User) -> None:
        response = await client.get(
            "/admin/users", params={"cursor": "not-a-cursor"}, headers=root.headers
        )
        assert_error(response, 422)

    @pytest.mark.parametrize("limit", [0, 101, "many"])
    async def test_an_out_of_range_limit_is_a_422(
        self, client: httpx.AsyncClient, root: User, limit: Any
    ) -> None:
        response = await client.get("/admin/users", params={"limit": limit}, headers=root.headers)
        assert_error(response, 422)

    async def test_a_user_from_django_shows_without_an_email(self, tmp_path: Path) -> None:
        from app import repository

        settings = make_settings(tmp_path)
        async with running(settings) as (app, client):
            async with app.state.services.db.transaction() as conn:
                await repository.ensure_external_user(conn, "django:42", "django")
            await client.post(
                "/auth/register", json={"email": "r@example.com", "password": PASSWORD}
            )
            await admin_service.set_role_by_email(
                app.state.services.db, email="r@example.com", role="admin"
            )
            login = await client.post(
                "/auth/login", json={"email": "r@example.com", "password": PASSWORD}
            )
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            users = (await client.get("/admin/users", headers=headers)).json()["users"]
        django = next(u for u in users if u["id"] == "django:42")
        assert django["email"] is None
        assert django["auth_source"] == "django"


class TestReadUser:
    async def test_an_unknown_id_is_a_404(self, client: httpx.AsyncClient, root: User) -> None:
        response = await client.get(f"/admin/users/{NOBODY}", headers=root.headers)
        assert_error(response, 404, "User not found")

    @pytest.mark.parametrize(
        ("method", "suffix", "body"),
        [
            ("PATCH", "", {"disabled": True}),
            ("POST", "/disable", None),
            ("POST", "/enable", None),
            ("DELETE", "", None),
        ],
    )
    async def test_changing_an_unknown_id_is_a_404(
        self,
        client: httpx.AsyncClient,
        root: User,
        method: str,
        suffix: str,
        body: dict[str, Any] | None,
    ) -> None:
        response = await client.request(
            method, f"/admin/users/{NOBODY}{suffix}", json=body, headers=root.headers
        )
        assert_error(response, 404, "User not found")


class TestCreateUser:
    async def test_an_admin_creates_an_account_that_can_log_in(
        self, client: httpx.AsyncClient, root: User
    ) -> None:
        response = await client.post(
            "/admin/users",
            json={"email": " New@Example.com ", "password": "given by the admin", "role": "admin"},
            headers=root.headers,
        )
        assert response.status_code == 201, response.text
        user = response.json()["user"]
        assert (user["email"], user["role"], user["session_count"]) == (
            "new@example.com",
            "admin",
            0,
        )
        assert "given by the admin" not in response.text
        login = await client.post(
            "/auth/login", json={"email": "new@example.com", "password": "given by the admin"}
        )
        assert login.status_code == 200

    async def test_the_role_defaults_to_user(self, client: httpx.AsyncClient, root: User) -> None:
        response = await client.post(
            "/admin/users",
            json={"email": "plain@example.com", "password": PASSWORD},
            headers=root.headers,
        )
        assert response.json()["user"]["role"] == "user"

    async def test_a_taken_email_is_a_409(
        self, client: httpx.AsyncClient, root: User, alice: User
    ) -> None:
        response = await client.post(
            "/admin/users",
            json={"email": "ALICE@example.com", "password": "another password"},
            headers=root.headers,
        )
        assert_error(response, 409, "User already exists")
        relogged = await client.post(
            "/auth/login", json={"email": "alice@example.com", "password": PASSWORD}
        )
        assert relogged.status_code == 200

    @pytest.mark.parametrize(
        "body",
        [
            {"email": "bad", "password": PASSWORD},
            {"email": "short@example.com", "password": "sh0rt!"},
            {"email": "role@example.com", "password": PASSWORD, "role": "owner"},
        ],
    )
    async def test_invalid_input_is_a_422_without_the_password(
        self, client: httpx.AsyncClient, root: User, body: dict[str, Any]
    ) -> None:
        response = await client.post("/admin/users", json=body, headers=root.headers)
        assert_error(response, 422)
        assert body["password"] not in response.text


class TestDisable:
    async def test_a_disabled_users_open_session_gets_401_at_once(
        self, client: httpx.AsyncClient, root: User, alice: User, make_session: SessionFactory
    ) -> None:
        session = await make_session(alice)
        response = await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        assert response.status_code == 200, response.text
        assert response.json()["user"]["disabled"] is True
        assert response.json()["user"]["disabled_at"] is not None
        for attempt in (
            client.get("/chat/sessions", headers=alice.headers),
            client.get(f"/chat/session/{session['id']}", headers=alice.headers),
            client.post(
                "/chat/message",
                json={"session_id": session["id"], "message": "still here?"},
                headers=alice.headers,
            ),
            client.get("/auth/me", headers=alice.headers),
        ):
            assert_unauthorized(await attempt, "user_disabled")

    async def test_a_disabled_users_refresh_token_is_refused(
        self, client: httpx.AsyncClient, root: User, alice: User
    ) -> None:
        await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        response = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
        assert_unauthorized(response)

    async def test_a_disabled_user_cannot_log_in(
        self, client: httpx.AsyncClient, root: User, alice: User
    ) -> None:
        await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        right = await client.post("/auth/login", json={"email": alice.email, "password": PASSWORD})
        assert_error(right, 403)
        assert right.json()["detail"] == "account_disabled"
        assert "access_token" not in right.text

    async def test_a_wrong_password_says_nothing_of_the_account_being_disabled(
        self, client: httpx.AsyncClient, root: User, alice: User
    ) -> None:
        await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        wrong = await client.post(
            "/auth/login", json={"email": alice.email, "password": "not the password"}
        )
        unknown = await client.post(
            "/auth/login", json={"email": "nobody@example.com", "password": "not the password"}
        )
        assert_error(wrong, 401, "Invalid credentials")
        assert wrong.json() == unknown.json()

    async def test_enabling_lets_the_user_log_in_but_old_tokens_stay_dead(
        self, client: httpx.AsyncClient, root: User, alice: User
    ) -> None:
        await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        enabled = await client.post(f"/admin/users/{alice.id}/enable", headers=root.headers)
        assert enabled.json()["user"]["disabled"] is False
        assert enabled.json()["user"]["disabled_at"] is None
        assert_unauthorized(await me(client, alice), "token_revoked")
        refreshed = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
        assert_unauthorized(refreshed)
        fresh = await relogin(client, alice)
        assert (await me(client, fresh)).status_code == 200

    async def test_patch_disables_and_enables_too(
        self, client: httpx.AsyncClient, root: User, alice: User
    ) -> None:
        off = await client.patch(
            f"/admin/users/{alice.id}", json={"disabled": True}, headers=root.headers
        )
        assert off.json()["user"]["disabled"] is True
        assert_unauthorized(await me(client, alice), "user_disabled")
        on = await client.patch(
            f"/admin/users/{alice.id}", json={"disabled": False}, headers=root.headers
        )
        assert on.json()["user"]["disabled"] is False

    async def test_disabling_twice_keeps_the_first_time(
        self, client: httpx.AsyncClient, root: User, alice: User
    ) -> None:
        first = await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        again = await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        assert again.json()["user"]["disabled_at"] == first.json()["user"]["disabled_at"]

    async def test_the_data_of_a_disabled_user_is_kept(
        self, client: httpx.AsyncClient, root: User, alice: User, make_session: SessionFactory
    ) -> None:
        await make_session(alice, initial_message="keep me")
        await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        await client.post(f"/admin/users/{alice.id}/enable", headers=root.headers)
        fresh = await relogin(client, alice)
        sessions = (await client.get("/chat/sessions", headers=fresh.headers)).json()
        assert sessions["count"] == 1
        assert sessions["sessions"][0]["message_count"] == 2

    async def test_an_admin_cannot_disable_themselves(
        self, client: httpx.AsyncClient, root: User
    ) -> None:
        response = await client.post(f"/admin/users/{root.id}/disable", headers=root.headers)
        assert_error(response, 409)
        assert (await me(client, root)).status_code == 200

    async def test_other_users_go_on(
        self, client: httpx.AsyncClient, root: User, alice: User, bob: User
    ) -> None:
        await client.post(f"/admin/users/{alice.id}/disable", headers=root.headers)
        assert (await me(client, bob)).status_code == 200


class TestDelete:
    async def test_deletes_the_user_and_all_their_data(
        self,
        client: httpx.AsyncClient,
        root: User,
        alice: User,
        bob: User,
        make_session: SessionFactory,
    ) -> None:
        await make_session(alice, initial_message="alice's")
        kept = await make_session(bob, initial_message="bob's")
        before = (await client.get("/admin/stats", headers=root.headers)).json()
        response = await client.delete(f"/admin/users/{alice.id}", headers=root.headers)
        assert response.status_code == 200, response.text
        assert_unauthorized(await me(client, alice), "user_not_found")
        login = await client.post("/auth/login", json={"email": alice.email, "password": PASSWORD})
        assert_error(login, 401, "Invalid credentials")
        assert_error(await client.get(f"/admin/users/{alice.id}", headers=root.headers), 404)
        after = (await client.get("/admin/stats", headers=root.headers)).json()
        assert after["users"] == before["users"] - 1
        assert after["sessions"] == before["sessions"] - 1
        assert after["messages"] == before["messages"] - 2
        history = await client.get(f"/chat/session/{kept['id']}/history", headers=bob.headers)
        assert history.json()["messages"][0]["content"] == "bob's"

    async def test_the_email_can_sign_up_again(
        self, client: httpx.AsyncClient, root: User, alice: User
    ) -> None:
        await client.delete(f"/admin/users/{alice.id}", headers=root.headers)
        again = await client.post(
            "/auth/register", json={"email": alice.email, "password": PASSWORD}
        )
        assert again.status_code == 201
        assert again.json()["user"]["id"] != alice.id

    async def test_an_admin_cannot_delete_themselves_here(
        self, client: httpx.AsyncClient, root: User
    ) -> None:
        assert_error(await client.delete(f"/admin/users/{root.id}", headers=root.headers), 409)
        assert (await me(client, root)).status_code == 200


class TestStats:
    async def test_counts_users_sessions_and_messages(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        root: User,
        alice: User,
        bob: User,
        make_session: SessionFactory,
    ) -> None:
        await make_session(alice, initial_message="one")
        await make_session(alice)
        session = await make_session(bob, initial_message="two")
        await client.post(f"/admin/users/{bob.id}/disable", headers=root.headers)
        # A message from last week, as if it had been written then.
        async with app.state.services.db.transaction() as conn:
            await conn.execute(
                "UPDATE messages SET created_at = '2026-01-01T00:00:00.000000Z'"
                " WHERE session_id = ? AND role = 'user'",
                (session["id"],),
            )
        response = await client.get("/admin/stats", headers=root.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert {k: body[k] for k in body if k != "success"} == {
            "users": 3,
            "admins": 1,
            "disabled_users": 1,
            "sessions": 3,
            "messages": 4,
            "messages_last_day": 3,
        }


class TestRegistrationSwitch:
    async def test_closed_sign_up_is_a_403_and_admins_create_accounts(self, tmp_path: Path) -> None:
        settings = make_settings(tmp_path, registration_enabled=False)
        async with running(settings) as (app, client):
            closed = await client.post(
                "/auth/register", json={"email": "new@example.com", "password": PASSWORD}
            )
            assert_error(closed, 403)
            assert closed.json()["detail"] == "registration_disabled"
            invalid = await client.post("/auth/register", json={"email": "x"})
            assert_error(invalid, 403)

            admin = await admin_service.create_user(
                app.state.services.db,
                app.state.services.hasher,
                email="boss@example.com",
                password=PASSWORD,
                role="admin",
            )
            login = await client.post(
                "/auth/login", json={"email": admin.email, "password": PASSWORD}
            )
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            made = await client.post(
                "/admin/users",
                json={"email": "new@example.com", "password": PASSWORD},
                headers=headers,
            )
            assert made.status_code == 201, made.text
            new_login = await client.post(
                "/auth/login", json={"email": "new@example.com", "password": PASSWORD}
            )
            assert new_login.status_code == 200

    async def test_sign_up_is_open_by_default(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/auth/register", json={"email": "open@example.com", "password": PASSWORD}
        )
        assert response.status_code == 201
