"""The logins (devices) a user has, and ending one of them."""

from typing import Annotated

from fastapi import APIRouter, Path

from app import repository
from app.deps import CurrentClaims, DbDep, TokensDep
from app.errors import NotFound
from app.routes.limited_route import LimitedRoute
from app.schemas import LoginInfo, LoginsResponse, SuccessResponse, error_responses
from app.services.logins import active_logins

router = APIRouter(
    prefix="/auth/logins",
    tags=["auth"],
    route_class=LimitedRoute,
    responses=error_responses(401, 422, 429),
)


@router.get("")
async def list_logins(claims: CurrentClaims, db: DbDep, tokens: TokensDep) -> LoginsResponse:
    """Your logins that can still refresh, oldest first; `current` marks this one, and
    `expires_at` says when each ends at the latest (then its user logs in again)."""
    logins = await active_logins(db, tokens, claims.user_id)
    return LoginsResponse(
        logins=[
            LoginInfo(
                id=login.record.id,
                created_at=login.record.created_at,
                last_used_at=login.record.last_used_at,
                user_agent=login.record.user_agent,
                ip=login.record.ip,
                current=login.record.id == claims.family_id,
                expires_at=login.expires_at,
                refresh_expires_at=login.refresh_expires_at,
            )
            for login in logins
        ]
    )


@router.delete("/{login_id}", responses=error_responses(404))
async def end_login(
    login_id: Annotated[str, Path(max_length=200)], claims: CurrentClaims, db: DbDep
) -> SuccessResponse:
    """Log out that device: its refresh token and access tokens stop working."""
    async with db.transaction() as conn:
        ended = await repository.revoke_family(conn, login_id, claims.user_id)
    if not ended:
        raise NotFound("Login not found")
    return SuccessResponse()
