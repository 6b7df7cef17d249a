"""Accounts and tokens: register, log in, refresh, log out, change password, leave."""

from fastapi import APIRouter, Request, Response, status

from app.auth import TokenPair
from app.deps import (
    ClientInfoDep,
    CurrentClaims,
    CurrentIdentity,
    CurrentUserId,
    DbDep,
    HasherDep,
    LimiterDep,
    RegistrationOpen,
    TokensDep,
)
from app.ratelimit import RouteLimits, rate_limited
from app.repository import Account
from app.routes.credentials import LOGIN_BODY, read_credentials
from app.routes.json_route import JsonRoute
from app.routes.limited_route import LimitedRoute
from app.schemas import (
    AccountDelete,
    LogoutRequest,
    PasswordChange,
    RefreshRequest,
    RegisterRequest,
    SuccessResponse,
    TokenResponse,
    UserPublic,
    UserResponse,
    error_responses,
)
from app.services import accounts, admin, logins
from app.services.accounts import Reauthentication

router = APIRouter(
    prefix="/auth", tags=["auth"], route_class=JsonRoute, responses=error_responses(429)
)


def public(user: Account) -> UserPublic:
    # Users from another issuer have no email here; their `email` column holds their id.
    return UserPublic(
        id=user.id,
        email=user.email if user.is_local else None,
        display_name=user.display_name,
        role=user.role,
        created_at=user.created_at,
    )


def token_response(pair: TokenPair, response: Response) -> TokenResponse:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(403, 409, 413, 415, 422, 503),
)
@rate_limited(RouteLimits(per_address=("register",)))
async def register(
    _: RegistrationOpen, body: RegisterRequest, db: DbDep, hasher: HasherDep
) -> UserResponse:
    """Create an account; emails compare without case or surrounding spaces.
    403 while sign-up is closed (REGISTRATION_ENABLED=false): admins create accounts."""
    user = await admin.create_user(
        db, hasher, email=body.email, password=body.password, display_name=body.display_name
    )
    return UserResponse(user=public(user))


@rate_limited(RouteLimits(per_address=("login_ip",)))
async def login(
    request: Request,
    response: Response,
    db: DbDep,
    hasher: HasherDep,
    tokens: TokensDep,
    client: ClientInfoDep,
    limiter: LimiterDep,
) -> TokenResponse:
    """Log in with JSON {email, password} or the OAuth2 password form (username = email)."""
    credentials = await read_credentials(request)
    pair = await accounts.log_in(db, hasher, tokens, credentials, client, limiter)
    return token_response(pair, response)


# Login also takes the OAuth2 form (what /docs sends), so it is not a JsonRoute:
# read_credentials answers 415 for anything that is neither.
router.add_api_route(
    "/login",
    login,
    methods=["POST"],
    openapi_extra=LOGIN_BODY,
    responses=error_responses(401, 403, 413, 415, 422, 503),
    route_class_override=LimitedRoute,
)


@router.post("/refresh", responses=error_responses(401, 413, 415, 422))
@rate_limited(RouteLimits(per_address=("refresh",)))
async def refresh(
    body: RefreshRequest, response: Response, db: DbDep, tokens: TokensDep, client: ClientInfoDep
) -> TokenResponse:
    """Trade a refresh token for a new pair; each refresh token works once."""
    pair = await logins.rotate(db, tokens, refresh_token=body.refresh_token, client=client)
    return token_response(pair, response)


@router.post("/logout", responses=error_responses(401, 413, 415, 422))
async def logout(
    claims: CurrentClaims, db: DbDep, tokens: TokensDep, body: LogoutRequest | None = None
) -> SuccessResponse:
    """End this login: the access token used and, if given, the refresh token's login."""
    refresh_token = body.refresh_token if body else None
    await logins.logout(db, tokens, access=claims, refresh_token=refresh_token)
    return SuccessResponse()


@router.get("/me", responses=error_responses(401))
async def read_me(identity: CurrentIdentity) -> UserResponse:
    """The account the access token belongs to (read with the token check)."""
    return UserResponse(user=public(identity.account))


@router.post("/password", responses=error_responses(401, 403, 413, 415, 422, 503))
async def change_password(
    body: PasswordChange,
    claims: CurrentClaims,
    db: DbDep,
    hasher: HasherDep,
    limiter: LimiterDep,
    client: ClientInfoDep,
) -> SuccessResponse:
    """Change your password; every other login of yours ends, this one stays.
    Wrong current passwords count against the same budget as failed logins (429)."""
    check = Reauthentication(claims.user_id, body.current_password, client)
    await accounts.change_password(
        db, hasher, limiter, check, keep_family_id=claims.family_id, new=body.new_password
    )
    return SuccessResponse()


@router.delete("/me", responses=error_responses(401, 403, 409, 413, 415, 422, 503))
async def delete_me(
    body: AccountDelete,
    user_id: CurrentUserId,
    db: DbDep,
    hasher: HasherDep,
    limiter: LimiterDep,
    client: ClientInfoDep,
) -> SuccessResponse:
    """Delete your account, sessions, messages and logins; confirm with your password.
    An admin is demoted first (409): an admin always remains."""
    check = Reauthentication(user_id, body.password, client)
    await accounts.delete_account(db, hasher, limiter, check)
    return SuccessResponse()
