"""The logins (devices) a user has, and ending one of them."""

from typing import Annotated

from fastapi import APIRouter, Path

from app import repository
from app.deps import CurrentClaims, DbDep
from app.errors import NotFound
from app.routes.limited_route import LimitedRoute
from app.schemas import LoginInfo, LoginsResponse, SuccessResponse, error_responses

router = APIRouter(
    prefix="/auth/logins",
    tags=["auth"],
    route_class=LimitedRoute,
    responses=error_responses(401, 422, 429),
)


@router.get("")
async def list_logins(claims: CurrentClaims, db: DbDep) -> LoginsResponse:
    """Your logins that can still refresh, oldest first; `current` marks this one."""
    rows = await repository.list_active_families(db.reader(), claims.user_id)
    return LoginsResponse(
        logins=[
            LoginInfo(
                id=row.id,
                created_at=row.created_at,
                last_used_at=row.last_used_at,
                user_agent=row.user_agent,
                ip=row.ip,
                current=row.id == claims.family_id,
            )
            for row in rows
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
