"""Token hardening: every time claim bounded, one spelling per token, a login's absolute
lifetime, and no secret in a log line."""

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import io
import logging
import string
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from uvicorn.logging import AccessFormatter

from app.auth import MAX_TIMESTAMP
from app.config import Settings
from app.logredact import REDACTED, RedactingFilter
from tests.cli_process import CHATGATE
from tests.helpers import PASSWORD, TEST_SECRET, User, make_settings, running
from tests.server_process import (
    START_TIMEOUT,
    ServerProcess,
    base_environment,
    child_environment,
    free_port,
)
from tests.test_django_tokens import DjangoSite
from tests.test_django_tokens import django_site as django_site  # the fixture, re-exported
from tests.test_lifecycle import claims as our_claims
from tests.test_lifecycle import current_login, logins_of, refresh, register_and_log_in
from tests.test_tokens import assert_rejected, claims_for, segment, signed

DAY = 86400
OUT_OF_RANGE = [2**63, 2**64, -1, MAX_TIMESTAMP + 1]
OUT_OF_RANGE_IDS = ["2**63", "2**64", "minus-1", "year-10000"]
TIME_CLAIMS = ["exp", "iat", "nbf"]
BASE64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/auth/me", headers=bearer(token))


async def logout(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post("/auth/logout", headers=bearer(token))


@pytest.fixture
async def django_client(
    tmp_path: Path, django_site: DjangoSite
) -> AsyncIterator[httpx.AsyncClient]:
    """An app that accepts the Django site's tokens."""
    async with running(make_settings(tmp_path, external_jwt_secret=django_site.key)) as (_, c):
        yield c


# --- every time claim fits a timestamp ----------------------------------------------


class TestTimeClaimsAreBounded:
    @pytest.mark.parametrize("claim", TIME_CLAIMS)
    @pytest.mark.parametrize("value", OUT_OF_RANGE, ids=OUT_OF_RANGE_IDS)
    async def test_our_access_token_with_a_time_out_of_range_is_invalid(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, claim: str, value: int
    ) -> None:
        # Malformed, not "expired": token_expired would send a client to refresh.
        token = signed(claims_for(alice, settings, **{claim: value}))

        assert_rejected(await me(client, token), token, "invalid_token")

    @pytest.mark.parametrize("claim", TIME_CLAIMS)
    @pytest.mark.parametrize("value", OUT_OF_RANGE, ids=OUT_OF_RANGE_IDS)
    async def test_our_refresh_token_with_a_time_out_of_range_is_invalid(
        self, client: httpx.AsyncClient, alice: User, settings: Settings, claim: str, value: int
    ) -> None:
        family = (await current_login(client, alice.access_token))["id"]
        token = signed(our_claims(alice.id, settings, "refresh", fam=family, **{claim: value}))

        assert_rejected(await refresh(client, token), token, "invalid_token")
        assert (await refresh(client, alice.refresh_token)).status_code == 200

    @pytest.mark.parametrize("claim", TIME_CLAIMS)
    @pytest.mark.parametrize("value", OUT_OF_RANGE, ids=OUT_OF_RANGE_IDS)
    async def test_a_django_token_with_a_time_out_of_range_is_invalid_never_a_500(
        self,
        django_client: httpx.AsyncClient,
        django_site: DjangoSite,
        claim: str,
        value: int,
    ) -> None:
        token = django_site.token(**{claim: value})

        assert_rejected(await me(django_client, token), token, "invalid_token")
        assert_rejected(await logout(django_client, token), token, "invalid_token")

    async def test_a_django_token_expiring_in_year_9999_works_and_logs_out(
        self, django_client: httpx.AsyncClient, django_site: DjangoSite
    ) -> None:
        token = django_site.token(exp=MAX_TIMESTAMP)
        assert (await me(django_client, token)).status_code == 200

        assert (await logout(django_client, token)).status_code == 200

        assert_rejected(await me(django_client, token), token, "token_revoked")


# --- one spelling per token -----------------------------------------------------------


def padded(token: str) -> str:
    """The signature with the `=` padding base64 would give it (RFC 7515 leaves it off)."""
    return token + "=" * (-len(token.rpartition(".")[2]) % 4 or 4)


def low_bits_changed(token: str) -> str:
    """The last character's unused low bit flipped: the signature decodes to the same
    bytes (its 32 bytes take 43 characters, 2 bits to spare)."""
    last = token[-1]
    return token[:-1] + BASE64URL[BASE64URL.index(last) ^ 1]


RESPELLINGS = [padded, low_bits_changed]
RESPELLING_IDS = ["padded", "low-bits-changed"]


class TestOneSpellingPerToken:
    @pytest.mark.parametrize("respell", RESPELLINGS, ids=RESPELLING_IDS)
    async def test_our_access_token_respelled_is_invalid(
        self, client: httpx.AsyncClient, alice: User, respell: Any
    ) -> None:
        token = respell(alice.access_token)

        assert_rejected(await me(client, token), token, "invalid_token")

    @pytest.mark.parametrize("respell", RESPELLINGS, ids=RESPELLING_IDS)
    async def test_a_respelling_is_refused_after_the_real_token_was_accepted(
        self, client: httpx.AsyncClient, alice: User, respell: Any
    ) -> None:
        # The first use remembers the signature check, keyed by the token's text.
        assert (await me(client, alice.access_token)).status_code == 200
        token = respell(alice.access_token)

        assert_rejected(await me(client, token), token, "invalid_token")
        assert (await me(client, alice.access_token)).status_code == 200

    @pytest.mark.parametrize("respell", RESPELLINGS, ids=RESPELLING_IDS)
    async def test_our_refresh_token_respelled_is_invalid_and_stays_usable(
        self, client: httpx.AsyncClient, alice: User, respell: Any
    ) -> None:
        token = respell(alice.refresh_token)

        assert_rejected(await refresh(client, token), token, "invalid_token")
        assert (await refresh(client, alice.refresh_token)).status_code == 200

    @pytest.mark.parametrize("respell", RESPELLINGS, ids=RESPELLING_IDS)
    async def test_a_django_token_respelled_is_invalid(
        self, django_client: httpx.AsyncClient, django_site: DjangoSite, respell: Any
    ) -> None:
        token = django_site.token()
        assert (await me(django_client, token)).status_code == 200

        assert_rejected(await me(django_client, respell(token)), respell(token), "invalid_token")

    async def test_a_token_signed_over_a_padded_payload_is_invalid(
        self, client: httpx.AsyncClient, alice: User, settings: Settings
    ) -> None:
        # Signed with our key, yet in a spelling no encoder writes.
        claims = claims_for(alice, settings)
        payload = next(
            p for p in (segment({**claims, "x": "a" * n}) for n in range(3)) if len(p) % 4
        )
        header = segment({"alg": "HS256", "typ": "JWT"})
        token = signed_over(f"{header}.{payload}{'=' * (-len(payload) % 4)}")

        assert_rejected(await me(client, token), token, "invalid_token")


def signed_over(signing_input: str) -> str:
    digest = hmac.new(TEST_SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"


# --- a login's absolute lifetime --------------------------------------------------------


def epoch(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp())


async def age_login(app: FastAPI, user: User, seconds: int) -> int:
    """Moves the user's login back in time by `seconds`, as if the password login had
    happened then; the new start, in epoch seconds."""
    family = jwt.get_unverified_claims(user.access_token)["fam"]
    started = time.time() - seconds
    stamp = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    async with app.state.services.db.transaction() as conn:
        await conn.execute("UPDATE login_families SET created_at = ? WHERE id = ?", (stamp, family))
    return int(started)


class TestLoginMaxAge:
    async def test_a_login_past_its_maximum_age_no_longer_refreshes(
        self, client: httpx.AsyncClient, app: FastAPI, settings: Settings, alice: User
    ) -> None:
        await age_login(app, alice, settings.login_max_age_days * DAY + 60)

        response = await refresh(client, alice.refresh_token)

        assert_rejected(response, alice.refresh_token, "login_expired")

    async def test_a_login_refreshed_every_day_still_ends_at_its_maximum_age(
        self, tmp_path: Path
    ) -> None:
        settings = make_settings(tmp_path, login_max_age_days=3, refresh_token_expire_days=2)
        async with running(settings) as (app, c):
            user = await register_and_log_in(c, "daily@example.com")
            for day in (1, 2):
                await age_login(app, user, day * DAY)
                response = await refresh(c, user.refresh_token)
                assert response.status_code == 200, response.text
                user = dataclasses.replace(user, **_pair(response))
            await age_login(app, user, 3 * DAY + 1)

            response = await refresh(c, user.refresh_token)

        assert_rejected(response, user.refresh_token, "login_expired")

    async def test_a_refresh_near_the_end_gets_tokens_that_end_with_the_login(
        self, client: httpx.AsyncClient, app: FastAPI, settings: Settings, alice: User
    ) -> None:
        max_age = settings.login_max_age_days * DAY
        started = await age_login(app, alice, max_age - 1800)  # half an hour left

        response = await refresh(client, alice.refresh_token)

        assert response.status_code == 200, response.text
        ends = started + max_age
        refresh_claims = jwt.get_unverified_claims(response.json()["refresh_token"])
        access_claims = jwt.get_unverified_claims(response.json()["access_token"])
        assert refresh_claims["exp"] == ends
        assert access_claims["exp"] == ends
        assert response.json()["expires_in"] == ends - access_claims["iat"]
        login = await current_login(client, response.json()["access_token"])
        assert epoch(login["expires_at"]) == ends
        assert epoch(login["refresh_expires_at"]) == ends

    async def test_logins_show_when_they_end(
        self, client: httpx.AsyncClient, settings: Settings, alice: User
    ) -> None:
        login = await current_login(client, alice.access_token)

        created = epoch(login["created_at"])
        assert epoch(login["expires_at"]) == created + settings.login_max_age_days * DAY
        refresh_exp = jwt.get_unverified_claims(alice.refresh_token)["exp"]
        assert epoch(login["refresh_expires_at"]) == refresh_exp

    async def test_the_maximum_age_follows_the_setting(self, tmp_path: Path) -> None:
        async with running(make_settings(tmp_path, login_max_age_days=7)) as (_, c):
            user = await register_and_log_in(c, "weekly@example.com")
            login = await current_login(c, user.access_token)

        assert epoch(login["expires_at"]) == epoch(login["created_at"]) + 7 * DAY

    async def test_a_login_past_its_maximum_age_is_not_listed(
        self, client: httpx.AsyncClient, app: FastAPI, settings: Settings, alice: User
    ) -> None:
        phone = await _log_in(client, alice)
        await age_login(app, alice, settings.login_max_age_days * DAY + 60)

        logins = await logins_of(client, phone.access_token)

        assert [row["current"] for row in logins] == [True]

    async def test_the_end_is_in_the_openapi_schema(self, app: FastAPI) -> None:
        fields = app.openapi()["components"]["schemas"]["LoginInfo"]["properties"]
        assert "LOGIN_MAX_AGE_DAYS" in fields["expires_at"]["description"]
        assert "refresh_expires_at" in fields


def _pair(response: httpx.Response) -> dict[str, str]:
    body = response.json()
    return {"access_token": body["access_token"], "refresh_token": body["refresh_token"]}


async def _log_in(client: httpx.AsyncClient, user: User) -> User:
    response = await client.post(
        "/auth/login", json={"email": user.email, "password": user.password}
    )
    assert response.status_code == 200, response.text
    return dataclasses.replace(user, **_pair(response))


# --- no secret in a log line ------------------------------------------------------------

JWT_LIKE = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJlLW9mLWEtdG9rZW4"


def access_line(path: str) -> str:
    """What uvicorn's access log writes for one request, through the filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
    handler.addFilter(RedactingFilter())
    logger = logging.Logger("access-line")
    logger.addHandler(handler)
    # As uvicorn's h11 and httptools protocols log a response.
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    return stream.getvalue()


class TestRedaction:
    @pytest.mark.parametrize(
        "name",
        [
            "access_token",
            "refresh_token",
            "token",
            "password",
            "current_password",
            "new_password",
            "api_key",
            "X-Api-Key",
            "access%5Ftoken",
        ],
    )
    def test_a_secret_parameter_is_redacted_in_the_access_line(self, name: str) -> None:
        line = access_line(f"/auth/me?limit=5&{name}=hunter2&q=x")

        assert "hunter2" not in line
        request = f"GET /auth/me?limit=5&{name}={REDACTED}&q=x HTTP/1.1"
        assert line == f'127.0.0.1:5000 - "{request}" 200 OK\n'

    def test_a_jwt_anywhere_in_the_path_is_redacted(self) -> None:
        line = access_line(f"/chat/session/{JWT_LIKE}?x={JWT_LIKE}")

        assert JWT_LIKE not in line
        assert f"/chat/session/{REDACTED}?x={REDACTED}" in line

    def test_other_parameters_are_left_alone(self) -> None:
        path = "/chat/sessions?limit=20&cursor=abc&monkey=banana&q=password"
        assert f"GET {path} HTTP/1.1" in access_line(path)

    def test_a_bearer_credential_is_redacted(self) -> None:
        record = logging.LogRecord(
            "chatgate.x", logging.WARNING, __file__, 1, "sent %s", ("Bearer abc.def",), None
        )
        RedactingFilter().filter(record)
        assert record.getMessage() == f"sent Bearer {REDACTED}"

    def test_a_traceback_is_redacted(self) -> None:
        try:
            raise ValueError(f"bad token={JWT_LIKE}")
        except ValueError:
            record = logging.LogRecord(
                "chatgate.x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
            )
        RedactingFilter().filter(record)
        assert record.exc_text is not None
        assert JWT_LIKE not in record.exc_text
        assert "ValueError" in record.exc_text

    async def test_chatgates_own_loggers_are_redacted(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        async with running(make_settings(tmp_path)):
            with caplog.at_level(logging.INFO, logger="chatgate"):
                logging.getLogger("chatgate.http").info("retrying /x?password=%s", "hunter2")

        assert "hunter2" not in caplog.text
        assert f"/x?password={REDACTED}" in caplog.text


def wait_for(log: Path, text: str) -> str:
    """The log once it holds `text` (handlers flush each line; the write may lag)."""
    deadline = time.monotonic() + 10
    while True:
        content = log.read_text(errors="replace")
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.05)


def leak_secrets(url: str) -> tuple[str, str]:
    """Registers, logs in and sends the tokens and a password in query strings, as a
    careless client would; (access token, refresh token)."""
    credentials = {"email": "leaky@example.com", "password": PASSWORD}
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/auth/register", json=credentials).status_code == 201
        tokens = http.post("/auth/login", json=credentials).json()
        access, refresh_token = tokens["access_token"], tokens["refresh_token"]
        query = {"access_token": access, "password": "hunter2", "refresh_token": refresh_token}
        assert http.get("/auth/me", params=query, headers=bearer(access)).status_code == 200
        http.get(f"/chat/session/{access}", headers=bearer(access))
    return access, refresh_token


def assert_log_is_clean(log: str, secrets: tuple[str, ...]) -> None:
    for secret in (*secrets, "hunter2"):
        assert secret not in log, log
    redacted = f"access_token={REDACTED}&password={REDACTED}&refresh_token={REDACTED}"
    assert f'"GET /auth/me?{redacted} HTTP/1.1" 200' in log, log
    assert f'"GET /chat/session/{REDACTED} HTTP/1.1"' in log, log


class TestServerLogs:
    def test_uvicorn_serving_the_app_logs_no_secret(self, tmp_path: Path) -> None:
        with ServerProcess(tmp_path, base_environment(tmp_path), name="redact") as server:
            secrets = leak_secrets(server.url)
            log = wait_for(server.log_path, "/chat/session/")

        assert_log_is_clean(log, secrets)

    def test_chatgate_serve_logs_no_secret(self, tmp_path: Path) -> None:
        port = free_port()
        log_path = tmp_path / "serve.log"
        with log_path.open("wb") as log, _serving(tmp_path, port, log) as url:
            secrets = leak_secrets(url)
            content = wait_for(log_path, "/chat/session/")

        assert_log_is_clean(content, secrets)


@contextlib.contextmanager
def _serving(workdir: Path, port: int, log: Any) -> Iterator[str]:
    process = subprocess.Popen(  # noqa: S603 - our own console script and arguments
        [CHATGATE, "serve", "--port", str(port)],
        cwd=workdir,
        env=child_environment(base_environment(workdir)),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        with httpx.Client(base_url=url, timeout=2.0) as probe:
            while process.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.TransportError):
                    if probe.get("/healthz").status_code == 200:
                        break
                time.sleep(0.05)
            else:
                pytest.fail("chatgate serve did not start")
        yield url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
