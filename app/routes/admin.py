"""Administration: accounts and the service's totals, for admins only."""

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, status

from app.deps import CurrentAdmin, DbDep, HasherDep, get_admin
from app.pagination import decode_keyset_cursor, encode_cursor
from app.repository import UserSummary
from app.routes.auth import public
from app.routes.json_route import JsonRoute
from app.schemas import (
    EMAIL_MAX_CHARS,
    PAGE_DEFAULT,
    PAGE_MAX,
    AdminUser,
    AdminUserCreate,
    AdminUserListResponse,
    AdminUserResponse,
    AdminUserUpdate,
    StatsResponse,
    SuccessResponse,
    error_responses,
    normalized_email,
)
from app.services import admin

router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    # Router-wide, so no admin route can be added without the check.
    dependencies=[Depends(get_admin)],
    route_class=JsonRoute,
    responses=error_responses(401, 403, 413, 415, 422, 429),
)

UserId = Annotated[str, Path(max_length=200, description="The user's id.")]


def admin_view(user: UserSummary) -> AdminUser:
    return AdminUser(
        **public(user).model_dump(),
        auth_source=user.auth_source,
        disabled=user.disabled,
        disabled_at=user.disabled_at,
        session_count=user.session_count,
        message_count=user.message_count,
    )


@router.get("/users")
async def list_users(
    db: DbDep,
    limit: Annotated[int, Query(ge=1, le=PAGE_MAX)] = PAGE_DEFAULT,
    cursor: Annotated[str | None, Query(max_length=500, description="A next_cursor value.")] = None,
    email: Annotated[
        str | None,
        Query(max_length=EMAIL_MAX_CHARS, description="Part of the email, any case."),
    ] = None,
) -> AdminUserListResponse:
    """Accounts, newest first, with their session and message counts; `email` searches."""
    before = decode_keyset_cursor(cursor) if cursor else None
    query = normalized_email(email) if email else None  # spelled as stored emails are
    rows = await admin.list_users(db, limit=limit + 1, before=before, email_contains=query)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return AdminUserListResponse(
        users=[admin_view(user) for user in page], count=len(page), next_cursor=next_cursor
    )


@router.post("/users", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 503))
async def create_user(
    body: AdminUserCreate, caller: CurrentAdmin, db: DbDep, hasher: HasherDep
) -> AdminUserResponse:
    """Create an account with a password and a role (sign-up closed or not)."""
    user = await admin.create_user(
        db,
        hasher,
        email=body.email,
        password=body.password,
        display_name=body.display_name,
        role=body.role,
        actor_id=caller.account.id,
    )
    return AdminUserResponse(user=admin_view(UserSummary.of_new(user)))


@router.get("/users/{user_id}", responses=error_responses(404))
async def read_user(user_id: UserId, db: DbDep) -> AdminUserResponse:
    """One account, with its session and message counts."""
    return AdminUserResponse(user=admin_view(await admin.get_user(db, user_id)))


@router.patch("/users/{user_id}", responses=error_responses(404, 409))
async def update_user(
    user_id: UserId, body: AdminUserUpdate, caller: CurrentAdmin, db: DbDep
) -> AdminUserResponse:
    """Change an account's role and/or disable or enable it; not your own."""
    user = await admin.update_user(
        db,
        actor_id=caller.account.id,
        user_id=user_id,
        role=body.role,
        disabled=body.disabled,
    )
    return AdminUserResponse(user=admin_view(user))


@router.post("/users/{user_id}/disable", responses=error_responses(404, 409))
async def disable_user(user_id: UserId, caller: CurrentAdmin, db: DbDep) -> AdminUserResponse:
    """Disable an account: its tokens stop working at once and it cannot log in."""
    user = await admin.update_user(db, actor_id=caller.account.id, user_id=user_id, disabled=True)
    return AdminUserResponse(user=admin_view(user))


@router.post("/users/{user_id}/enable", responses=error_responses(404))
async def enable_user(user_id: UserId, caller: CurrentAdmin, db: DbDep) -> AdminUserResponse:
    """Enable a disabled account; its user logs in again (old logins stay ended)."""
    user = await admin.update_user(db, actor_id=caller.account.id, user_id=user_id, disabled=False)
    return AdminUserResponse(user=admin_view(user))


@router.delete("/users/{user_id}", responses=error_responses(404, 409))
async def delete_user(user_id: UserId, caller: CurrentAdmin, db: DbDep) -> SuccessResponse:
    """Delete an account and all its sessions, messages and logins; not your own."""
    await admin.delete_user(db, actor_id=caller.account.id, user_id=user_id)
    return SuccessResponse()


@router.get("/stats")
async def read_stats(db: DbDep) -> StatsResponse:
    """Users, admins, disabled users, sessions, messages, and messages in the last 24 h."""
    return StatsResponse(**asdict(await admin.stats(db)))
