"""Every error leaves chatgate in one envelope: {success: false, error, detail}."""

import logging
import math
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger("chatgate.errors")

# FastAPI raises HTTPException(400) with this detail when reading a JSON body fails
# in a way json.JSONDecodeError does not cover.
FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"
UNAUTHORIZED = "Unauthorized - Invalid or missing token"
SESSION_NOT_FOUND = "Session not found or access denied"
# On every response: app/middleware.py SecurityHeaders adds them, and the 500 below
# adds them itself, since Starlette sends it outside every middleware.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}
# A response may carry a token or private data (RFC 6749 5.1): no cache keeps it.
NO_STORE = {"Cache-Control": "no-store"}

# One sentence per status, for errors raised by the framework rather than by us.
_SENTENCES = {
    400: "The request could not be understood.",
    401: UNAUTHORIZED,
    403: "You are not allowed to do this.",
    404: "The requested resource was not found.",
    405: "This method is not allowed on this resource.",
    413: "The request body is too large.",
    415: "The request body must be JSON (Content-Type: application/json).",
    422: "The request is not valid.",
    429: "Too many requests; slow down and retry later.",
    500: "Internal server error; the problem has been logged.",
    502: "The assistant is unavailable",
    503: "The service is temporarily unavailable; retry later.",
}


class AppError(Exception):
    """An error a client should see: status, one human sentence, optional detail."""

    status_code = 400
    message = _SENTENCES[400]

    def __init__(
        self,
        message: str | None = None,
        *,
        detail: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.detail = detail
        self.headers = headers
        super().__init__(self.message)


class Unauthorized(AppError):
    status_code = 401
    message = UNAUTHORIZED

    def __init__(self, cause: str = "invalid_token", message: str | None = None) -> None:
        super().__init__(message, detail=cause, headers={"WWW-Authenticate": "Bearer"})


class InvalidCredentials(Unauthorized):
    def __init__(self) -> None:
        super().__init__("invalid_credentials", "Invalid credentials")


class Forbidden(AppError):
    status_code = 403
    message = _SENTENCES[403]


class AdminOnly(Forbidden):
    message = "This needs an administrator account."


class NotFound(AppError):
    status_code = 404
    message = _SENTENCES[404]


class SessionNotFound(NotFound):
    message = SESSION_NOT_FOUND


class Conflict(AppError):
    status_code = 409
    message = "This conflicts with existing data."


class UnsupportedMediaType(AppError):
    status_code = 415
    message = _SENTENCES[415]


class InvalidCursor(AppError):
    status_code = 422
    message = "The cursor is not valid; pass back a next_cursor value unchanged."

    def __init__(self) -> None:
        super().__init__(
            detail=[{"type": "cursor_invalid", "loc": ["query", "cursor"], "msg": "Invalid cursor"}]
        )


class AssistantUnavailable(AppError):
    """The provider failed; the user's message is stored all the same."""

    status_code = 502
    message = _SENTENCES[502]


class ServiceUnavailable(AppError):
    status_code = 503
    message = _SENTENCES[503]


def retry_after(seconds: float) -> dict[str, str]:
    """A Retry-After header: whole seconds, at least one."""
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class TooManyRequests(AppError):
    """A rate limit refused the request; Retry-After says when the next one can pass."""

    status_code = 429
    message = _SENTENCES[429]

    def __init__(self, *, limit: str, seconds: float) -> None:
        headers = retry_after(seconds)
        detail = f"Over the limit of {limit}; retry in {headers['Retry-After']} s."
        super().__init__(detail=detail, headers=headers)


def sentence_for(status_code: int) -> str:
    if status_code in _SENTENCES:
        return _SENTENCES[status_code]
    try:
        return f"{HTTPStatus(status_code).phrase}."
    except ValueError:
        return "The request failed."


def error_response(
    status_code: int,
    message: str,
    detail: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {"success": False, "error": message, "detail": detail},
        status_code=status_code,
        headers=headers,
    )


def validation_details(errors: Any) -> list[dict[str, Any]]:
    """FastAPI-style details without `input`/`ctx`: they would echo passwords and NaN."""
    return [
        {
            "type": str(err.get("type", "")),
            "loc": list(err.get("loc", ())),
            "msg": str(err.get("msg", "")).removeprefix("Value error, "),
        }
        for err in errors
    ]


def validation_sentence(details: list[dict[str, Any]]) -> str:
    if any(d["type"] == "json_invalid" for d in details):
        return "The request body is not valid JSON."
    if not details:
        return _SENTENCES[422]
    first = details[0]
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "body"
    more = f" (and {len(details) - 1} more problem(s))" if len(details) > 1 else ""
    return f"Invalid value for {where}: {first['msg']}{more}."


async def _app_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)  # noqa: S101 - registered for AppError only
    return error_response(exc.status_code, exc.message, exc.detail, exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101
    if exc.status_code == 400 and exc.detail == FASTAPI_BODY_PARSE_ERROR:
        # Invalid UTF-8, absurd nesting or a 5,000-digit number: as unreadable as bad JSON.
        details = [{"type": "json_invalid", "loc": ["body"], "msg": "Invalid JSON body"}]
        return error_response(422, validation_sentence(details), details)
    detail = exc.detail if isinstance(exc.detail, str | None) else None
    return error_response(
        exc.status_code, sentence_for(exc.status_code), detail, dict(exc.headers or {}) or None
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101
    details = validation_details(exc.errors())
    return error_response(422, validation_sentence(details), details)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, _SENTENCES[500], headers={**SECURITY_HEADERS, **NO_STORE})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled)
