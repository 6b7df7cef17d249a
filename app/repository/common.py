"""Helpers every repository module shares."""

import uuid
from datetime import UTC, datetime


def new_id() -> str:
    return str(uuid.uuid4())


TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def utc_now() -> str:
    """Fixed-width ISO 8601 UTC, so text order is time order."""
    return datetime.now(UTC).strftime(TIMESTAMP_FORMAT)


def utc_from_epoch(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(TIMESTAMP_FORMAT)
