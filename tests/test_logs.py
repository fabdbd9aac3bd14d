"""dispatcher.logs: JSON/text lines, context fields, quiet libraries, secret redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from dispatcher import logs
from dispatcher.logs import (
    bind,
    current_context,
    log_context,
    register_secret,
    register_settings_secrets,
    setup_logging,
    unbind,
)

SECRET = "s3cr3t-Pa55/word"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_level = root.level
    saved_handlers = list(root.handlers)
    saved_noisy = {n: logging.getLogger(n).level for n in logs.NOISY_LOGGERS}
    yield
    for h in list(root.handlers):
        if h not in saved_handlers:
            root.removeHandler(h)
    root.setLevel(saved_level)
    for name, level in saved_noisy.items():
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(False)
    logs._clear_secrets()


def _json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def _setup(fmt: str = "json", level: str = "INFO") -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level, fmt, stream=stream)  # type: ignore[arg-type]
    return stream


def test_json_line_has_the_standard_fields() -> None:
    stream = _setup("json")
    logging.getLogger("dispatcher.test").info("hello %s", "world")
    [doc] = _json_lines(stream)
    assert doc["level"] == "INFO"
    assert doc["logger"] == "dispatcher.test"
    assert doc["msg"] == "hello world"
    ts = datetime.fromisoformat(str(doc["ts"]))
    assert ts.utcoffset() is not None and ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert abs((datetime.now(UTC) - ts).total_seconds()) < 60
    assert "exc" not in doc


def test_json_one_object_per_line_even_with_newlines_in_message() -> None:
    stream = _setup("json")
    logging.getLogger("x").warning("line one\nline two")
    assert len(stream.getvalue().splitlines()) == 1
    assert _json_lines(stream)[0]["msg"] == "line one\nline two"


def test_context_fields_are_added_and_removed() -> None:
    stream = _setup("json")
    log = logging.getLogger("dispatcher.pipeline.consumer")
    with log_context(queue="snf-events-op", type="ganeti-op-status"):
        log.info("outer")
        with log_context(instance="snf-42", job_id=17):
            log.info("inner", extra={"outcome": "applied"})
        log.info("outer again")
    log.info("outside")
    outer, inner, again, outside = _json_lines(stream)
    assert outer["queue"] == "snf-events-op" and outer["type"] == "ganeti-op-status"
    assert "instance" not in outer
    assert inner["instance"] == "snf-42" and inner["job_id"] == 17
    assert inner["queue"] == "snf-events-op"
    assert inner["outcome"] == "applied"
    assert "instance" not in again and again["queue"] == "snf-events-op"
    assert "queue" not in outside and "outcome" not in outside


def test_bind_and_unbind() -> None:
    token = bind(network="snf-net-3")
    try:
        assert current_context() == {"network": "snf-net-3"}
    finally:
        unbind(token)
    assert current_context() == {}


def test_context_field_cannot_replace_the_standard_keys() -> None:
    stream = _setup("json")
    with log_context(msg="sneaky", level="nope"):
        logging.getLogger("x").info("real")
    [doc] = _json_lines(stream)
    assert doc["msg"] == "real" and doc["level"] == "INFO"
    assert doc["field_msg"] == "sneaky" and doc["field_level"] == "nope"


async def test_context_is_per_task() -> None:
    stream = _setup("json")
    log = logging.getLogger("x")

    both_inside = asyncio.Barrier(2)

    async def handle(instance: str) -> None:
        with log_context(instance=instance):
            await both_inside.wait()  # each logs while the other's context is open too
            log.info("handled")

    await asyncio.gather(handle("snf-1"), handle("snf-2"))
    assert sorted(d["instance"] for d in _json_lines(stream)) == ["snf-1", "snf-2"]  # type: ignore[type-var]


def test_json_exception_is_an_exc_string() -> None:
    stream = _setup("json")
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        logging.getLogger("x").exception("failed")
    [doc] = _json_lines(stream)
    assert doc["msg"] == "failed" and doc["level"] == "ERROR"
    assert isinstance(doc["exc"], str)
    assert "Traceback" in doc["exc"] and "RuntimeError: kaput" in doc["exc"]


def test_text_format_has_k_v_suffix() -> None:
    stream = _setup("text")
    with log_context(queue="snf-events-op", instance="a b"):
        logging.getLogger("dispatcher.x").info("handled", extra={"outcome": "applied"})
    line = stream.getvalue().strip()
    assert " INFO dispatcher.x: handled " in line
    assert line.endswith('queue=snf-events-op instance="a b" outcome=applied')


def test_text_format_exception_after_the_fields() -> None:
    stream = _setup("text")
    with log_context(job_id=5):
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("x").exception("oops")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("oops job_id=5")
    assert rest[0].startswith("Traceback") and rest[-1] == "ValueError: bad"


def test_noisy_libraries_quiet_unless_debug() -> None:
    stream = _setup("json", "INFO")
    for name in ("aiormq", "aio_pika", "httpx", "httpcore", "sqlalchemy.engine", "asyncio"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.WARNING
    logging.getLogger("aiormq.connection").info("chatter")
    logging.getLogger("aiormq.connection").warning("important")
    assert [d["msg"] for d in _json_lines(stream)] == ["important"]

    stream = _setup("json", "debug")
    assert logging.getLogger().level == logging.DEBUG
    logging.getLogger("aiormq.connection").debug("details")
    assert [d["msg"] for d in _json_lines(stream)] == ["details"]


def test_setup_twice_keeps_one_handler() -> None:
    _setup("json")
    stream = _setup("text")
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "dispatcher-root"]
    assert len(ours) == 1
    logging.getLogger("x").warning("once")
    assert stream.getvalue().count("once") == 1


def test_bad_level_or_format() -> None:
    with pytest.raises(ValueError, match="level"):
        setup_logging("LOUD", "text")
    with pytest.raises(ValueError, match="format"):
        setup_logging("INFO", "xml")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_registered_secret_is_redacted_everywhere(fmt: str) -> None:
    stream = _setup(fmt)
    register_secret(SECRET)
    log = logging.getLogger("x")
    log.info(f"in the message {SECRET}")
    log.info("in the args %s and %r", SECRET, {"password": SECRET})
    with log_context(url=f"amqp://u:{SECRET}@h/"):
        log.info("in the context")
    log.info("in extra", extra={"dsn": f"postgresql://u:{SECRET}@db/x"})
    try:
        raise ConnectionError(f"login failed with {SECRET}")
    except ConnectionError:
        log.exception("in the exception")
    out = stream.getvalue()
    assert SECRET not in out
    assert out.count("***") >= 6
    if fmt == "json":
        docs = _json_lines(stream)
        assert docs[0]["msg"] == "in the message ***"
        assert docs[1]["msg"] == "in the args *** and {'password': '***'}"
        assert docs[2]["url"] == "amqp://u:***@h/"
        assert docs[3]["dsn"] == "postgresql://u:***@db/x"
        assert "ConnectionError: login failed with ***" in str(docs[4]["exc"])


def test_url_quoted_secret_is_redacted() -> None:
    stream = _setup("json")
    register_secret("p@ss:w/rd")
    logging.getLogger("x").info("url amqp://u:p%40ss%3Aw%2Frd@h/ raw p@ss:w/rd")
    [doc] = _json_lines(stream)
    assert doc["msg"] == "url amqp://u:***@h/ raw ***"


def test_empty_secret_is_ignored() -> None:
    stream = _setup("json")
    register_secret("")
    register_secret("   ")
    logging.getLogger("x").info("nothing to hide")
    assert _json_lines(stream)[0]["msg"] == "nothing to hide"


def test_register_settings_secrets() -> None:
    from dispatcher.settings import Settings

    settings = Settings(
        database_url="postgresql+asyncpg://d:db%2Fpw@db/dispatcher",
        amqp_url="amqp://a:amqp-one@r1/,amqp://a:amqp-two@r2/",
    )
    register_settings_secrets(settings)
    stream = _setup("json")
    logging.getLogger("x").info("%s %s %s", "db/pw", "amqp-one", "amqp-two")
    assert _json_lines(stream)[0]["msg"] == "*** *** ***"


def test_register_settings_secrets_from_password_field() -> None:
    from dispatcher.settings import Settings

    settings = Settings(
        database_url="postgresql+asyncpg://d@db/dispatcher",
        database_password="from-the-file",
    )
    register_settings_secrets(settings)
    stream = _setup("text")
    logging.getLogger("x").info("pw=from-the-file")
    assert "from-the-file" not in stream.getvalue()
