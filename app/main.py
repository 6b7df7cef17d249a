"""The application factory and its lifespan: the one place resources open and close."""

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import version

from fastapi import FastAPI

from app import logredact
from app.auth import ExternalIssuer, PasswordHasher, TokenService
from app.config import ConfigError, Settings, load_settings
from app.db import Database
from app.deps import Services
from app.errors import install_error_handlers
from app.keys import resolve_jwt_secret
from app.middleware import (
    BodySizeLimit,
    ClientGoneMiddleware,
    EnvelopeCORSMiddleware,
    InFlight,
    SecurityHeaders,
)
from app.network import TrustedProxies
from app.ratelimit import RateLimiter
from app.routes import admin, auth, chat, health, logins
from app.routes.docs import ASSETS_URL, mount_docs
from app.routes.limited_route import limit_unknown_paths
from app.services.assistant import build_assistant
from app.services.conversation import Conversation

logger = logging.getLogger("chatgate")

DESCRIPTION = """\
Chat sessions with an assistant, behind chatgate's own accounts and JWT tokens.

Use **Authorize** with your email as *username* to call the protected routes.
Every response carries `success`; errors add `error` (one sentence) and `detail`.
"""


def _configure_logging(settings: Settings) -> None:
    root = logging.getLogger()
    if not root.handlers:  # leave a host's (uvicorn's, pytest's) logging alone
        logging.basicConfig(format="%(levelname)s:     %(name)s - %(message)s")
    logging.getLogger("chatgate").setLevel(settings.log_level)
    # uvicorn has set up its handlers by now (it does before importing the app).
    logredact.install()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    async with AsyncExitStack() as resources:
        db = Database(settings.database_path)
        await db.open()
        resources.push_async_callback(db.close)
        assistant = build_assistant(settings)
        resources.push_async_callback(assistant.aclose)
        hasher = PasswordHasher(
            settings.bcrypt_rounds, settings.hash_concurrency, settings.password_hash_max_wait
        )
        await hasher.prepare()
        tokens = _token_service(settings, app.state.jwt_secret)
        proxies = TrustedProxies(settings.trusted_networks)
        limiter = RateLimiter(
            enabled=settings.rate_limit_enabled,
            storage_uri=settings.rate_limit_storage_uri,
            rules=settings.rate_limit_rules,
            key_prefix=settings.rate_limit_key_prefix,
            tokens=tokens,
            proxies=proxies,
            ipv6_prefix=settings.rate_limit_ipv6_prefix,
        )
        resources.push_async_callback(limiter.aclose)
        if settings.rate_limit_enabled and not await limiter.storage_reachable():
            logger.error(
                "the rate-limit storage (RATE_LIMIT_STORAGE_URI) does not answer; "
                "requests pass unlimited until it does"
            )
        app.state.services = Services(
            db=db,
            hasher=hasher,
            tokens=tokens,
            conversation=Conversation(
                db, assistant, max_replies=settings.assistant_max_concurrent_replies
            ),
            limiter=limiter,
            proxies=proxies,
        )
        # Pushed last, so it runs first: requests still unwinding (cancelled by
        # uvicorn's --timeout-graceful-shutdown) finish before anything closes.
        resources.push_async_callback(app.state.in_flight.wait_idle)
        logger.info("chatgate ready; database %s", settings.database_path)
        # What start-up built lives as long as the process: out of the collector's
        # sight, a full collection stops scanning it every time. Without this, those
        # pauses were most of the benchmark's p99 (docs/performance.md).
        gc.freeze()
        resources.callback(gc.unfreeze)
        yield


def _token_service(settings: Settings, secret: str) -> TokenService:
    return TokenService(
        secret,
        settings.jwt_issuer,
        settings.access_token_expire_minutes * 60,
        settings.refresh_token_expire_days * 86400,
        external=_external_issuer(settings),
        login_max_age_seconds=settings.login_max_age_days * 86400,
    )


def _external_issuer(settings: Settings) -> ExternalIssuer | None:
    if settings.external_jwt_secret is None:
        return None
    return ExternalIssuer(
        secret=settings.external_jwt_secret.get_secret_value(),
        user_id_claim=settings.external_jwt_user_id_claim,
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; `ConfigError` when the configuration (or the key file) is unusable."""
    settings = settings or load_settings()
    _configure_logging(settings)
    # Resolved here, before serving, so a bad key stops start-up with one clear line.
    jwt_secret = resolve_jwt_secret(settings)
    external = settings.external_jwt_secret
    if external is not None and external.get_secret_value() == jwt_secret:
        raise ConfigError(
            "EXTERNAL_JWT_SECRET must differ from JWT_SECRET_KEY: with one key, a token of one "
            "issuer could pass for the other's"
        )
    app = FastAPI(
        title="chatgate",
        version=version("chatgate"),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by routes/docs.py from local assets
        redoc_url=None,
        # Starlette's slash redirect is absolute, built from the Host header, and a 307
        # makes clients resend their credentials there: a trailing slash is a 404.
        redirect_slashes=False,
    )
    app.state.settings = settings
    app.state.jwt_secret = jwt_secret
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.state.in_flight = InFlight()
    app.add_middleware(ClientGoneMiddleware, in_flight=app.state.in_flight)
    if settings.cors_origins:
        wildcard = "*" in settings.cors_origins
        app.add_middleware(
            EnvelopeCORSMiddleware,
            allow_origins=settings.cors_origins,
            # Credentials with "*" would let any site act for a logged-in browser.
            allow_credentials=not wildcard,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["WWW-Authenticate", "Retry-After"],
        )
    # Added last, so outermost: preflights and every middleware's own answers get them.
    app.add_middleware(SecurityHeaders, cacheable_prefix=f"{ASSETS_URL}/")
    app.include_router(auth.router)
    app.include_router(logins.router)
    app.include_router(chat.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    limit_unknown_paths(app.router)
    mount_docs(app)
    return app


def _default_app() -> FastAPI:
    try:
        return create_app()
    except ConfigError as exc:
        sys.exit(f"chatgate cannot start: {exc}")


def __getattr__(name: str) -> FastAPI:
    """`app.main:app` for uvicorn, built on first access rather than at import.

    Importing this module (as the tests do, for `create_app`) then reads no
    environment and writes no key file.
    """
    if name == "app":
        application = _default_app()
        globals()["app"] = application
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
