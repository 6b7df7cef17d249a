"""Opaque keyset cursors: clients pass back what they were given, nothing more."""

import base64
import binascii
import json

from app.errors import InvalidCursor


def encode_cursor(*key: str | int) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> list[object]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeError) as exc:
        raise InvalidCursor from exc
    if not isinstance(key, list):
        raise InvalidCursor
    return key


def decode_keyset_cursor(cursor: str) -> tuple[str, str]:
    """(timestamp, id) of the last row of the previous page: a session's (updated_at, id),
    a user's (created_at, id)."""
    key = _decode(cursor)
    if len(key) != 2 or not all(isinstance(part, str) for part in key):
        raise InvalidCursor
    stamp, row_id = str(key[0]), str(key[1])
    try:  # a JSON "\ud800" would decode, then break SQLite's UTF-8
        (stamp + row_id).encode()
    except UnicodeEncodeError as exc:
        raise InvalidCursor from exc
    return stamp, row_id


def decode_history_cursor(cursor: str) -> int:
    """Position of the last message of the previous page."""
    key = _decode(cursor)
    if len(key) != 1 or type(key[0]) is not int or not 0 <= key[0] < 2**62:
        raise InvalidCursor
    return key[0]
