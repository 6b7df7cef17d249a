"""Accounts and tokens: register, log in, who am I."""

from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app import repository
from app.deps import CurrentUserId, DbDep, HasherDep, JsonBody, TokensDep
from app.errors import Conflict, InvalidCredentials, Unauthorized, UnsupportedMediaType
from app.schemas import (
    LoginRequest,
    RegisterRequest,
    TokenResponse,
    UserPublic,
    UserResponse,
    error_responses,
)

router = APIRouter(prefix="/auth", tags=["auth"])

_LOGIN_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/LoginRequest"}},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["username", "password"],
                    "properties": {
                        "username": {"type": "string", "description": "Your email."},
                        "password": {"type": "string", "format": "password"},
                        "grant_type": {"type": "string", "enum": ["password"]},
                        "scope": {"type": "string"},
                    },
                }
            },
        },
    }
}


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    dependencies=[JsonBody],
    responses=error_responses(409, 413, 415, 422),
)
async def register(body: RegisterRequest, db: DbDep, hasher: HasherDep) -> UserResponse:
    """Create an account; emails compare without case or surrounding spaces."""
    async with db.read() as conn:
        taken = await repository.email_taken(conn, body.email)
    if taken:
        raise Conflict("User already exists")
    password_hash = await hasher.hash(body.password)
    try:
        async with db.transaction() as conn:
            user = await repository.insert_user(
                conn,
                email=body.email,
                password_hash=password_hash,
                display_name=body.display_name,
            )
    except repository.DuplicateEmail:
        raise Conflict("User already exists") from None
    return UserResponse(user=UserPublic.model_validate(user))


@router.post(
    "/login",
    openapi_extra=_LOGIN_BODY,
    responses=error_responses(401, 413, 415, 422),
)
async def login(
    request: Request, response: Response, db: DbDep, hasher: HasherDep, tokens: TokensDep
) -> TokenResponse:
    """Log in with JSON {email, password} or the OAuth2 password form (username = email)."""
    credentials = await _read_credentials(request)
    async with db.read() as conn:
        user = await repository.get_user_by_email(conn, credentials.email)
    if user is None:
        await hasher.burn_verify(credentials.password)
        raise InvalidCredentials
    matches, new_hash = await hasher.verify(credentials.password, user.password_hash)
    if not matches:
        raise InvalidCredentials
    if new_hash is not None:
        async with db.transaction() as conn:
            await repository.update_password_hash(conn, user.id, new_hash)
    pair = tokens.issue_pair(user.id)
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return TokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_in=pair.expires_in,
    )


async def _read_credentials(request: Request) -> LoginRequest:
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";", 1)[0].strip().lower()
    try:
        if mime == "application/json" or mime.endswith("+json"):
            return LoginRequest.model_validate_json(await request.body())
        if mime in {"application/x-www-form-urlencoded", "multipart/form-data"}:
            form = await request.form()
            _check_grant_type(form.get("grant_type"))
            try:
                return LoginRequest.model_validate(
                    {"email": form.get("username"), "password": form.get("password")}
                )
            except ValidationError as exc:
                raise _invalid(exc, {"email": "username"}) from None
    except ValidationError as exc:
        raise _invalid(exc) from None
    raise UnsupportedMediaType(
        "Send JSON {email, password} or an OAuth2 form (username, password)."
    )


def _check_grant_type(grant_type: object) -> None:
    """The OAuth2 password flow says grant_type=password; absent is tolerated."""
    if grant_type is not None and grant_type != "password":
        raise RequestValidationError(
            [
                {
                    "type": "literal_error",
                    "loc": ("body", "grant_type"),
                    "msg": "Input should be 'password'",
                }
            ]
        )


def _invalid(exc: ValidationError, names: dict[str, str] | None = None) -> RequestValidationError:
    names = names or {}
    return RequestValidationError(
        [
            {**err, "loc": ("body", *(names.get(str(p), p) for p in err["loc"]))}
            for err in exc.errors(include_input=False)
        ]
    )


@router.get("/me", responses=error_responses(401))
async def read_me(user_id: CurrentUserId, db: DbDep) -> UserResponse:
    """The account the access token belongs to."""
    async with db.read() as conn:
        user = await repository.get_user_by_id(conn, user_id)
    if user is None:
        raise Unauthorized("user_not_found")
    return UserResponse(user=UserPublic.model_validate(user))
