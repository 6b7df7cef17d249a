"""Reading login credentials from JSON or from the OAuth2 password form /docs sends."""

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.errors import UnsupportedMediaType
from app.routes.json_route import is_json, media_type
from app.schemas import LoginRequest

LOGIN_BODY: dict[str, Any] = {
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


async def read_credentials(request: Request) -> LoginRequest:
    mime = media_type(request)
    try:
        if is_json(mime):
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
