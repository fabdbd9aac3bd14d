"""Logging for the daemon and the CLI: text or JSON lines on stderr, context fields, redaction.

Only the CLI calls :func:`setup_logging`; library modules just use
``logging.getLogger(__name__)`` with lazy ``%`` arguments.

Context: fields bound with :func:`log_context` (a context manager) or :func:`bind` (returns a
token for :func:`unbind`) live in a :class:`contextvars.ContextVar`, so each asyncio task sees
its own fields and every record emitted inside the block carries them (JSON: as keys; text: as
a ``k=v`` suffix). Fields passed per call with ``extra={...}`` are shown the same way.

Redaction: :func:`register_secret` adds a string (and its URL-quoted form) to a process-wide set;
any occurrence in a formatted record (message, arguments, context fields, exception text) is
replaced by ``***``. It is a safety net: secrets should not be logged in the first place.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import IO, TYPE_CHECKING, Literal
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    from dispatcher.settings import Settings

__all__ = [
    "JsonFormatter",
    "TextFormatter",
    "bind",
    "current_context",
    "log_context",
    "redact",
    "register_secret",
    "register_settings_secrets",
    "setup_logging",
    "unbind",
]

REDACTED = "***"

#: Libraries that are chatty at INFO; kept at WARNING unless the level is DEBUG.
NOISY_LOGGERS = ("aiormq", "aio_pika", "httpx", "httpcore", "sqlalchemy.engine", "asyncio")

_EMPTY: Mapping[str, object] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, object]] = contextvars.ContextVar(
    "dispatcher_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)
_JSON_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc", "stack"})


# --------------------------------------------------------------------------- context


def bind(**fields: object) -> contextvars.Token[Mapping[str, object]]:
    """Add ``fields`` to the current context; pass the token to :func:`unbind` to undo."""
    merged = {**_context.get(), **fields}
    return _context.set(MappingProxyType(merged))


def unbind(token: contextvars.Token[Mapping[str, object]]) -> None:
    """Restore the context as it was before the :func:`bind` that returned ``token``."""
    _context.reset(token)


@contextlib.contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Within the block, every log record carries ``fields`` (nesting merges, inner wins)."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def current_context() -> dict[str, object]:
    """A copy of the fields bound in the current context."""
    return dict(_context.get())


# --------------------------------------------------------------------------- redaction

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secret_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Never let ``value`` (nor its URL-quoted form) appear in a log line. Empty is ignored."""
    global _secret_re
    if not value or not value.strip():
        return
    forms = {value, quote(value, safe=""), quote(value)}
    with _secrets_lock:
        if forms <= _secrets:
            return
        _secrets.update(forms)
        # Longest first, so a secret that contains another one is replaced whole.
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secret_re = re.compile("|".join(re.escape(s) for s in alternatives))


def register_settings_secrets(settings: Settings) -> None:
    """Register every password the settings hold (inline, from files or in URLs)."""
    for secret in (settings.database_password, settings.amqp_password):
        if secret is not None:
            register_secret(secret.get_secret_value())
    urls = [settings.database_url.get_secret_value(), *settings.amqp_urls]
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            register_secret(unquote(password))


def _clear_secrets() -> None:
    """For tests only."""
    global _secret_re
    with _secrets_lock:
        _secrets.clear()
        _secret_re = None


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _secret_re
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


# --------------------------------------------------------------------------- formatters


def _record_fields(record: logging.LogRecord) -> dict[str, object]:
    """Context fields bound when the record was handled, then the call's ``extra`` fields."""
    fields: dict[str, object] = dict(getattr(record, "_log_context", None) or _context.get())
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRS and not key.startswith("_"):
            fields[key] = value
    return fields


def _redact_value(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return redact(str(value))


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or any(c in text for c in ' "=\n\t\\'):
        return json.dumps(text, ensure_ascii=False)
    return text


class _ContextCapture(logging.Filter):
    """Snapshot the context onto the record when the handler receives it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "_log_context"):
            setattr(record, "_log_context", _context.get())  # noqa: B010
        return True


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00,123 INFO dispatcher.runtime.daemon: msg k=v k2=v2`` (+ traceback)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_text
        line = super().format(record)
        record.exc_text = saved  # do not leave our rendering cached on a shared record
        fields = _record_fields(record)
        if fields:
            suffix = " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
            head, sep, tail = line.partition("\n")
            line = f"{head} {suffix}{sep}{tail}"
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, fields, ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        doc: dict[str, object] = {
            "ts": ts,
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _record_fields(record).items():
            name = f"field_{key}" if key in _JSON_RESERVED else key
            doc[name] = _redact_value(value)
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            doc["exc"] = redact(record.exc_text)
        if record.stack_info:
            doc["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(doc, ensure_ascii=False, default=str)


# --------------------------------------------------------------------------- setup


class _StderrHandler(logging.StreamHandler[IO[str]]):
    """Writes to whatever ``sys.stderr`` is at emit time (unless a stream was given)."""

    def __init__(self, stream: IO[str] | None) -> None:
        super().__init__(stream if stream is not None else sys.stderr)
        self._follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self._follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


_HANDLER_NAME = "dispatcher-root"


def parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    text = level.strip().upper()
    if text.isdigit():
        return int(text)
    value = logging.getLevelNamesMapping().get(text)
    if value is None:
        raise ValueError(f"unknown log level {level!r}")
    return value


def setup_logging(
    level: str | int,
    fmt: Literal["text", "json"] = "text",
    *,
    stream: IO[str] | None = None,
) -> None:
    """Configure the root logger: one handler on stderr (or ``stream``), text or JSON.

    Calling it again replaces the handler it installed before. Library loggers in
    :data:`NOISY_LOGGERS` are held at WARNING unless ``level`` is DEBUG (or lower).
    """
    numeric = parse_level(level)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
    elif fmt == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r} (text or json)")

    handler = _StderrHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    handler.addFilter(_ContextCapture())
    # also on the handler: NOISY_LOGGERS carry a level of their own, which must not let
    # records below ``level`` through
    handler.setLevel(numeric)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)

    quiet = numeric > logging.DEBUG
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if quiet else logging.NOTSET)
    logging.captureWarnings(True)
