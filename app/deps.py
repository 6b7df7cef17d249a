"""Dependencies, each an `Annotated` alias: what a route needs, by name."""

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import OAuth2PasswordBearer

from app import repository
from app.auth import EXTERNAL_SOURCE, AccessClaims, PasswordHasher, TokenService
from app.db import Database
from app.errors import SessionNotFound, Unauthorized, UnsupportedMediaType
from app.repository import SessionRecord
from app.services.assistant import AssistantProvider
from app.services.logins import USER_AGENT_MAX_CHARS, ClientInfo


@dataclass(slots=True)
class Services:
    """What the lifespan builds once and every request shares."""

    db: Database
    hasher: PasswordHasher
    tokens: TokenService
    assistant: AssistantProvider


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_db(services: ServicesDep) -> Database:
    return services.db


async def get_hasher(services: ServicesDep) -> PasswordHasher:
    return services.hasher


async def get_tokens(services: ServicesDep) -> TokenService:
    return services.tokens


async def get_assistant(services: ServicesDep) -> AssistantProvider:
    return services.assistant


DbDep = Annotated[Database, Depends(get_db)]
HasherDep = Annotated[PasswordHasher, Depends(get_hasher)]
TokensDep = Annotated[TokenService, Depends(get_tokens)]
AssistantDep = Annotated[AssistantProvider, Depends(get_assistant)]

# Declares the bearer scheme with the password flow, so /docs' Authorize logs in.
# auto_error=False: a missing token gets our 401 envelope, not FastAPI's.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/auth/login", auto_error=False)
BearerToken = Annotated[str | None, Depends(oauth2_scheme)]


async def get_access_claims(
    request: Request, token: BearerToken, tokens: TokensDep, db: DbDep
) -> AccessClaims:
    """A valid, unrevoked access token whose user still exists."""
    if not token:
        raise Unauthorized("missing_token")
    if len(request.headers.getlist("authorization")) > 1:
        raise Unauthorized("ambiguous_authorization")
    claims = tokens.verify_access(token)
    state = await _access_state(db, claims)
    if not state.user_exists and claims.external:
        # First request of a user the external issuer vouches for.
        async with db.transaction() as conn:
            await repository.ensure_external_user(conn, claims.user_id, EXTERNAL_SOURCE)
        state = await _access_state(db, claims)
    if not state.user_exists:
        raise Unauthorized("user_not_found")
    if state.token_revoked:
        raise Unauthorized("token_revoked")
    return claims


async def _access_state(db: Database, claims: AccessClaims) -> repository.AccessState:
    async with db.read() as conn:
        return await repository.access_state(
            conn, user_id=claims.user_id, jti=claims.jti, family_id=claims.family_id
        )


CurrentClaims = Annotated[AccessClaims, Depends(get_access_claims)]


async def get_current_user_id(claims: CurrentClaims) -> str:
    """The one dependency that binds every chat operation to the token's user."""
    return claims.user_id


CurrentUserId = Annotated[str, Depends(get_current_user_id)]


async def get_client_info(request: Request) -> ClientInfo:
    user_agent = request.headers.get("user-agent")
    return ClientInfo(
        user_agent=user_agent[:USER_AGENT_MAX_CHARS] if user_agent else None,
        ip=request.client.host if request.client else None,
    )


ClientInfoDep = Annotated[ClientInfo, Depends(get_client_info)]


async def get_owned_session(
    session_id: Annotated[str, Path(description="The session's id.")],
    user_id: CurrentUserId,
    db: DbDep,
) -> SessionRecord:
    """The session, if the caller owns it; someone else's is indistinguishable from none."""
    async with db.read() as conn:
        session = await repository.get_owned_session(conn, session_id, user_id)
    if session is None:
        raise SessionNotFound
    return session


OwnedSession = Annotated[SessionRecord, Depends(get_owned_session)]


def media_type(request: Request) -> str:
    """The Content-Type without parameters, lower-cased ("" when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_json(mime: str) -> bool:
    return mime == "application/json" or mime.endswith("+json")


async def require_json(request: Request) -> None:
    """415 for a body that is not JSON, instead of a confusing validation error."""
    if request.method not in {"POST", "PUT", "PATCH", "DELETE"}:
        return
    if "content-type" not in request.headers:
        has_body = request.headers.get("content-length", "0") != "0" or (
            "transfer-encoding" in request.headers
        )
        if has_body:
            raise UnsupportedMediaType
        return
    if not is_json(media_type(request)):
        raise UnsupportedMediaType


JsonBody = Depends(require_json)
