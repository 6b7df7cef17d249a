"""Keeps secrets out of log lines: a `logging.Filter` for every handler chatgate logs through.

uvicorn's access log writes each request's query string, so a client that sends
`?access_token=…` (or a password) would leave a live secret in the log. The
filter rewrites, in the message, its arguments and its traceback: the value of
any `name=value` whose name is secret-like, anything shaped like a JWT, and the
credential after `Bearer`.
"""

import copy
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

from uvicorn.config import LOGGING_CONFIG

REDACTED = "[redacted]"
LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access", "chatgate")

# Names are matched decoded (`access%5Ftoken` is `access_token`) and by what they
# contain, so `new_password`, `id_token` and `x-api-key` count too.
_SECRET_NAME = re.compile(
    r"token|passw(?:or)?d|secret|api[_-]?key|apikey|jwt|credential|authorization"
    r"|(?:^|[^a-z])key$",
    re.IGNORECASE,
)
_PARAMETER = re.compile(r"""(?P<name>[^\s?&;#=,"'<>()]+)=(?P<value>"[^"]*"|'[^']*'|[^\s&;#,"']*)""")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*=*\.[A-Za-z0-9_-]*=*\.[A-Za-z0-9_-]*=*")
_BEARER = re.compile(r"\b(Bearer)[ \t]+[^\s\"',;]+", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` without the secrets it carries; the same text when it carries none."""
    text = _PARAMETER.sub(_redact_parameter, text)
    text = _JWT.sub(REDACTED, text)
    return _BEARER.sub(rf"\1 {REDACTED}", text)


def _redact_parameter(match: re.Match[str]) -> str:
    name = match["name"]
    if not match["value"] or not _SECRET_NAME.search(unquote_plus(name)):
        return match[0]
    return f"{name}={REDACTED}"


class RedactingFilter(logging.Filter):
    """Rewrites a record in place. Its arguments keep their shape (uvicorn's
    AccessFormatter unpacks them as client, method, path, version, status); only a
    secret that spans the format and its arguments (`"password=%s"`) makes the record
    one finished message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = {key: _redacted_value(value) for key, value in record.args.items()}
        elif record.args:
            record.args = tuple(_redacted_value(value) for value in record.args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            # A broken format: logging reports it with its format and arguments.
            record.msg, message = _redacted_value(record.msg), None
        if message is not None and (cleaned := redact(message)) != message:
            record.msg, record.args = cleaned, ()
            # uvicorn's coloured variant of the format would want the arguments back.
            record.__dict__.pop("color_message", None)
        if record.exc_info and not record.exc_text:
            # What Formatter.format would write, made now so that it can be redacted.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def _redacted_value(value: Any) -> Any:
    # Numbers stay numbers (`%d`); anything else is replaced only when it held a secret.
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


def install(logger_names: tuple[str, ...] = LOGGERS) -> None:
    """Adds the filter to every handler of those loggers, once (uvicorn configures its
    logging before it imports the app, so its handlers exist by then)."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging configuration with the filter on each of its handlers."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact": {"()": RedactingFilter}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact"]
    return config
