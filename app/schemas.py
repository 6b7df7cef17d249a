"""Request and response models: what crosses the HTTP boundary, and its rules."""

import re
import unicodedata
from datetime import datetime
from typing import Annotated, Any, Literal

import idna
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    WithJsonSchema,
)

# Field limits, documented in docs/limits.md.
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 128
EMAIL_MAX_CHARS = 254
DISPLAY_NAME_MAX_CHARS = 100
TITLE_MAX_CHARS = 200
MESSAGE_MAX_CHARS = 32_000
PAGE_DEFAULT = 20
PAGE_MAX = 100
HISTORY_PAGE_DEFAULT = 100
HISTORY_PAGE_MAX = 500

_SURROGATE = re.compile("[\ud800-\udfff]")
# RFC 5322 "atext" and dots, plus any non-ASCII letter (internationalised addresses).
_LOCAL_PART = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+")
_LOCAL_PART_MAX_CHARS = 64
_DOMAIN = re.compile(r"(?:[\w-]{1,63}\.)+[\w-]{2,63}")


def _encodable(value: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot be stored or sent as UTF-8.
    if _SURROGATE.search(value):
        raise ValueError("text must be valid Unicode (lone surrogates are not allowed)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    return value


def normalized_email(value: str) -> str:
    """One spelling of an address: trimmed, NFC, lower-case (the domain's IDNA comes after).

    NFC again after lower(): lowering can leave a pair that composes ("T" + U+0308
    has no precomposed capital, but "ẗ" exists).
    """
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value.strip()).lower())


def normalize_email(value: object) -> object:
    """Emails compare without case, surrounding spaces or Unicode spelling (NFC)."""
    return normalized_email(value) if isinstance(value, str) else value


def _valid_local_part(local: str) -> bool:
    # \w has no combining marks, and NFC keeps some letters decomposed (U+0958 is
    # U+0915 and a nukta mark): marks may go beside what the pattern checks.
    unmarked = local
    if not local.isascii():
        unmarked = "".join(ch for ch in local if not unicodedata.category(ch).startswith("M"))
    return len(local) <= _LOCAL_PART_MAX_CHARS and _LOCAL_PART.fullmatch(unmarked) is not None


def _canonical_email(value: str) -> str:
    """Checks the shape and writes an internationalised domain one way (Unicode, not xn--)."""
    local, _, domain = value.rpartition("@")
    if not _valid_local_part(local) or len(value) > EMAIL_MAX_CHARS:
        raise ValueError("is not a valid email address")
    if not domain.isascii() or "xn--" in domain:
        # IDNA 2008 (UTS 46, non-transitional): straße.de stays apart from strasse.de,
        # and a punycode spelling becomes the Unicode one.
        try:
            domain = idna.decode(idna.encode(domain, uts46=True, transitional=False))
        except idna.IDNAError:
            raise ValueError("is not a valid email address") from None
    if not _DOMAIN.fullmatch(domain):
        raise ValueError("is not a valid email address")
    return f"{local}@{domain}"


Email = Annotated[
    str,
    BeforeValidator(normalize_email),
    AfterValidator(_encodable),
    AfterValidator(_canonical_email),
    WithJsonSchema({"type": "string", "format": "email", "maxLength": EMAIL_MAX_CHARS}),
]
# Never trimmed or normalised: every character of a password counts.
Password = Annotated[
    str,
    Field(min_length=PASSWORD_MIN_CHARS, max_length=PASSWORD_MAX_CHARS),
    AfterValidator(_encodable),
]
DisplayName = Annotated[
    str,
    Field(min_length=1, max_length=DISPLAY_NAME_MAX_CHARS),
    AfterValidator(_not_blank),
    AfterValidator(_encodable),
]
Title = Annotated[
    str,
    Field(min_length=1, max_length=TITLE_MAX_CHARS),
    AfterValidator(_not_blank),
    AfterValidator(_encodable),
]
# Stored exactly as sent: no stripping, only a refusal of blank text.
MessageText = Annotated[
    str,
    Field(min_length=1, max_length=MESSAGE_MAX_CHARS),
    AfterValidator(_not_blank),
    AfterValidator(_encodable),
]


def _login_email(value: str) -> str:
    try:
        return _canonical_email(value)
    except ValueError:
        return value  # cannot match an account: login answers "Invalid credentials"


# --- requests ----------------------------------------------------------------


class RegisterRequest(BaseModel):
    email: Email
    password: Password
    display_name: DisplayName | None = None


class LoginRequest(BaseModel):
    # Login does not re-validate the format: a malformed email is just unknown.
    email: Annotated[
        str,
        BeforeValidator(normalize_email),
        Field(min_length=1, max_length=EMAIL_MAX_CHARS),
        AfterValidator(_encodable),
        AfterValidator(_login_email),
    ]
    password: Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_encodable)]


# No maximum length here: an overlong token is a bad token (401), not bad input.
class RefreshRequest(BaseModel):
    refresh_token: Annotated[str, Field(min_length=1)]


class LogoutRequest(BaseModel):
    refresh_token: str | None = None


class PasswordChange(BaseModel):
    current_password: Annotated[
        str, Field(min_length=1, max_length=1024), AfterValidator(_encodable)
    ]
    new_password: Password


class AccountDelete(BaseModel):
    password: Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_encodable)]


Role = Literal["user", "admin"]


class AdminUserCreate(BaseModel):
    email: Email
    password: Password
    display_name: DisplayName | None = None
    role: Role = "user"


class AdminUserUpdate(BaseModel):
    role: Role | None = None
    disabled: StrictBool | None = Field(
        default=None, description="true: no token of the user works and they cannot log in."
    )


class SessionCreate(BaseModel):
    title: Title | None = None
    initial_message: MessageText | None = None


class SessionRename(BaseModel):
    title: Title


class MessageCreate(BaseModel):
    session_id: Annotated[str, Field(min_length=1, max_length=200)]
    message: MessageText


# --- responses ---------------------------------------------------------------


class Record(BaseModel):
    """Read models are built from the repository's records by attribute."""

    model_config = ConfigDict(from_attributes=True)


class UserPublic(Record):
    id: str
    email: str | None = Field(description="Null for users signed in by another issuer.")
    display_name: str | None
    role: Role
    created_at: datetime


class AdminUser(UserPublic):
    auth_source: str = Field(description='"local", or the issuer of an external user.')
    disabled: bool
    disabled_at: datetime | None
    session_count: int
    message_count: int


class LoginInfo(Record):
    id: str
    created_at: datetime
    last_used_at: datetime
    user_agent: str | None
    ip: str | None
    current: bool = Field(default=False, description="The login this request's token is from.")
    expires_at: datetime = Field(
        description="When the login ends however often it refreshes: created_at plus "
        "LOGIN_MAX_AGE_DAYS. After it, /auth/refresh answers 401 and the user logs in again."
    )
    refresh_expires_at: datetime = Field(
        description="When the login ends unless it refreshes before: its latest refresh "
        "token's expiry, never after expires_at."
    )


class ChatSession(Record):
    id: str
    title: str
    created_at: datetime
    updated_at: datetime
    message_count: int


class ChatMessage(Record):
    id: str
    session_id: str
    role: Literal["user", "assistant"]
    content: str
    created_at: datetime


NextCursor = Annotated[
    str | None, Field(description="Pass as `cursor` for the next page; null at the end.")
]


class SuccessResponse(BaseModel):
    success: Literal[True] = True


class UserResponse(SuccessResponse):
    user: UserPublic


class TokenResponse(SuccessResponse):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105
    expires_in: int = Field(description="Seconds until the access token expires.")


class LoginsResponse(SuccessResponse):
    logins: list[LoginInfo]


class SessionResponse(SuccessResponse):
    session: ChatSession


class SessionCreatedResponse(SuccessResponse):
    session: ChatSession
    messages: list[ChatMessage]


class SessionListResponse(SuccessResponse):
    sessions: list[ChatSession]
    count: int = Field(description="Number of sessions in this page.")
    next_cursor: NextCursor


class HistoryResponse(SuccessResponse):
    session_id: str
    messages: list[ChatMessage]
    next_cursor: NextCursor


class MessageExchangeResponse(SuccessResponse):
    session_id: str
    user_message: ChatMessage
    assistant_message: ChatMessage


class AdminUserResponse(SuccessResponse):
    user: AdminUser


class AdminUserListResponse(SuccessResponse):
    users: list[AdminUser]
    count: int = Field(description="Number of users in this page.")
    next_cursor: NextCursor


class StatsResponse(SuccessResponse):
    users: int
    admins: int
    disabled_users: int
    sessions: int
    messages: int
    messages_last_day: int = Field(description="Messages written in the last 24 hours.")


class StatusResponse(SuccessResponse):
    status: str


class ErrorResponse(BaseModel):
    success: Literal[False] = False
    error: str = Field(description="One human sentence.")
    detail: Any = Field(default=None, description="FastAPI-style detail; may name the cause.")


_ERROR_DESCRIPTIONS = {
    401: "Missing, invalid, expired or revoked token (or, for login, invalid credentials).",
    403: "Not allowed (for example, a wrong current password, or not an administrator).",
    404: "Not found, or not yours.",
    409: "Conflicts with existing data (or an admin removing their own admin account).",
    413: "Request body too large.",
    415: "Request body is not JSON.",
    422: "Invalid input.",
    429: "Over a rate limit, or too many wrong passwords; Retry-After says in how many "
    "seconds to try again.",
    500: "Internal error.",
    502: "The assistant is unavailable; the user message was stored.",
    503: "Temporarily unavailable (too many password checks waiting, or too many replies "
    "being written at once; nothing was stored); see Retry-After.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries declaring that these statuses answer with the error envelope."""
    return {
        code: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS.get(code, "Error.")}
        for code in codes
    }
