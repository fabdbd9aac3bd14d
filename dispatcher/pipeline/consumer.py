"""The AMQP side of the daemon: connect (failing over between broker URLs), declare the
topology, consume the four queues into one buffer, hand batches to the ``Processor`` and
carry out its decisions. Acks go out only after the batch's transaction has committed and
its dead letters and retries have been confirmed by the broker.

All four queues share one channel, and batches are handled one after the other, so every
delivery tag up to the last one of a batch belongs to that batch or an earlier one: a single
``multiple=True`` ack settles the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
)
from aiormq.abc import DeliveredMessage

from dispatcher import metrics
from dispatcher.broker import BrokerLink
from dispatcher.core.handling import (
    ERROR_HEADER,
    FAILED_AT_HEADER,
    ORIG_EXCHANGE_HEADER,
    ORIG_KEY_HEADER,
    QUEUE_HEADER,
    RETRIES_HEADER,
    Outcome,
)
from dispatcher.core.heartbeat import Heartbeat, parse_heartbeat
from dispatcher.core.messages import InvalidMessage
from dispatcher.db.errors import DbProblem
from dispatcher.logs import log_context
from dispatcher.oneline import one_line
from dispatcher.pipeline import dlq_depth
from dispatcher.pipeline.processor import Decision, Delivery, Processor
from dispatcher.pipeline.topology import (
    DL_EXCHANGE,
    EXCHANGE,
    QueueSpec,
    TopologyError,
    declare,
    declare_heartbeat,
    queues,
)
from dispatcher.settings import Settings, redact_url

log = logging.getLogger(__name__)

_STOP = object()


@dataclass
class ConsumerState:
    broker_connected: bool = False
    consuming: bool = False
    db_problem: DbProblem | None = None  # why the batch in hand is held, if it is
    reconnects: int = 0
    on_consuming: list[Callable[[], None]] = field(default_factory=list)


class Consumer:
    def __init__(
        self,
        settings: Settings,
        processor: Processor,
        *,
        state: ConsumerState | None = None,
        connect: Callable[..., Any] = aio_pika.connect,
        on_heartbeat: Callable[[Heartbeat], Awaitable[object]] | None = None,
    ) -> None:
        self._settings = settings
        self._processor = processor
        self._on_heartbeat = on_heartbeat
        self.state = state or ConsumerState()
        self._specs = queues(settings.prefix)
        self._link = BrokerLink(
            settings.amqp_urls,
            connection_name="ganeti-dispatcher",
            connect=connect,
            on_reconnect=self._reconnected,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; reconnect by itself after any broker failure."""

        async def session(url: str, conn: AbstractConnection) -> None:
            log.info("connected to broker %s", redact_url(url))
            try:
                await self._session(conn, stop)
            finally:
                self._set_connected(False)

        try:
            await self._link.run(session, stop=stop, fatal=(TopologyError,))
        finally:
            await self._processor.close()

    def _reconnected(self) -> None:
        self.state.reconnects += 1
        metrics.AMQP_RECONNECTS.inc()

    def _set_connected(self, up: bool) -> None:
        self.state.broker_connected = up
        self.state.consuming = up and self.state.consuming
        metrics.AMQP_CONNECTED.set(1 if up else 0)
        metrics.CONSUMING.set(1 if self.state.consuming else 0)

    async def _session(self, conn: AbstractConnection, stop: asyncio.Event) -> None:
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def _on_close(*_: Any) -> None:
            if not closed.done():
                closed.set_result(None)

        conn.close_callbacks.add(_on_close)
        channel = await conn.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=self._settings.prefetch)
        live = await declare(channel, self._settings)
        dl_exchange = await channel.get_exchange(DL_EXCHANGE, ensure=False)
        self._set_connected(True)
        buffer: asyncio.Queue[Any] = asyncio.Queue()
        # Deliveries are taken from the underlying aiormq channel as they arrive: wrapping
        # each in aio-pika's IncomingMessage (and a second task per message) cost about a
        # tenth of the daemon's CPU per message; nothing here needs more than the frame.
        underlay = await channel.get_underlay_channel()
        tags: list[str] = []
        for spec in self._specs:
            queue = live[spec.name]

            async def on_message(message: DeliveredMessage, spec: QueueSpec = spec) -> None:
                buffer.put_nowait((spec, message))

            ok = await underlay.basic_consume(queue.name, on_message, no_ack=False)
            assert ok.consumer_tag is not None
            tags.append(ok.consumer_tag)
        if self._on_heartbeat is not None:
            await self._consume_heartbeats(conn)
        self.state.consuming = True
        metrics.CONSUMING.set(1)
        for cb in self.state.on_consuming:
            cb()
        worker = asyncio.create_task(self._work(buffer, channel, dl_exchange, stop))
        sampler = asyncio.create_task(dlq_depth.sample_forever(conn, self._specs, 15.0))
        stop_wait = asyncio.create_task(stop.wait())
        try:
            waiters: set[asyncio.Future[None]] = {worker, stop_wait, closed}  # type: ignore[arg-type]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if worker.done():
                worker.result()  # a bug in the worker: let it propagate
            if closed.done():
                raise ConnectionError("broker closed the connection")
            # graceful stop: take no more, finish what was delivered, then close
            self.state.consuming = False
            metrics.CONSUMING.set(0)
            for tag in tags:
                with contextlib.suppress(Exception):
                    await underlay.basic_cancel(tag)
            buffer.put_nowait(_STOP)
            done, _ = await asyncio.wait({worker}, timeout=self._settings.shutdown_grace)
            if not done:
                log.warning("shutdown grace elapsed; unfinished messages go back to the queue")
        finally:
            stop_wait.cancel()
            sampler.cancel()
            if not worker.done():
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
            self.state.consuming = False
            metrics.CONSUMING.set(0)

    async def _consume_heartbeats(self, conn: AbstractConnection) -> None:
        """On a channel of its own, unacknowledged: the event channel's ``multiple=True``
        acks must cover only event deliveries, and a lost heartbeat costs nothing."""
        assert self._on_heartbeat is not None
        record = self._on_heartbeat
        channel = await conn.channel(publisher_confirms=False)
        queue = await declare_heartbeat(channel, self._settings)

        async def on_heartbeat(message: AbstractIncomingMessage) -> None:
            try:
                await record(parse_heartbeat(message.body))
            except InvalidMessage as exc:
                log.warning("heartbeat dropped: %s", exc.reason)
            except Exception as exc:  # noqa: BLE001 - the next heartbeat tries again
                log.warning("heartbeat not recorded: %s", one_line(exc))

        await queue.consume(on_heartbeat, no_ack=True)

    async def _work(
        self,
        buffer: asyncio.Queue[Any],
        channel: AbstractChannel,
        dl_exchange: AbstractExchange,
        stop: asyncio.Event,
    ) -> None:
        limit = self._settings.batch_size
        wait = self._settings.batch_wait
        while True:
            item = await buffer.get()
            if item is _STOP:
                return
            if wait and buffer.qsize() < limit - 1:
                # let the first message wait a little for company: at a steady rate, fewer
                # and fuller transactions cost less CPU (and fewer commits) per message
                await asyncio.sleep(wait)
            batch = [item]
            finishing = False
            while len(batch) < limit and not buffer.empty():
                nxt = buffer.get_nowait()
                if nxt is _STOP:
                    finishing = True
                    break
                batch.append(nxt)
            await self._handle(batch, channel, dl_exchange)
            if finishing:
                return

    async def _handle(
        self,
        batch: list[tuple[QueueSpec, DeliveredMessage]],
        channel: AbstractChannel,
        dl_exchange: AbstractExchange,
    ) -> None:
        started = time.perf_counter()
        deliveries = [Delivery(spec, m.body, _headers(m)) for spec, m in batch]
        decisions = await self._processor.handle(deliveries)
        for (spec, message), decision in zip(batch, decisions, strict=True):
            if decision.outcome is Outcome.DEAD_LETTER:
                await self._dead_letter(dl_exchange, spec, message, decision.reason)
            elif decision.outcome is Outcome.RETRY:
                await self._requeue(channel, spec, message, decision.reason)
        last = batch[-1][1]
        assert last.delivery_tag is not None
        await last.channel.basic_ack(last.delivery_tag, multiple=True)
        elapsed = time.perf_counter() - started
        metrics.PROCESSING_SECONDS.observe(elapsed)
        metrics.BATCH_SIZE.observe(len(batch))
        self._account(batch, decisions)

    def _account(
        self, batch: list[tuple[QueueSpec, DeliveredMessage]], decisions: list[Decision]
    ) -> None:
        # one counter increment per (queue, outcome) and batch; a log record (and its
        # context) is built only for the messages whose level is enabled: applied and
        # duplicate messages log at DEBUG, and building their context for nothing cost
        # more than the history insert of the batch
        counts: dict[tuple[str, str], int] = defaultdict(int)
        now = time.time()
        debug = log.isEnabledFor(logging.DEBUG)
        info = log.isEnabledFor(logging.INFO)
        for (spec, _), d in zip(batch, decisions, strict=True):
            counts[(spec.name, d.outcome.value)] += 1
            msg = d.message
            if d.outcome is Outcome.APPLIED and msg is not None:
                metrics.EVENT_LAG.observe(max(0.0, now - msg.event_time_us / 1e6))
            if d.outcome in (Outcome.DEAD_LETTER, Outcome.RETRY):
                level = logging.WARNING
            elif d.outcome is Outcome.IGNORED:
                if not info:
                    continue
                level = logging.INFO
            elif debug:
                level = logging.DEBUG
            else:
                continue
            fields: dict[str, Any] = {"queue": spec.name, "outcome": d.outcome.value}
            if msg is not None:
                fields["type"] = msg.type
                fields["instance" if hasattr(msg, "instance") else "network"] = getattr(
                    msg, "instance", getattr(msg, "network", None)
                )
                if (job := getattr(msg, "jobId", None)) is not None:
                    fields["job_id"] = job
            with log_context(**fields):
                if level == logging.WARNING:
                    log.warning("message %s: %s", d.outcome.value, d.reason)
                elif level == logging.INFO:
                    log.info("message ignored: %s", d.reason)
                else:
                    log.debug("message %s", d.outcome.value)
        for (queue, outcome), n in counts.items():
            metrics.MESSAGES.labels(queue, outcome).inc(n)

    async def _dead_letter(
        self,
        dl_exchange: AbstractExchange,
        spec: QueueSpec,
        message: DeliveredMessage,
        reason: str,
    ) -> None:
        headers = _origin_headers(message)
        headers.update(
            {
                ERROR_HEADER: reason,
                QUEUE_HEADER: spec.name,
                FAILED_AT_HEADER: datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        await dl_exchange.publish(_copy(message, headers), routing_key=spec.routing_key)

    async def _requeue(
        self,
        channel: AbstractChannel,
        spec: QueueSpec,
        message: DeliveredMessage,
        reason: str,
    ) -> None:
        headers = _origin_headers(message)
        tries = headers.get(RETRIES_HEADER, 0)
        headers[RETRIES_HEADER] = (tries if isinstance(tries, int) else 0) + 1
        headers[ERROR_HEADER] = reason
        # straight back to the same queue through the default exchange
        await channel.default_exchange.publish(_copy(message, headers), routing_key=spec.name)


def _headers(message: DeliveredMessage) -> dict[str, Any]:
    return dict(message.header.properties.headers or {})


def _origin_headers(message: DeliveredMessage) -> dict[str, Any]:
    headers = _headers(message)
    headers.setdefault(ORIG_EXCHANGE_HEADER, message.exchange or EXCHANGE)
    headers.setdefault(ORIG_KEY_HEADER, message.routing_key or "")
    return headers


def _copy(message: DeliveredMessage, headers: dict[str, Any]) -> aio_pika.Message:
    props = message.header.properties
    return aio_pika.Message(
        body=message.body,
        headers=headers,
        content_type=props.content_type or "application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=props.message_id,
        timestamp=props.timestamp,
    )
