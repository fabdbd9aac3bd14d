"""The broker connection both sides keep: the daemon's consumer and eventd's publisher.

:class:`BrokerLink` tries the comma-separated URLs in turn with back-off until one answers,
runs a session on the connection, and after any broker failure starts over with the next
URL. A session ends by returning (a graceful stop) or by raising: a broker failure is
logged and reconnected; anything else is the caller's (``fatal``) or a bug, and propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

from dispatcher.oneline import one_line
from dispatcher.settings import redact_url

log = logging.getLogger(__name__)

# A channel that died with its connection (a broker node killed) is reported as
# ChannelInvalidStateError, a RuntimeError, sometimes before the connection says it is closed.
BROKER_ERRORS: Final = (
    OSError,
    TimeoutError,
    aio_pika.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
)

Session = Callable[[str, AbstractConnection], Awaitable[None]]


def reraise_cancellation() -> None:
    """Raise CancelledError if our task is being cancelled: aiormq turns a cancelled connect
    or publish into a connection error, which must not make a stop wait for ever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def is_broker_failure(exc: BaseException, conn: AbstractConnection) -> bool:
    # an ack or publish on a channel that just died fails with whatever type the client
    # raises; once the connection is gone, it is a broker failure all the same
    return isinstance(exc, BROKER_ERRORS) or conn.is_closed


class BrokerLink:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        connection_name: str,
        connect: Callable[..., Any] = aio_pika.connect,
        max_delay: float = 10.0,
        warn_every: float = 0.0,
        describe_waiting: Callable[[], str] = lambda: "",
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        if not urls:
            raise ValueError("no broker URL")
        self.urls = list(urls)
        self.connection_name = connection_name
        self.max_delay = max_delay
        # an unreachable broker is said at WARNING at most this often, DEBUG in between
        self.warn_every = warn_every
        self._connect = connect
        self._describe_waiting = describe_waiting
        self._on_reconnect = on_reconnect
        self.reconnects = 0  # connections after the first one

    async def run(
        self,
        session: Session,
        *,
        stop: asyncio.Event | None = None,
        fatal: tuple[type[BaseException], ...] = (),
        resilient: bool = False,
    ) -> None:
        """Connect and run ``session`` until it returns or ``stop`` is set; reconnect after a
        broker failure. A ``fatal`` exception propagates, and so does any other that is no
        broker failure unless ``resilient`` (a surprise from the client library is then
        logged with its traceback and reconnected all the same)."""
        attempt, delay = 0, 0.5
        failures, last_warning = 0, -float("inf")
        ever_connected = False
        while stop is None or not stop.is_set():
            url = self.urls[attempt % len(self.urls)]
            attempt += 1
            try:
                conn = await self._connect(
                    url, timeout=10, client_properties={"connection_name": self.connection_name}
                )
            except BROKER_ERRORS as exc:
                reraise_cancellation()
                failures += 1
                now = time.monotonic()
                waiting = self._describe_waiting()
                if now - last_warning >= self.warn_every:
                    last_warning = now
                    more = f" ({failures} failed attempts so far)" if failures > 1 else ""
                    log.warning(
                        "broker %s unreachable: %s%s%s",
                        redact_url(url),
                        one_line(exc),
                        f"; {waiting}" if waiting else "",
                        more,
                    )
                else:
                    log.debug("broker %s unreachable: %s", redact_url(url), one_line(exc))
                if await _stopped(stop, delay):
                    return
                delay = min(delay * 2, self.max_delay)
                continue
            if ever_connected:
                self.reconnects += 1
                self._on_reconnect()
            ever_connected = True
            delay, failures, last_warning = 0.5, 0, -float("inf")
            try:
                await session(url, conn)
                return
            except fatal:
                raise
            except Exception as exc:
                reraise_cancellation()
                if is_broker_failure(exc, conn):
                    waiting = self._describe_waiting()
                    log.warning(
                        "broker connection lost: %s%s",
                        one_line(exc),
                        f"; {waiting}, to be re-sent" if waiting else "",
                    )
                elif resilient:
                    log.exception("unexpected error on the broker connection; reconnecting")
                    if await _stopped(stop, delay):
                        return
                else:
                    raise
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()


async def _stopped(stop: asyncio.Event | None, delay: float) -> bool:
    """Sleep ``delay`` seconds, or less if ``stop`` is set meanwhile; True if it is."""
    if stop is None:
        await asyncio.sleep(delay)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
    return stop.is_set()
