"""The HS256 signing key: from JWT_SECRET_KEY, or generated once and kept in the data folder."""

import logging
import os
import secrets
from pathlib import Path

from app.config import ConfigError, Settings, secret_problem

logger = logging.getLogger("chatgate.keys")

SECRET_FILE_NAME = "jwt_secret.key"  # noqa: S105 - a file name


def resolve_jwt_secret(settings: Settings) -> str:
    """The key to sign with; `ConfigError` saying why when there is none usable."""
    if settings.jwt_secret_key is not None:
        return settings.jwt_secret_key.get_secret_value()
    path = settings.data_dir / SECRET_FILE_NAME
    try:
        if path.exists():
            return _read(path)
        return _generate(path)
    except OSError as exc:
        raise ConfigError(
            f"JWT_SECRET_KEY is not set and the key file {path} cannot be used "
            f"({exc.strerror or type(exc).__name__}); fix the file or set JWT_SECRET_KEY"
        ) from None


def _read(path: Path) -> str:
    secret = path.read_text(encoding="utf-8").strip()
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
        logger.warning("%s was readable by other users; its mode is now 0600", path)
    problem = secret_problem(secret, f"the key in {path}")
    if problem:
        raise ConfigError(f"{problem}; delete the file to have a new one generated")
    return secret


def _generate(path: Path) -> str:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # Written whole under a private name, then linked into place: a process starting
    # at the same moment sees either no key file or a complete one, and if two race,
    # the link fails for one of them, which then reads the winner's key.
    draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secret + "\n")
        os.link(draft, path)
    except FileExistsError:
        return _read(path)
    finally:
        draft.unlink(missing_ok=True)
    logger.warning(
        "JWT_SECRET_KEY is not set: generated a signing key and saved it to %s (mode 0600). "
        "Tokens stay valid across restarts while that file is kept; set JWT_SECRET_KEY to "
        "share one key between several instances.",
        path,
    )
    return secret
