"""Password hashing (always off the event loop) and access/refresh token issue and checks."""

import base64
import functools
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import anyio
from jose import jws, jwt
from passlib.context import CryptContext

from app.errors import ServiceUnavailable, Unauthorized, retry_after

T = TypeVar("T")

ALGORITHM = "HS256"
ACCESS = "access"
EXTERNAL_SOURCE = "django"
REFRESH = "refresh"
MAX_TOKEN_CHARS = 4096
CLOCK_SKEW_SECONDS = 30
MAX_TIMESTAMP = 253_402_300_799  # 9999-12-31T23:59:59Z
# Signature checks remembered, by token: a client sends the same access token with
# every request until it expires, and checking HS256 through python-jose costs more
# than the rest of a request's auth together. The clock checks still run each time.
VERIFIED_TOKENS_CACHED = 4096
DEFAULT_LOGIN_MAX_AGE_SECONDS = 90 * 86400  # Settings.login_max_age_days' default
_BASE64URL = re.compile("[A-Za-z0-9_-]*")


class PasswordHasher:
    """bcrypt through passlib, with every character significant.

    New hashes are `bcrypt_sha256` (HMAC-SHA256 before bcrypt, so bytes past 72
    count); plain `$2b$` hashes from older systems still verify and are upgraded
    on the next successful login. Hashing runs in worker threads, at most
    `concurrency` at once, so the event loop keeps serving requests; one that
    would wait longer than `max_wait` seconds for a slot (judged from the time
    a hash took at start-up) is refused with a 503 and a Retry-After instead
    of queueing without bound.
    """

    def __init__(self, rounds: int, concurrency: int, max_wait: float | None = None) -> None:
        self._context = CryptContext(
            schemes=["bcrypt_sha256", "bcrypt"],
            deprecated=["bcrypt"],
            bcrypt_sha256__rounds=rounds,
            bcrypt__rounds=rounds,
        )
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._slots = concurrency
        self._max_wait = max_wait
        self._pending = 0  # running or waiting for a slot
        self._seconds_per_hash = 0.25
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await self._run(self._context.hash, password)

    async def verify(self, password: str, hashed: str) -> tuple[bool, str | None]:
        """(matches, replacement hash when the stored one uses an outdated scheme)."""
        return await self._run(self._verify_sync, password, hashed)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # Counted here rather than read from the limiter, whose count changes only
        # once a waiting task has run: a burst arriving together would all pass.
        waiting = self._pending - self._slots + 1
        wait = max(0, waiting) / self._slots * self._seconds_per_hash
        if self._max_wait is not None and waiting > 0 and wait > self._max_wait:
            raise ServiceUnavailable(
                detail="Too many password checks are waiting; retry shortly.",
                headers=retry_after(wait),
            )
        self._pending += 1
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        finally:
            self._pending -= 1

    async def prepare(self) -> None:
        """Makes the hash that `burn_verify` checks against (once, at start-up), and times
        a check against it: the expected wait, and the Retry-After of a refused hash."""
        password = secrets.token_urlsafe(16)
        # Not timed: the first hash also loads and self-tests passlib's bcrypt backend,
        # which can take far longer than a hash, and would refuse bursts that fit.
        self._dummy_hash = await self.hash(password)
        started = time.perf_counter()
        await self.verify(password, self._dummy_hash)
        self._seconds_per_hash = time.perf_counter() - started

    async def burn_verify(self, password: str) -> None:
        """Costs what a real verify costs, for emails that have no account."""
        if self._dummy_hash is None:
            await self.prepare()
        assert self._dummy_hash is not None  # noqa: S101 - set by prepare()
        await self.verify(password, self._dummy_hash)

    def _verify_sync(self, password: str, hashed: str) -> tuple[bool, str | None]:
        try:
            return self._context.verify_and_update(password, hashed)
        except ValueError:
            # Plain bcrypt refuses > 72 bytes and NUL bytes: such a password cannot match.
            return False, None


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    jti: str
    expires_at: int
    family_id: str | None  # the login it descends from; None for external tokens
    external: bool = False
    issued_at: int | None = None  # `iat`, kept for external tokens (simplejwt writes it)


@dataclass(frozen=True, slots=True)
class RefreshClaims:
    user_id: str
    family_id: str


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_at: int


@dataclass(frozen=True, slots=True)
class ExternalIssuer:
    """A Django site whose djangorestframework-simplejwt access tokens we accept."""

    secret: str
    user_id_claim: str
    namespace: str = EXTERNAL_SOURCE


class TokenService:
    """Issues and checks chatgate's HS256 tokens, and checks an external issuer's."""

    def __init__(
        self,
        secret: str,
        issuer: str,
        access_ttl_seconds: int,
        refresh_ttl_seconds: int,
        external: ExternalIssuer | None = None,
        login_max_age_seconds: int = DEFAULT_LOGIN_MAX_AGE_SECONDS,
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._access_ttl = access_ttl_seconds
        self._refresh_ttl = refresh_ttl_seconds
        self.login_max_age = login_max_age_seconds
        self._external = external
        self._signed_payload = functools.lru_cache(maxsize=VERIFIED_TOKENS_CACHED)(
            self._check_signature
        )

    def issue_pair(
        self, user_id: str, family_id: str, role: str, login_started: int | None = None
    ) -> TokenPair:
        """A pair of the login started at `login_started` (now, by default); neither token
        outlives the login. The access token carries the user's role, for clients to read;
        what a request may do is decided from the role stored now, so a demotion takes
        effect at once."""
        now = int(time.time())
        ends = self.login_ends_at(now if login_started is None else login_started)
        access_exp = min(now + self._access_ttl, ends)
        refresh_exp = min(now + self._refresh_ttl, ends)
        access = self._encode(user_id, family_id, ACCESS, now, access_exp, role=role)
        return TokenPair(
            access_token=access,
            refresh_token=self._encode(user_id, family_id, REFRESH, now, refresh_exp),
            expires_in=access_exp - now,
            refresh_expires_at=refresh_exp,
        )

    def login_ends_at(self, login_started: int) -> int:
        """When a login started then ends, however often it refreshes."""
        return login_started + self.login_max_age

    def _encode(
        self, user_id: str, family_id: str, kind: str, now: int, exp: int, role: str | None = None
    ) -> str:
        claims: dict[str, Any] = {
            "sub": user_id,
            "iat": now,
            "exp": exp,
            "jti": uuid.uuid4().hex,
            "iss": self._issuer,
            "type": kind,
            "fam": family_id,
        }
        if role is not None:
            claims["role"] = role
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify_access(self, token: str) -> AccessClaims:
        """The claims of a valid access token (ours or the external issuer's)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("invalid_token")
        external, claims = self._signed_payload(token)
        if external:
            assert self._external is not None  # noqa: S101 - only set when configured
            return _external_claims(claims, self._external)
        sub, jti, exp, family = self._own_claims(claims, ACCESS, self._access_ttl)
        return AccessClaims(user_id=sub, jti=jti, expires_at=exp, family_id=family)

    def _check_signature(self, token: str) -> tuple[bool, Mapping[str, Any]]:
        """(from the external issuer?, payload) of a token one of our keys signed.

        The shape picks the one key that may have signed it, so each key vouches
        only for its own kind of token. Failures raise, so they are never cached.
        """
        if self._external is not None and _simplejwt_shaped(token):
            return True, MappingProxyType(_verified_claims(token, self._external.secret))
        return False, MappingProxyType(_verified_claims(token, self._secret))

    def verify_refresh(self, token: str) -> RefreshClaims:
        """The claims of one of our refresh tokens (external ones refresh at their issuer)."""
        claims = _verified_claims(token, self._secret)
        sub, _, _, family = self._own_claims(claims, REFRESH, self._refresh_ttl)
        return RefreshClaims(user_id=sub, family_id=family)

    def _own_claims(
        self, claims: Mapping[str, Any], kind: str, max_lifetime: int
    ) -> tuple[str, str, int, str]:
        if claims.get("type") != kind:
            raise Unauthorized("wrong_token_type")
        if claims.get("iss") != self._issuer:
            raise Unauthorized("invalid_token")
        sub, jti, family = claims.get("sub"), claims.get("jti"), claims.get("fam")
        # Every token we issue belongs to a login (`fam`), so ending the login ends it.
        if not (_short_text(sub) and _short_text(jti) and _short_text(family)):
            raise Unauthorized("invalid_token")
        exp, iat = _checked_times(claims, require_iat=True)
        if iat is None or exp - iat > max_lifetime + CLOCK_SKEW_SECONDS:
            raise Unauthorized("token_lifetime_too_long")
        return str(sub), str(jti), exp, str(family)


def _short_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200


def _simplejwt_shaped(token: str) -> bool:
    """Unverified look at the payload: simplejwt writes `token_type`, we never do."""
    try:
        claims = jwt.get_unverified_claims(token)
    except Exception:
        return False  # junk: our own verification will refuse it
    return isinstance(claims, dict) and "token_type" in claims


def _canonical(token: str) -> bool:
    """Three segments, each the one base64url spelling of its bytes (RFC 7515 §2): the
    decoder forgives padding and stray low bits, and each other spelling of a token would
    be another key of the verified-token cache and another refresh-token hash."""
    segments = token.split(".")
    return len(segments) == 3 and all(map(_canonical_segment, segments))


def _canonical_segment(segment: str) -> bool:
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        return False
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == segment


def _verified_claims(token: str, key: str) -> dict[str, Any]:
    """The payload of a token `key` signed with HS256; `Unauthorized` otherwise."""
    if len(token) > MAX_TOKEN_CHARS or not _canonical(token):
        raise Unauthorized("invalid_token")
    try:
        header = jwt.get_unverified_header(token)
        # RFC 7515: a `crit` extension we do not understand makes the token invalid.
        if header.get("alg") != ALGORITHM or "crit" in header:
            raise Unauthorized("invalid_token")
        payload = jws.verify(token, key, algorithms=[ALGORITHM])
    except Unauthorized:
        raise
    # python-jose lets AttributeError, OverflowError, TypeError and JWKError
    # escape its own errors on odd input: any failure here is an invalid token.
    except Exception:
        raise Unauthorized("invalid_token") from None
    try:
        claims = json.loads(payload)
    except ValueError:
        raise Unauthorized("invalid_token") from None
    if not isinstance(claims, dict):
        raise Unauthorized("invalid_token")
    return claims


def _checked_times(claims: Mapping[str, Any], *, require_iat: bool) -> tuple[int, int | None]:
    """(`exp`, `iat`): whole seconds in [0, MAX_TIMESTAMP], checked with `nbf` against
    the clock."""
    exp, iat, nbf = (_time_claim(claims, name) for name in ("exp", "iat", "nbf"))
    if exp is None or (require_iat and iat is None):
        raise Unauthorized("invalid_token")
    now = int(time.time())
    if exp < now - CLOCK_SKEW_SECONDS:
        raise Unauthorized("token_expired")
    if (iat is not None and iat > now + CLOCK_SKEW_SECONDS) or (
        nbf is not None and nbf > now + CLOCK_SKEW_SECONDS
    ):
        raise Unauthorized("token_not_yet_valid")
    return exp, iat


def _time_claim(claims: Mapping[str, Any], name: str) -> int | None:
    """A time claim, if present: whole seconds that a datetime and SQLite's 64-bit
    INTEGER both hold (a revoked token's `exp` is stored), else `Unauthorized`."""
    value = claims.get(name)
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_TIMESTAMP:
        raise Unauthorized("invalid_token")
    return value


def _external_claims(claims: Mapping[str, Any], issuer: ExternalIssuer) -> AccessClaims:
    """A simplejwt access token: HS256, `token_type` access, `exp` and `jti`, a user claim."""
    if claims.get("token_type") != ACCESS:
        raise Unauthorized("wrong_token_type")
    jti = claims.get("jti")
    if not _short_text(jti):
        raise Unauthorized("invalid_token")
    exp, iat = _checked_times(claims, require_iat=False)
    user = claims.get(issuer.user_id_claim)
    # simplejwt <= 5.5.0 writes an int id, >= 5.5.1 str(id): 42 and "42" are one user,
    # while "007" stays distinct from "7" (text primary keys are written as they are).
    local_id = str(user) if type(user) is int else user
    if not (
        isinstance(local_id, str)
        and local_id.strip()
        and len(local_id) <= 150
        and local_id.isprintable()
    ):
        raise Unauthorized("invalid_token")
    return AccessClaims(
        user_id=f"{issuer.namespace}:{local_id}",
        jti=str(jti),
        expires_at=exp,
        family_id=None,
        external=True,
        issued_at=iat,
    )
