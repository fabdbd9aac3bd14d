"""Publishing to the ``ganeti`` exchange without ever blocking the caller.

:meth:`Publisher.put` appends to an in-memory buffer and returns at once; a background task
connects (trying the comma-separated URLs in turn, with backoff), declares the exchange,
publishes persistent JSON messages with publisher confirms, up to ``window`` unconfirmed at a
time, and counts a message as sent only when the broker confirmed it. When the connection
is lost, every message not yet confirmed goes back to the front of the buffer, in order, and
is re-sent after the reconnect: delivery is at least once, duplicates are possible and the
consumer is built for them.

The buffer is bounded by ``capacity`` (messages buffered plus unconfirmed). Callers ask
:meth:`has_room` first and, when there is none, keep what they would have sent in a cheaper
form and :meth:`wait_room` (eventd remembers the job ids and re-reads the job files later:
the newest status of every job still arrives, only intermediate ones are skipped). ``put``
itself never refuses, so a caller that cannot wait (the progress monitor) drops instead and
says so.

Only the exchange is declared, as snf-ganeti-eventd did: the queues, their type and their
prefixes belong to the consuming deployments (one cluster may serve several, told apart by
the name prefix in the routing key), and a queue declared here with nobody consuming it
would grow for ever.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection, AbstractExchange
from prometheus_client import Counter, Gauge

from dispatcher import metrics
from dispatcher.broker import BrokerLink
from dispatcher.oneline import one_line
from dispatcher.pipeline.topology import EXCHANGE
from dispatcher.settings import redact_url

__all__ = ["ExchangeConflict", "Outgoing", "Publisher"]

log = logging.getLogger(__name__)

PENDING = Gauge(
    "dispatcher_eventd_pending_messages",
    "Messages eventd holds for the broker: buffered or sent and not yet confirmed",
    registry=metrics.REGISTRY,
)
BROKER_CONNECTED = Gauge(
    "dispatcher_eventd_broker_connected",
    "1 while eventd's broker connection is up",
    registry=metrics.REGISTRY,
)
DROPPED = Counter(
    "dispatcher_eventd_dropped_messages",
    "Messages eventd gave up on, by reason (refused by the broker, unconfirmed at exit)",
    ["reason"],
    registry=metrics.REGISTRY,
)

_seq = itertools.count()


class ExchangeConflict(RuntimeError):
    """The exchange exists with other properties: a deployment error, not retried."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    routing_key: str
    body: bytes
    type: str
    seq: int = field(default_factory=lambda: next(_seq), compare=False)


class Publisher:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        capacity: int = 10_000,
        window: int = 128,
        connection_name: str = "ganeti-dispatcher-eventd",
        connect: Callable[..., Any] = aio_pika.connect,
        max_delay: float = 10.0,
        nack_attempts: int = 5,
        warn_every: float = 60.0,
    ) -> None:
        if capacity < 1 or window < 1:
            raise ValueError("capacity and window must be positive")
        self._link = BrokerLink(
            urls,
            connection_name=connection_name,
            connect=connect,
            max_delay=max_delay,
            warn_every=warn_every,
            describe_waiting=lambda: f"{self.pending} messages waiting" if self.pending else "",
        )
        self.capacity = capacity
        self.low_water = capacity // 2
        self.window = window
        self.nack_attempts = nack_attempts
        self._buffer: deque[Outgoing] = deque()
        self._inflight: dict[int, Outgoing] = {}
        self._nacks: dict[int, int] = {}
        self._wakeup = asyncio.Event()
        self._room = asyncio.Event()
        self._idle = asyncio.Event()
        self._room.set()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.confirmed = 0

    @property
    def reconnects(self) -> int:
        return self._link.reconnects

    # ------------------------------------------------------------------ caller side

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._inflight)

    def has_room(self, n: int = 1) -> bool:
        """True if ``n`` more messages fit (always, once below the low-water mark)."""
        return self.pending + n <= self.capacity or self.pending <= self.low_water

    def put(self, messages: Sequence[Outgoing]) -> None:
        """Queue ``messages`` for publishing. Never blocks, never refuses."""
        if not messages:
            return
        self._buffer.extend(messages)
        self._changed()
        self._wakeup.set()

    async def wait_room(self) -> None:
        """Return once the buffer is down to the low-water mark."""
        await self._room.wait()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="eventd-publisher")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def drain(self, within: float | None) -> bool:
        """Wait until every message is confirmed; False after ``within`` seconds or on a
        fatal error."""
        if self._idle.is_set():
            return True
        idle = asyncio.create_task(self._idle.wait())
        waiters: set[asyncio.Future[Any]] = {idle}
        if self._task is not None:
            waiters.add(self._task)
        try:
            await asyncio.wait(waiters, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        finally:
            idle.cancel()
        return self._idle.is_set()

    async def close(self, grace: float = 0.0) -> int:
        """Flush for up to ``grace`` seconds, stop, and return how many messages were lost."""
        if grace > 0 and self.pending:
            await self.drain(grace)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)
            if not self._task.done():
                log.error("the publisher task did not stop within 5 s; leaving it behind")
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.exception()  # retrieved: no "exception was never retrieved" warning
        lost = self.pending
        if lost:
            DROPPED.labels("unconfirmed_at_exit").inc(lost)
        return lost

    # ------------------------------------------------------------------ bookkeeping

    def _changed(self) -> None:
        pending = self.pending
        PENDING.set(pending)
        if pending == 0:
            self._idle.set()
        else:
            self._idle.clear()
        if pending <= self.low_water:
            self._room.set()
        else:
            self._room.clear()

    def _requeue_inflight(self) -> None:
        if self._inflight:
            back = sorted(self._inflight.values(), key=lambda m: m.seq)
            self._inflight.clear()
            self._buffer.extendleft(reversed(back))
            self._changed()

    def _set_connected(self, up: bool) -> None:
        if self.connected != up:
            self.connected = up
            BROKER_CONNECTED.set(1 if up else 0)

    # ------------------------------------------------------------------ broker side

    async def _run(self) -> None:
        await self._link.run(self._connected, fatal=(ExchangeConflict,), resilient=True)

    async def _connected(self, url: str, conn: AbstractConnection) -> None:
        try:
            await self._session(conn, url)
        finally:
            # every message not confirmed goes back to the front, in order, to be re-sent
            self._requeue_inflight()
            self._set_connected(False)

    async def _session(self, conn: AbstractConnection, url: str) -> None:
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_close(*_: Any) -> None:
            if not closed.done():
                closed.set_result(None)

        conn.close_callbacks.add(on_close)
        channel = await conn.channel(publisher_confirms=True)
        try:
            exchange = await channel.declare_exchange(
                EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ExchangeConflict(
                f"exchange {EXCHANGE!r} exists with other properties "
                f"({one_line(exc, kind=False)}); it must be a durable topic exchange"
            ) from None
        self._set_connected(True)
        log.info(
            "connected to broker %s%s",
            redact_url(url),
            f"; sending {self.pending} waiting messages" if self.pending else "",
        )
        tasks: dict[asyncio.Task[Any], Outgoing] = {}
        wake: asyncio.Task[Any] | None = None
        try:
            while True:
                while self._buffer and len(tasks) < self.window:
                    msg = self._buffer.popleft()
                    self._inflight[msg.seq] = msg
                    tasks[asyncio.create_task(self._publish(exchange, msg))] = msg
                if wake is None or wake.done():
                    self._wakeup.clear()
                    wake = asyncio.create_task(self._wakeup.wait())
                waiters: set[asyncio.Future[Any]] = {*tasks, wake, closed}
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                failure: BaseException | None = None
                for task in done:
                    msg_done = tasks.pop(task, None) if isinstance(task, asyncio.Task) else None
                    if msg_done is None:
                        continue
                    # aiormq cancels the confirmation futures when the connection drops
                    error = (
                        ConnectionError("publish cancelled: connection lost")
                        if task.cancelled()
                        else task.exception()
                    )
                    if error is None:
                        self._confirmed(msg_done)
                    elif isinstance(error, aio_pika.exceptions.DeliveryError):
                        self._refused(msg_done, error)
                    else:
                        failure = failure or error
                self._changed()
                if failure is not None:
                    raise failure
                if closed.done():
                    raise ConnectionError("broker closed the connection")
        finally:
            for task in (*tasks, *([wake] if wake else [])):
                task.cancel()
            await asyncio.gather(*tasks, *([wake] if wake else []), return_exceptions=True)

    async def _publish(self, exchange: AbstractExchange, msg: Outgoing) -> None:
        await exchange.publish(
            aio_pika.Message(
                msg.body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            msg.routing_key,
            mandatory=False,  # unroutable = another deployment's prefix: the broker drops it
        )

    def _confirmed(self, msg: Outgoing) -> None:
        self._inflight.pop(msg.seq, None)
        self._nacks.pop(msg.seq, None)
        self.confirmed += 1
        metrics.EVENTD_PUBLISHED.labels(msg.type).inc()

    def _refused(self, msg: Outgoing, exc: BaseException) -> None:
        self._inflight.pop(msg.seq, None)
        count = self._nacks.get(msg.seq, 0) + 1
        if count >= self.nack_attempts:
            self._nacks.pop(msg.seq, None)
            DROPPED.labels("refused").inc()
            log.error(
                "broker refused a %s message to %s %d times (%s); dropping it",
                msg.type,
                msg.routing_key,
                count,
                one_line(exc, kind=False),
            )
            return
        self._nacks[msg.seq] = count
        log.warning(
            "broker refused a %s message (%s); re-sending", msg.type, one_line(exc, kind=False)
        )
        self._buffer.appendleft(msg)
