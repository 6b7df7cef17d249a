"""Rate limits, counted by the `limits` library in memory or in Redis.

Which bucket a request counts against:

- a chat write (new session, message, send) with a verified access token:
  that user's `chat` bucket;
- anything without a verified token (none, forged, expired, wrong type): the
  client IP's `anonymous` bucket, and for login, sign-up and refresh their
  own per-IP bucket too;
- a login, also the target email's `login_email` bucket, the same for emails
  with and without an account, checked before the password.

"Verified" is the signature and the clock checks, cached, without the
database: a request the revocation check then refuses is a 401 all the same.
"""

import hashlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import coredis
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import Scope

from app.errors import AppError, TooManyRequests
from app.network import TrustedProxies

if TYPE_CHECKING:  # config imports this module for its rule names; auth need not load
    from app.auth import TokenService

logger = logging.getLogger("chatgate.ratelimit")

RULES = ("chat", "login_ip", "login_email", "register", "refresh", "anonymous")
CHAT_WRITES = frozenset(
    {("POST", "/chat/session/new"), ("POST", "/chat/message"), ("POST", "/chat/send")}
)
PER_IP = {
    ("POST", "/auth/login"): "login_ip",
    ("POST", "/auth/register"): "register",
    ("POST", "/auth/refresh"): "refresh",
}
STORAGE_ERROR_LOG_SECONDS = 60


def parse_rule(spec: str) -> tuple[RateLimitItem, ...]:
    """ "5/minute;20/hour" and the like; ValueError for anything else."""
    try:
        items = tuple(parse_many(spec))
    except ValueError:
        items = ()
    if not items:
        raise ValueError(f"{spec!r} is not a rate such as 5/minute or 5/minute;20/hour")
    return items


def async_storage_uri(uri: str) -> str:
    """The `limits` async scheme for a plain one: memory:// -> async+memory://."""
    return uri if uri.startswith("async+") else f"async+{uri}"


class RateLimiter:
    """Moving-window limits: a burst cannot straddle two fixed windows to pass twice."""

    def __init__(
        self,
        *,
        enabled: bool,
        storage_uri: str,
        rules: Mapping[str, str],
        key_prefix: str,
        tokens: "TokenService",
        proxies: TrustedProxies,
    ) -> None:
        self.enabled = enabled
        # A Redis connection pool of our own, so that shutdown can close its sockets.
        self._pool: coredis.ConnectionPool | None = None
        options: dict[str, Any] = {}
        plain = storage_uri.removeprefix("async+")
        if not plain.startswith("memory"):
            # coredis spells a socket path unix://, as `limits` does for redis+unix://.
            self._pool = coredis.ConnectionPool.from_url(plain.replace("redis+unix", "unix", 1))
            options["connection_pool"] = self._pool
        self._storage: Storage = storage_from_string(  # type: ignore[assignment]
            async_storage_uri(storage_uri), **options
        )
        self._strategy = MovingWindowRateLimiter(self._storage)
        self._rules = {name: parse_rule(rules[name]) for name in RULES}
        self._prefix = key_prefix
        self._tokens = tokens
        self._proxies = proxies
        self._storage_failed_at = 0.0

    async def check(self, rule: str, key: str) -> None:
        """Counts one request against `key`'s `rule` bucket; TooManyRequests when over."""
        if not self.enabled:
            return
        refused: list[RateLimitItem] = []
        try:
            for item in self._rules[rule]:
                if not await self._strategy.hit(item, self._prefix, rule, key):
                    refused.append(item)
            if not refused:
                return
            waits = [
                (await self._strategy.get_window_stats(item, self._prefix, rule, key)).reset_time
                for item in refused
            ]
        except Exception as exc:
            self._storage_failed(exc)
            return
        slowest = max(range(len(refused)), key=lambda i: waits[i])
        raise TooManyRequests(limit=str(refused[slowest]), seconds=waits[slowest] - time.time())

    async def check_request(self, scope: Scope) -> None:
        """The buckets a request counts against before it reaches a route."""
        route = (scope["method"], scope["path"])
        user_id = self._verified_user(scope)
        if user_id is not None:
            if route in CHAT_WRITES:
                await self.check("chat", user_id)
            return
        ip = self._proxies.client_ip(scope)
        await self.check("anonymous", ip)
        rule = PER_IP.get(route)
        if rule is not None:
            await self.check(rule, ip)

    async def check_login_email(self, email: str) -> None:
        # Keyed by a digest, so a shared Redis holds no addresses.
        await self.check("login_email", hashlib.sha256(email.encode()).hexdigest())

    def _verified_user(self, scope: Scope) -> str | None:
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        if len(values) != 1:
            return None
        scheme, _, token = values[0].decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        try:
            return self._tokens.verify_access(token).user_id
        except AppError:
            return None

    def _storage_failed(self, exc: Exception) -> None:
        """Fails open: an unreachable Redis must not take the service down with it."""
        now = time.monotonic()
        if now - self._storage_failed_at >= STORAGE_ERROR_LOG_SECONDS:
            self._storage_failed_at = now
            logger.error(
                "rate-limit storage failed (%s); requests pass unlimited until it answers",
                type(exc).__name__,
            )

    async def storage_reachable(self) -> bool:
        try:
            return bool(await self._storage.check())
        except Exception:
            return False

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.disconnect()
        if isinstance(self._storage, MemoryStorage):
            # Its expiry task would outlive the event loop otherwise.
            timer = getattr(self._storage, "timer", None)
            if timer is not None:
                timer.cancel()
