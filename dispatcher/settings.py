"""The one settings object (CONTRACT §2), built once in the CLI and passed down.

Precedence: explicit arguments > environment > the file named by ``DISPATCHER_CONFIG``
> ``./.env`` > defaults. Secrets may be given inline, as ``*_FILE`` paths, or as files
named ``database-password`` / ``amqp-password`` in ``$CREDENTIALS_DIRECTORY`` (systemd
``LoadCredential=``) or ``/run/secrets`` (compose). They are held as ``SecretStr`` so a
repr or a log line never shows them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dispatcher.logs import parse_level

DEFAULT_DATABASE_URL = "postgresql+asyncpg://dispatcher@localhost:5432/dispatcher"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class QueueType(StrEnum):
    QUORUM = "quorum"
    CLASSIC = "classic"


class EventLoop(StrEnum):
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


def _credential_dirs() -> list[Path]:
    dirs = []
    if creds := os.environ.get("CREDENTIALS_DIRECTORY"):
        dirs.append(Path(creds))
    dirs.append(Path("/run/secrets"))
    return dirs


def _read_secret_file(path: str | Path) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def _credential(name: str) -> str | None:
    for d in _credential_dirs():
        p = d / name
        if p.is_file():
            return _read_secret_file(p)
    return None


def replace_password(url: str, password: str) -> str:
    """Put ``password`` into ``url``'s userinfo (SQLAlchemy and AMQP URLs alike)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    user = parts.username or ""
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``: safe for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _env_files() -> tuple[str, ...]:
    files = [".env"]
    if cfg := os.environ.get("DISPATCHER_CONFIG"):
        # pydantic-settings skips a missing env file; a named config file that is not
        # there is an operator's mistake, not a default
        if not Path(cfg).is_file():
            raise ValueError(f"DISPATCHER_CONFIG names {cfg}, which is not a readable file")
        files.append(cfg)  # later files win over earlier ones
    return tuple(files)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISPATCHER_",
        extra="ignore",
        env_file_encoding="utf-8",
        validate_default=True,
    )

    database_url: SecretStr = SecretStr(DEFAULT_DATABASE_URL)
    database_password: SecretStr | None = None
    database_password_file: Path | None = None
    database_pool_size: int = Field(5, ge=1)

    amqp_url: SecretStr = SecretStr(DEFAULT_AMQP_URL)
    amqp_password: SecretStr | None = None
    amqp_password_file: Path | None = None

    prefix: str = "snf"
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    createinstance_kwargs: dict[str, Any] = Field(
        default_factory=lambda: {"os": "snf-image+default"}
    )

    queue_type: QueueType = QueueType.QUORUM
    prefetch: int = Field(1024, ge=1, le=65535)
    batch_size: int = Field(512, ge=1)
    batch_wait: float = Field(0.0, ge=0, le=1.0)
    max_retries: int = Field(5, ge=0)
    shutdown_grace: float = Field(10.0, ge=0)
    event_loop: EventLoop = EventLoop.ASYNCIO
    db_retry_max: float = Field(30.0, gt=0)

    http_listen: str = "127.0.0.1:9187"
    # test seam: processing raises for these instance names (fault tests); empty in production
    fault_inject_instances: frozenset[str] = frozenset()

    rapi_timeout: float = Field(30.0, gt=0)
    # eventd (runs on the Ganeti master)
    ganeti_queue_dir: Path = Path("/var/lib/ganeti/queue")
    ganeti_data_dir: Path = Path("/var/lib/ganeti")

    @field_validator("prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        if not v or "-" in v or "." in v or not v.isascii():
            raise ValueError("prefix must be non-empty ASCII without '-' or '.'")
        return v

    @field_validator("event_loop")
    @classmethod
    def _event_loop_installed(cls, v: EventLoop) -> EventLoop:
        # checked here, so that a missing extra is a bad setting (exit 2, one line) before
        # anything starts, not an ImportError once the daemon is half up
        if v is EventLoop.UVLOOP and importlib.util.find_spec("uvloop") is None:
            raise ValueError("uvloop is not installed (pip install 'ganeti-dispatcher[uvloop]')")
        return v

    @field_validator("log_level")
    @classmethod
    def _log_level_ok(cls, v: str) -> str:
        try:
            parse_level(v)
        except ValueError:
            raise ValueError("log level must be DEBUG, INFO, WARNING, ERROR or CRITICAL") from None
        return v.strip().upper()

    @field_validator("createinstance_kwargs", mode="before")
    @classmethod
    def _kwargs_json(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = json.loads(v)
        if not isinstance(v, dict):
            raise ValueError("must be a JSON object")
        return v

    @model_validator(mode="after")
    def _load_secret_files(self) -> Settings:
        db_pw = self.database_password.get_secret_value() if self.database_password else None
        if db_pw is None and self.database_password_file:
            db_pw = _read_secret_file(self.database_password_file)
        if db_pw is None:
            db_pw = _credential("database-password")
        if db_pw is not None:
            self.database_url = SecretStr(
                replace_password(self.database_url.get_secret_value(), db_pw)
            )
        amqp_pw = self.amqp_password.get_secret_value() if self.amqp_password else None
        if amqp_pw is None and self.amqp_password_file:
            amqp_pw = _read_secret_file(self.amqp_password_file)
        if amqp_pw is None:
            amqp_pw = _credential("amqp-password")
        if amqp_pw is not None:
            urls = [replace_password(u, amqp_pw) for u in self.amqp_urls]
            self.amqp_url = SecretStr(",".join(urls))
        return self

    @property
    def amqp_urls(self) -> list[str]:
        return [u.strip() for u in self.amqp_url.get_secret_value().split(",") if u.strip()]

    @property
    def exchange(self) -> str:
        return "ganeti"

    @property
    def dead_letter_exchange(self) -> str:
        return "ganeti-dl"

    def public_dict(self) -> dict[str, Any]:
        """Settings for display (``config show``, logs): no secret in it."""
        return {
            "database_url": redact_url(self.database_url.get_secret_value()),
            "amqp_url": ",".join(redact_url(u) for u in self.amqp_urls),
            "prefix": self.prefix,
            "log_level": self.log_level,
            "log_format": self.log_format,
            "createinstance_kwargs": self.createinstance_kwargs,
            "queue_type": self.queue_type.value,
            "prefetch": self.prefetch,
            "batch_size": self.batch_size,
            "batch_wait": self.batch_wait,
            "event_loop": self.event_loop.value,
            "max_retries": self.max_retries,
            "http_listen": self.http_listen,
        }


def load_settings(**overrides: Any) -> Settings:
    return Settings(_env_file=_env_files(), **overrides)
