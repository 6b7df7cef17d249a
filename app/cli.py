"""The `chatgate` command: serve, manage accounts, migrate, back up and restore.

Every command reads the same settings as the service (environment and `.env`
in the working directory), so run it where you run `make run`. Exit status:
0 done, 1 it could not be done (no such user, email taken, a database or
configuration problem), 2 the command line or the input was wrong, 130
interrupted. Passwords are prompted for (twice) on a terminal, or read as one
line from stdin; never taken from the command line, where `ps` and shell
history would show them.
"""

import argparse
import asyncio
import getpass
import logging
import os
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from pydantic import TypeAdapter, ValidationError

from app.auth import PasswordHasher
from app.backup import CopyError, CopyReport, schema_version_of
from app.backup import backup as backup_database
from app.backup import restore as restore_database
from app.config import ConfigError, Settings, load_settings
from app.db import SCHEMA_VERSION, Database, SchemaTooNew
from app.errors import AppError
from app.logredact import uvicorn_log_config
from app.main import create_app
from app.repository import ADMIN, ROLES, USER
from app.schemas import DisplayName, Email, Password
from app.services import admin

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8009  # what `make run` serves on

T = TypeVar("T")


class UsageError(Exception):
    """The input is wrong (exit 2); the message says which and why."""


class Failed(Exception):
    """The command cannot be done (exit 1); the message says why."""


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    """Runs one command; returns the exit status (the console script exits with it)."""
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 with a usage line on a wrong command line
    command: Callable[[argparse.Namespace, Settings], int] = args.command
    if command is not _serve and not logging.getLogger().handlers:
        # chatgate's warnings, as the command's own lines (a server logs as a server).
        logging.basicConfig(format="chatgate: %(message)s", level=logging.WARNING)
    try:
        return command(args, settings or load_settings())
    except UsageError as exc:
        return _fail(f"{exc}", EXIT_USAGE)
    except (Failed, ConfigError, CopyError, SchemaTooNew) as exc:
        return _fail(f"{exc}")
    except AppError as exc:
        return _fail(f"{exc.message}")
    except (sqlite3.Error, OSError) as exc:
        return _fail(f"the database could not be used: {exc}")
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def run() -> None:
    """The `chatgate` console script."""
    sys.exit(main())


def _fail(message: str, status: int = EXIT_FAILED) -> int:
    print(f"chatgate: {message}", file=sys.stderr)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatgate",
        description="Run and operate chatgate. Settings come from the environment and .env.",
    )
    commands = parser.add_subparsers(metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="serve the API (what `make run` does)")
    serve.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    serve.set_defaults(command=_serve)

    create = commands.add_parser(
        "create-user", help="create an account (password prompted, or one line on stdin)"
    )
    create.add_argument("--email", required=True)
    create.add_argument("--display-name")
    create.add_argument("--admin", action="store_true", help="make it an administrator")
    create.set_defaults(command=_create_user)

    reset = commands.add_parser(
        "reset-password", help="set a new password (prompted, or stdin); ends every login"
    )
    reset.add_argument("--email", required=True)
    reset.set_defaults(command=_reset_password)

    role = commands.add_parser("set-role", help="make an existing account an admin or a user")
    role.add_argument("--email", required=True)
    role.add_argument("role", choices=ROLES)
    role.set_defaults(command=_set_role)

    backup = commands.add_parser(
        "backup", help="write a consistent copy of the database, while the service runs"
    )
    backup.add_argument("path", help="a new file, or a folder to put it in")
    backup.set_defaults(command=_backup)

    restore = commands.add_parser(
        "restore", help="copy a backup to DATABASE_URL, which must not exist yet"
    )
    restore.add_argument("backup", type=Path)
    restore.set_defaults(command=_restore)

    migrate = commands.add_parser("migrate", help="bring the database schema up to date")
    migrate.set_defaults(command=_migrate)
    return parser


# --- commands ----------------------------------------------------------------


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    application = create_app(settings)
    # No proxy headers: TRUSTED_PROXIES decides whom X-Forwarded-For is believed from.
    # uvicorn builds its handlers after the app, so they get the redacting filter here.
    uvicorn.run(
        application,
        host=args.host,
        port=args.port,
        proxy_headers=False,
        log_config=uvicorn_log_config(),
    )
    return EXIT_OK


def _create_user(args: argparse.Namespace, settings: Settings) -> int:
    email = _valid(Email, args.email, "--email")
    display_name = _valid(DisplayName, args.display_name, "--display-name")
    password = _valid(Password, read_password(), "the password")
    role = ADMIN if args.admin else USER

    async def create(db: Database) -> None:
        user = await admin.create_user(
            db,
            _hasher(settings),
            email=email,
            password=password,
            display_name=display_name,
            role=role,
        )
        print(f"created {role} {user.email} (id {user.id})")

    return _with_database(settings, create)


def _reset_password(args: argparse.Namespace, settings: Settings) -> int:
    email = _valid(Email, args.email, "--email")
    _require_database(settings)
    password = _valid(Password, read_password(), "the password")

    async def reset(db: Database) -> None:
        user = await admin.reset_password(db, _hasher(settings), email=email, password=password)
        note = " (the account stays disabled)" if user.disabled else ""
        print(f"new password set for {user.email}; every login of theirs has ended{note}")

    return _with_database(settings, reset)


def _set_role(args: argparse.Namespace, settings: Settings) -> int:
    email = _valid(Email, args.email, "--email")
    _require_database(settings)

    async def change(db: Database) -> None:
        user = await admin.set_role_by_email(db, email=email, role=args.role)
        was = "" if user.role == args.role else f" (was {user.role})"
        print(f"{user.email} is now {'an' if args.role == ADMIN else 'a'} {args.role}{was}")

    return _with_database(settings, change)


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    target = Path(args.path)  # Path() drops a trailing slash, which says "a folder"
    if target.is_dir():
        target = _new_name(target, settings.database_path.stem)
    elif args.path.endswith(("/", os.sep)):
        raise Failed(f"{target} is not a folder; create it first")
    report = asyncio.run(backup_database(settings.database_path, target))
    print(f"backed up {settings.database_path} to {report.path}: {_summary(report)}")
    return EXIT_OK


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    report = asyncio.run(restore_database(args.backup, settings.database_path))
    _with_database(settings, _nothing)  # opening it applies what the backup predates
    print(f"restored {args.backup} to {report.path}: {_summary(report)}")
    if report.schema_version < SCHEMA_VERSION:
        print(f"migrated from schema version {report.schema_version} to {SCHEMA_VERSION}")
    print("start chatgate with this DATABASE_URL to serve it")
    return EXIT_OK


def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    _require_database(settings)
    before = asyncio.run(schema_version_of(settings.database_path))
    if before > SCHEMA_VERSION:  # refused before opening, which would switch it to WAL
        raise SchemaTooNew(settings.database_path, before)
    _with_database(settings, _nothing)  # opening the database migrates it
    if before == SCHEMA_VERSION:
        print(f"{settings.database_path} is already at schema version {SCHEMA_VERSION}")
    else:
        print(f"{settings.database_path} migrated from schema version {before} to {SCHEMA_VERSION}")
    return EXIT_OK


# --- helpers -----------------------------------------------------------------


def read_password() -> str:
    """A password typed twice on a terminal, or the first line of piped stdin (its line
    ending removed, nothing else: every character of a password counts)."""
    stream = sys.stdin
    if stream is None:  # started with stdin closed
        raise UsageError("no password: type it at the prompt, or pipe it on stdin")
    if stream.isatty():
        try:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Repeat it: ") != password:
                raise UsageError("the two passwords differ; nothing was changed")
        except EOFError:  # Ctrl-D at the prompt
            raise UsageError("no password given; nothing was changed") from None
        return password
    line = stream.readline()
    if not line:
        raise UsageError("no password: type it at the prompt, or pipe it on stdin")
    return line.removesuffix("\n").removesuffix("\r")


def _valid(kind: Any, value: T, what: str) -> T:
    if value is None:
        return value
    try:
        result: T = TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        reason = exc.errors(include_input=False)[0]["msg"].removeprefix("Value error, ")
        raise UsageError(f"{what}: {reason}") from None
    return result


def _hasher(settings: Settings) -> PasswordHasher:
    return PasswordHasher(settings.bcrypt_rounds, settings.hash_concurrency)


def _require_database(settings: Settings) -> None:
    """Only create-user makes a database: for anything else a missing file is a mistyped
    DATABASE_URL or the wrong working directory."""
    if not settings.database_path.is_file():
        raise Failed(
            f"there is no database at {settings.database_path} (DATABASE_URL); "
            "run this where chatgate runs, or create the first account with create-user"
        )


def _with_database(settings: Settings, work: Callable[[Database], Awaitable[None]]) -> int:
    """Opens the database (creating and migrating it, as the service would), runs `work`."""

    async def session() -> None:
        db = Database(settings.database_path)
        await db.open()
        try:
            await work(db)
        finally:
            await db.close()

    asyncio.run(session())
    return EXIT_OK


def _new_name(folder: Path, stem: str) -> Path:
    """<stem>-<UTC time>.db in `folder`, with -2, -3… for backups within one second."""
    name = f"{stem}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    candidate, n = folder / f"{name}.db", 1
    while candidate.exists():
        n += 1
        candidate = folder / f"{name}-{n}.db"
    return candidate


async def _nothing(db: Database) -> None:
    return None


def _summary(report: CopyReport) -> str:
    return (
        f"schema version {report.schema_version}, {report.users} users, "
        f"{report.sessions} sessions, {report.messages} messages; integrity check ok"
    )


if __name__ == "__main__":
    run()
