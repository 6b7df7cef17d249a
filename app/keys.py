"""The HS256 signing key: from JWT_SECRET_KEY, or generated once and kept in the data folder."""

import logging
import os
import secrets
from pathlib import Path

from app.config import ConfigError, Settings, secret_problem

logger = logging.getLogger("chatgate.keys")

SECRET_FILE_NAME = "jwt_secret.key"  # noqa: S105 - a file name


def resolve_jwt_secret(settings: Settings) -> str:
    """Blocking file I/O: call it from a worker thread."""
    if settings.jwt_secret_key is not None:
        return settings.jwt_secret_key.get_secret_value()
    path = settings.data_dir / SECRET_FILE_NAME
    if path.exists():
        secret = path.read_text(encoding="utf-8").strip()
        problem = secret_problem(secret, f"the generated key in {path}")
        if problem:
            raise ConfigError(f"{problem}; delete the file to have a new one generated")
        return secret
    return _generate(path)


def _generate(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # O_EXCL: if two processes start together, one writes and the other reads its key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(secret + "\n")
    logger.warning(
        "JWT_SECRET_KEY is not set: generated a signing key and saved it to %s (mode 0600). "
        "Tokens stay valid across restarts while that file is kept; set JWT_SECRET_KEY to "
        "share one key between several instances.",
        path,
    )
    return secret
