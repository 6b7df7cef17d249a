"""Settings: every knob chatgate reads from the environment or `.env`."""

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.network import Network, parse_networks
from app.ratelimit import RULES, parse_rule

MIN_SECRET_BYTES = 32
STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix")
SECRET_HINT = (
    'generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))" '  # noqa: S105
    "(or leave JWT_SECRET_KEY unset and chatgate keeps a generated key in its data folder)"
)
# Placeholders copied from tutorials and templates, compared without case or punctuation.
_PLACEHOLDER_MARKERS = (
    "changethis",
    "changeme",
    "yoursecret",
    "youractual",
    "secretkey",
    "placeholder",
    "insecure",
    "replaceme",
)


class ConfigError(Exception):
    """The configuration cannot be used; the message says which variable and why."""


def secret_problem(secret: str, name: str) -> str | None:
    """Why `secret` is unfit to sign tokens, or None when it is fine."""
    squashed = re.sub(r"[^a-z0-9]", "", secret.lower())
    if any(marker in squashed for marker in _PLACEHOLDER_MARKERS):
        return f"{name} is a well-known placeholder, not a secret; {SECRET_HINT}"
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        return (
            f"{name} is {size} bytes long; it needs at least {MIN_SECRET_BYTES} random bytes; "
            f"{SECRET_HINT}"
        )
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,  # `NAME=` in .env means "use the default"
        # A rejected JWT_SECRET_KEY must not be printed back in the error.
        hide_input_in_errors=True,
    )

    jwt_secret_key: SecretStr | None = None
    jwt_issuer: str = "chatgate"
    database_url: str = "sqlite:///./data/chatgate.db"
    access_token_expire_minutes: int = Field(default=60, ge=1, le=24 * 60)
    refresh_token_expire_days: int = Field(default=14, ge=1, le=365)
    # A login's absolute lifetime: refreshing never carries it past this age.
    login_max_age_days: int = Field(default=90, ge=1, le=3650)
    bcrypt_rounds: int = Field(default=12, ge=4, le=20)
    password_hash_concurrency: int | None = Field(default=None, ge=1)
    cors_origins: Annotated[list[str], NoDecode] = []
    external_jwt_secret: SecretStr | None = None
    external_jwt_user_id_claim: str = Field(default="user_id", min_length=1, max_length=100)
    assistant_provider: Literal["echo", "openai"] = "echo"
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: SecretStr | None = None
    openai_model: str | None = None
    openai_connect_timeout: float = Field(default=5.0, gt=0, le=300)
    openai_read_timeout: float = Field(default=60.0, gt=0, le=3600)
    # Replies being generated at once (the provider's connection pool is this size);
    # past it a new one is refused with 503 and Retry-After, never left waiting.
    assistant_max_concurrent_replies: int = Field(default=1000, ge=1, le=100_000)
    system_prompt: str = "You are a helpful assistant."
    context_max_messages: int = Field(default=20, ge=1, le=1000)
    context_max_chars: int = Field(default=24_000, ge=100, le=10_000_000)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    password_hash_max_wait: float = Field(default=2.0, ge=0, le=60)
    rate_limit_enabled: bool = True
    rate_limit_storage_uri: str = "memory://"
    rate_limit_key_prefix: str = Field(default="chatgate", min_length=1, max_length=100)
    rate_limit_chat: str = "30/minute"
    rate_limit_login_ip: str = "20/minute"
    rate_limit_login_email: str = "5/minute;20/hour"
    rate_limit_login_account: str = "100/hour"
    rate_limit_register: str = "10/hour"
    rate_limit_refresh: str = "30/minute"
    rate_limit_anonymous: str = "120/minute"
    # IPv6 clients are counted by network: the address's first this many bits.
    rate_limit_ipv6_prefix: int = Field(default=64, ge=8, le=128)
    trusted_proxies: Annotated[list[str], NoDecode] = []
    registration_enabled: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("jwt_secret_key")
    @classmethod
    def _refuse_weak_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        problem = secret_problem(value.get_secret_value(), "JWT_SECRET_KEY")
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("external_jwt_secret")
    @classmethod
    def _refuse_weak_external_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or value.get_secret_value() == "":
            return None
        # startproject's keys are random but labelled "django-insecure-": judge the rest.
        secret = value.get_secret_value().removeprefix("django-insecure-")
        problem = secret_problem(secret, "EXTERNAL_JWT_SECRET")
        if problem:
            raise ValueError(problem.replace(SECRET_HINT, "use the Django site's SECRET_KEY"))
        return value

    @model_validator(mode="after")
    def _openai_needs_a_model(self) -> "Settings":
        if self.assistant_provider == "openai" and not self.openai_model:
            raise ValueError(
                "OPENAI_MODEL must name a model when ASSISTANT_PROVIDER=openai "
                "(for example gpt-4o-mini, or llama3.2 on Ollama)"
            )
        return self

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            return [entry.strip() for entry in value.split(",") if entry.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_are_networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @field_validator(
        "rate_limit_chat",
        "rate_limit_login_ip",
        "rate_limit_login_email",
        "rate_limit_login_account",
        "rate_limit_register",
        "rate_limit_refresh",
        "rate_limit_anonymous",
    )
    @classmethod
    def _a_rate(cls, value: str) -> str:
        parse_rule(value)
        return value

    @field_validator("rate_limit_storage_uri")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        scheme = value.removeprefix("async+").split("://", 1)[0]
        if "://" not in value or scheme not in STORAGE_SCHEMES:
            raise ValueError(
                "RATE_LIMIT_STORAGE_URI must be memory:// (one instance) or "
                "redis://host:6379/0 (instances sharing their counters)"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _sqlite_only(cls, value: str) -> str:
        if not value.startswith("sqlite:///") or value == "sqlite:///":
            raise ValueError(
                "DATABASE_URL must look like sqlite:///./data/chatgate.db (a relative path) "
                "or sqlite:////var/lib/chatgate/chatgate.db (an absolute one)"
            )
        if database_path_of(value).name == ":memory:":
            raise ValueError("DATABASE_URL must name a file; in-memory SQLite is not supported")
        return value

    @property
    def database_path(self) -> Path:
        return database_path_of(self.database_url)

    @property
    def hash_concurrency(self) -> int:
        """Password hashes at once: PASSWORD_HASH_CONCURRENCY, else one per CPU this
        process may run on (a container or `taskset` may allow fewer than the machine has)."""
        if self.password_hash_concurrency:
            return self.password_hash_concurrency
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0)) or 1
        return os.cpu_count() or 1

    @property
    def trusted_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)

    @property
    def rate_limit_rules(self) -> dict[str, str]:
        return {name: getattr(self, f"rate_limit_{name}") for name in RULES}

    @property
    def data_dir(self) -> Path:
        """The folder holding the database, and the generated secret when there is one."""
        return self.database_path.parent


def database_path_of(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _problem(name: str, message: str) -> str:
    message = message.removeprefix("Value error, ")
    return message if message.startswith(name) else f"{name}: {message}"


def load_settings() -> Settings:
    """Read the environment and `.env`, turning validation failures into one clear message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            _problem(".".join(str(p) for p in err["loc"]).upper(), err["msg"])
            for err in exc.errors(include_input=False, include_url=False)
        )
        raise ConfigError(problems) from None
