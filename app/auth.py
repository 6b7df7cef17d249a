"""Password hashing (always off the event loop) and access/refresh token issue and checks."""

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
from jose import jwt
from jose.exceptions import ExpiredSignatureError
from passlib.context import CryptContext

from app.errors import Unauthorized

ALGORITHM = "HS256"
ACCESS = "access"
REFRESH = "refresh"
MAX_TOKEN_CHARS = 4096
CLOCK_SKEW_SECONDS = 30


class PasswordHasher:
    """bcrypt through passlib, with every character significant.

    New hashes are `bcrypt_sha256` (HMAC-SHA256 before bcrypt, so bytes past 72
    count); plain `$2b$` hashes from older systems still verify and are upgraded
    on the next successful login. Hashing runs in worker threads, at most
    `concurrency` at once, so the event loop keeps serving requests.
    """

    def __init__(self, rounds: int, concurrency: int) -> None:
        self._context = CryptContext(
            schemes=["bcrypt_sha256", "bcrypt"],
            deprecated=["bcrypt"],
            bcrypt_sha256__rounds=rounds,
            bcrypt__rounds=rounds,
        )
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._dummy_hash: str | None = None

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._context.hash, password, limiter=self._limiter)

    async def verify(self, password: str, hashed: str) -> tuple[bool, str | None]:
        """(matches, replacement hash when the stored one uses an outdated scheme)."""
        return await anyio.to_thread.run_sync(
            self._verify_sync, password, hashed, limiter=self._limiter
        )

    async def prepare(self) -> None:
        """Makes the hash that `burn_verify` checks against (once, at start-up)."""
        self._dummy_hash = await self.hash(secrets.token_urlsafe(16))

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


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


class TokenService:
    """Issues and checks chatgate's own HS256 tokens."""

    def __init__(
        self, secret: str, issuer: str, access_ttl_seconds: int, refresh_ttl_seconds: int
    ) -> None:
        self._secret = secret
        self._issuer = issuer
        self._access_ttl = access_ttl_seconds
        self._refresh_ttl = refresh_ttl_seconds

    def issue_pair(self, user_id: str) -> TokenPair:
        return TokenPair(
            access_token=self._encode(user_id, ACCESS, self._access_ttl),
            refresh_token=self._encode(user_id, REFRESH, self._refresh_ttl),
            expires_in=self._access_ttl,
        )

    def _encode(self, user_id: str, token_type: str, ttl: int) -> str:
        now = int(time.time())
        claims = {
            "sub": user_id,
            "iat": now,
            "exp": now + ttl,
            "jti": uuid.uuid4().hex,
            "iss": self._issuer,
            "type": token_type,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify_access(self, token: str) -> AccessClaims:
        """The claims of a valid access token; `Unauthorized` naming the cause otherwise."""
        claims = self._decode(token)
        if claims.get("type") != ACCESS:
            raise Unauthorized("wrong_token_type")
        return self._checked(claims, self._access_ttl)

    def _decode(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_CHARS:
            raise Unauthorized("invalid_token")
        try:
            header = jwt.get_unverified_header(token)
            # RFC 7515: a `crit` extension we do not understand makes the token invalid.
            if header.get("alg") != ALGORITHM or "crit" in header:
                raise Unauthorized("invalid_token")
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                options={
                    "require_exp": True,
                    "require_iat": True,
                    "require_sub": True,
                    "require_jti": True,
                    "require_iss": True,
                    "leeway": CLOCK_SKEW_SECONDS,
                },
            )
        except ExpiredSignatureError:
            raise Unauthorized("token_expired") from None
        except Unauthorized:
            raise
        # python-jose lets AttributeError, OverflowError, TypeError and JWKError
        # escape JWTError on odd input: any failure here is an invalid token.
        except Exception:
            raise Unauthorized("invalid_token") from None
        if not isinstance(claims, dict):
            raise Unauthorized("invalid_token")
        return claims

    @staticmethod
    def _checked(claims: dict[str, Any], max_lifetime: int) -> AccessClaims:
        sub, jti, iat, exp = (claims.get(k) for k in ("sub", "jti", "iat", "exp"))
        if not (isinstance(sub, str) and sub and len(sub) <= 200):
            raise Unauthorized("invalid_token")
        if not (isinstance(jti, str) and jti and len(jti) <= 200):
            raise Unauthorized("invalid_token")
        if type(iat) is not int or type(exp) is not int:
            raise Unauthorized("invalid_token")
        now = int(time.time())
        if iat > now + CLOCK_SKEW_SECONDS:
            raise Unauthorized("token_not_yet_valid")
        if exp - iat > max_lifetime + CLOCK_SKEW_SECONDS:
            raise Unauthorized("token_lifetime_too_long")
        return AccessClaims(user_id=sub, jti=jti, expires_at=exp)
