"""Dependencies, each an `Annotated` alias: what a route needs, by name."""

import functools
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer

from app import repository
from app.auth import EXTERNAL_SOURCE, AccessClaims, PasswordHasher, TokenService
from app.bearer import access_claims
from app.config import Settings
from app.db import Database
from app.errors import AdminOnly, Forbidden, SessionNotFound, Unauthorized
from app.network import TrustedProxies
from app.ratelimit import RateLimiter
from app.repository import ADMIN, Account, SessionRecord
from app.services.conversation import Conversation
from app.services.logins import USER_AGENT_MAX_CHARS, ClientInfo


@dataclass(slots=True)
class Services:
    """What the lifespan builds once and every request shares."""

    db: Database
    hasher: PasswordHasher
    tokens: TokenService
    conversation: Conversation
    limiter: RateLimiter
    proxies: TrustedProxies


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


# Each dependency reads what it needs straight from the request: FastAPI resolves
# every node of a dependency tree on every request, and a deeper tree is slower.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_db(request: Request) -> Database:
    return services_of(request).db


async def get_hasher(request: Request) -> PasswordHasher:
    return services_of(request).hasher


async def get_tokens(request: Request) -> TokenService:
    return services_of(request).tokens


async def get_conversation(request: Request) -> Conversation:
    return services_of(request).conversation


async def get_limiter(request: Request) -> RateLimiter:
    return services_of(request).limiter


SettingsDep = Annotated[Settings, Depends(get_settings)]
DbDep = Annotated[Database, Depends(get_db)]
HasherDep = Annotated[PasswordHasher, Depends(get_hasher)]
TokensDep = Annotated[TokenService, Depends(get_tokens)]
ConversationDep = Annotated[Conversation, Depends(get_conversation)]
LimiterDep = Annotated[RateLimiter, Depends(get_limiter)]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: the access token's claims and the account they belong to."""

    claims: AccessClaims
    account: Account


class BearerUser(OAuth2PasswordBearer):
    """The bearer-token check, as one dependency that is also the OpenAPI scheme.

    Being an OAuth2PasswordBearer, it declares the password flow, so /docs'
    Authorize logs in; being one node rather than a tree of them keeps the
    check cheap on every request. The identity it finds stays on the request.
    """

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        identity = await authenticate(request)
        request.state.identity = identity
        return identity.claims.user_id


async def authenticate(request: Request) -> Identity:
    """A valid, unrevoked access token whose user still exists; 401 otherwise."""
    services = services_of(request)
    claims = access_claims(request.scope, services.tokens)
    state = await _access_state(services.db, claims)
    if state.account is None and claims.external:
        # First request of a user the external issuer vouches for.
        async with services.db.transaction() as conn:
            await repository.ensure_external_user(conn, claims.user_id, EXTERNAL_SOURCE)
        state = await _access_state(services.db, claims)
    if state.account is None:
        raise Unauthorized("user_not_found")
    if state.account.disabled:
        raise Unauthorized("user_disabled")
    if state.token_revoked or _issued_before_a_disable(claims, state.tokens_not_before):
        raise Unauthorized("token_revoked")
    return Identity(claims=claims, account=state.account)


def _issued_before_a_disable(claims: AccessClaims, not_before: int | None) -> bool:
    """An external token from before the user was last disabled: ours end with their
    login, which disabling ended; another issuer's have no login here to end."""
    if not claims.external or not_before is None:
        return False
    return claims.issued_at is None or claims.issued_at <= not_before


async def _access_state(db: Database, claims: AccessClaims) -> repository.AccessState:
    return await db.read(
        functools.partial(
            repository.access_state,
            user_id=claims.user_id,
            jti=claims.jti,
            family_id=claims.family_id,
        )
    )


# The one dependency that binds every chat operation to the token's user.
# auto_error=False: a missing token gets our 401 envelope, not FastAPI's.
get_current_user_id = BearerUser(tokenUrl="/auth/login", auto_error=False)

CurrentUserId = Annotated[str, Depends(get_current_user_id)]


async def get_identity(request: Request, _: CurrentUserId) -> Identity:
    identity: Identity = request.state.identity
    return identity


CurrentIdentity = Annotated[Identity, Depends(get_identity)]


async def get_access_claims(identity: CurrentIdentity) -> AccessClaims:
    return identity.claims


CurrentClaims = Annotated[AccessClaims, Depends(get_access_claims)]


REGISTRATION_CLOSED = "Sign-up is closed here; ask an administrator for an account."


async def get_admin(identity: CurrentIdentity) -> Identity:
    """The caller, if they are an admin now: the role is the stored one, read with the
    token check, so a demotion or promotion counts from the next request."""
    if identity.account.role != ADMIN:
        raise AdminOnly
    return identity


CurrentAdmin = Annotated[Identity, Depends(get_admin)]


async def registration_open(settings: SettingsDep) -> None:
    """403 while REGISTRATION_ENABLED is false, whatever the body holds."""
    if not settings.registration_enabled:
        raise Forbidden(REGISTRATION_CLOSED, detail="registration_disabled")


RegistrationOpen = Annotated[None, Depends(registration_open)]


async def get_client_info(request: Request) -> ClientInfo:
    user_agent = request.headers.get("user-agent")
    return ClientInfo(
        user_agent=user_agent[:USER_AGENT_MAX_CHARS] if user_agent else None,
        ip=services_of(request).proxies.client_ip(request.scope) if request.client else None,
    )


ClientInfoDep = Annotated[ClientInfo, Depends(get_client_info)]


async def get_owned_session(
    request: Request,
    session_id: Annotated[str, Path(description="The session's id.")],
    user_id: CurrentUserId,
) -> SessionRecord:
    """The session, if the caller owns it; someone else's is indistinguishable from none."""
    db = services_of(request).db
    session = await repository.get_owned_session(db.reader(), session_id, user_id)
    if session is None:
        raise SessionNotFound
    return session


OwnedSession = Annotated[SessionRecord, Depends(get_owned_session)]
