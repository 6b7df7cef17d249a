"""Rate limits, counted by the `limits` library in memory or in Redis.

Each route declares its limits where it is defined (`@rate_limited(...)`); the
route class (app/routes/limited_route.py) applies them before the body is read.

- Per-address limits (login, sign-up, refresh) belong to the route and the
  client's network, whatever headers come with the request: a bearer token,
  even a valid one, never lifts them. Those routes count against the
  `anonymous` bucket too.
- Any other route: a request with a verified access token counts against its
  user's bucket when the route names one (`chat`), and against nothing
  otherwise; without one (none, forged, expired, wrong type), against the
  client network's `anonymous` bucket. Unknown paths count as anonymous.
- Password checks (login, and the current password of a password change or
  an account deletion) are throttled by their failures: per account and
  client network tightly (`login_email`), per account loosely
  (`login_account`), checked before the password is (docs/limits.md).

"Verified" is the signature and the clock checks, cached, without the
database: a request the revocation check then refuses is a 401 all the same.
A client network is an IPv4 address, or an IPv6 address's first
RATE_LIMIT_IPV6_PREFIX bits (a /64 by default: one subscriber's allocation).
"""

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import coredis
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import Scope

from app.bearer import verified_user
from app.errors import TooManyRequests
from app.network import TrustedProxies, network_key

if TYPE_CHECKING:  # config imports this module for its rule names; auth need not load
    from app.auth import TokenService

logger = logging.getLogger("chatgate.ratelimit")

RULES = (
    "chat",
    "login_ip",
    "login_email",
    "login_account",
    "register",
    "refresh",
    "anonymous",
)
STORAGE_ERROR_LOG_SECONDS = 60

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class RouteLimits:
    """What one route's requests count against, before anything else of them is read."""

    per_address: tuple[str, ...] = ()  # the client network's buckets, whatever the headers
    per_user: str | None = None  # a verified token's user bucket; without one, `anonymous`


ANY_ROUTE = RouteLimits()  # what a route without a declaration counts against
_ATTRIBUTE = "rate_limits"


def rate_limited(limits: RouteLimits) -> Callable[[Endpoint], Endpoint]:
    """Declares a route's limits on its endpoint function, next to its path."""
    for rule in (*limits.per_address, *filter(None, [limits.per_user])):
        if rule not in RULES:
            raise ValueError(f"unknown rate-limit rule {rule!r}")

    def declare(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _ATTRIBUTE, limits)
        return endpoint

    return declare


def limits_of(endpoint: Callable[..., Any]) -> RouteLimits:
    limits: RouteLimits = getattr(endpoint, _ATTRIBUTE, ANY_ROUTE)
    return limits


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
        ipv6_prefix: int = 64,
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
        self._ipv6_prefix = ipv6_prefix
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

    async def check_route(self, scope: Scope, limits: RouteLimits) -> None:
        """The buckets a request to a route with these limits counts against."""
        if not self.enabled:
            return
        if limits.per_address:
            network = self.client_network(scope)
            for rule in ("anonymous", *limits.per_address):
                await self.check(rule, network)
            return
        user_id = verified_user(scope, self._tokens)
        if user_id is None:
            await self.check("anonymous", self.client_network(scope))
        elif limits.per_user is not None:
            await self.check(limits.per_user, user_id)

    def client_network(self, scope: Scope) -> str:
        return network_key(self._proxies.client_ip(scope), self._ipv6_prefix)

    # --- password checks: throttled by their failures -------------------------

    async def guard_password(self, email: str, ip: str | None, *, known_address: bool) -> None:
        """Before a password of `email`'s account is checked from `ip`: 429 when that
        account's failures from that network, or (unless the address is one the account
        already logs in from) from everywhere, are spent. Unknown emails alike."""
        if not self.enabled:
            return
        account, pair = self._password_keys(email, ip)
        await self._refuse_if_spent("login_email", pair)
        if not known_address:
            await self._refuse_if_spent("login_account", account)

    async def password_failed(self, email: str, ip: str | None) -> None:
        """Counts a wrong password for `email`'s account, from `ip`."""
        if not self.enabled:
            return
        account, pair = self._password_keys(email, ip)
        try:
            for rule, key in (("login_email", pair), ("login_account", account)):
                for item in self._rules[rule]:
                    await self._strategy.hit(item, self._prefix, rule, key)
        except Exception as exc:
            self._storage_failed(exc)

    async def account_spent(self, email: str) -> bool:
        """Whether `email`'s account-wide failure budget is spent (the caller then asks
        whether the client's address is one the account is known at)."""
        if not self.enabled:
            return False
        account, _ = self._password_keys(email, None)
        return await self._spent_item("login_account", account) is not None

    def _password_keys(self, email: str, ip: str | None) -> tuple[str, str]:
        # Keyed by a digest, so a shared Redis holds no addresses.
        account = hashlib.sha256(email.encode()).hexdigest()
        network = network_key(ip, self._ipv6_prefix) if ip else "unknown"
        return account, f"{account}:{network}"

    async def _refuse_if_spent(self, rule: str, key: str) -> None:
        spent = await self._spent_item(rule, key)
        if spent is not None:
            item, reset_at = spent
            raise TooManyRequests(limit=str(item), seconds=reset_at - time.time())

    async def _spent_item(self, rule: str, key: str) -> tuple[RateLimitItem, float] | None:
        """The item of `rule` that the next hit would exceed, and when it frees a place."""
        try:
            for item in self._rules[rule]:
                if not await self._strategy.test(item, self._prefix, rule, key):
                    stats = await self._strategy.get_window_stats(item, self._prefix, rule, key)
                    return item, stats.reset_time
        except Exception as exc:
            self._storage_failed(exc)
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
