"""The request's bearer token: its Authorization header read, and its claims checked,
once per request, for every part of chatgate that needs them (the rate limits that
pick a bucket by user, and the dependency that authenticates the route)."""

from dataclasses import dataclass

from starlette.types import Scope

from app.auth import AccessClaims, TokenService
from app.errors import Unauthorized

_SCOPE_KEY = "chatgate.bearer"


@dataclass(frozen=True, slots=True)
class _Outcome:
    claims: AccessClaims | None
    cause: str | None  # why there are no claims: the 401's detail


def access_claims(scope: Scope, tokens: TokenService) -> AccessClaims:
    """The verified claims of the request's access token (signature and clock, not yet
    revocation, which needs the database); `Unauthorized` naming the cause otherwise."""
    outcome: _Outcome | None = scope.get(_SCOPE_KEY)
    if outcome is None:
        outcome = _check(scope, tokens)
        scope[_SCOPE_KEY] = outcome
    if outcome.claims is None:
        raise Unauthorized(outcome.cause or "invalid_token")
    return outcome.claims


def verified_user(scope: Scope, tokens: TokenService) -> str | None:
    """The user of a verified access token, or None for no token or a bad one."""
    try:
        return access_claims(scope, tokens).user_id
    except Unauthorized:
        return None


def _check(scope: Scope, tokens: TokenService) -> _Outcome:
    values = [value for name, value in scope["headers"] if name == b"authorization"]
    if not values:
        return _Outcome(None, "missing_token")
    if len(values) > 1:
        return _Outcome(None, "ambiguous_authorization")
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return _Outcome(None, "missing_token")
    try:
        return _Outcome(tokens.verify_access(token), None)
    except Unauthorized as exc:
        return _Outcome(None, str(exc.detail))
