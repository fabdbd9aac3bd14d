"""Dead-letter tooling (CONTRACT §5.4): look at ``<queue>-dl`` without consuming it, and
send its messages back where they first came from."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from dispatcher.core.handling import (
    DL_RETRIES_HEADER,
    ERROR_HEADER,
    FAILED_AT_HEADER,
    ORIG_EXCHANGE_HEADER,
    ORIG_KEY_HEADER,
    QUEUE_HEADER,
    RETRIES_HEADER,
)
from dispatcher.pipeline.topology import EXCHANGE, QueueSpec, queues
from dispatcher.settings import Settings


class UnknownQueue(ValueError):
    pass


def resolve(settings: Settings, name: str) -> QueueSpec:
    for spec in queues(settings.prefix):
        if name in (spec.name, spec.dead_letter_queue):
            return spec
    names = ", ".join(s.name for s in queues(settings.prefix))
    raise UnknownQueue(f"unknown queue {name!r}; the queues are {names}")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    queue: str
    reason: str | None
    exchange: str
    routing_key: str
    failed_at: str | None
    body: str
    body_encoding: str
    headers: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "reason": self.reason,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "failed_at": self.failed_at,
            "body": self.body,
            "body_encoding": self.body_encoding,
            "headers": self.headers,
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def origin(message: AbstractIncomingMessage, spec: QueueSpec) -> tuple[str, str]:
    """Where a dead letter was first published: our headers, else the broker's x-death."""
    headers = message.headers or {}
    exchange, key = headers.get(ORIG_EXCHANGE_HEADER), headers.get(ORIG_KEY_HEADER)
    if isinstance(exchange, str) and isinstance(key, str) and key:
        return exchange, key
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        keys = death.get("routing-keys")
        ex = death.get("exchange")
        if isinstance(ex, str | bytes) and isinstance(keys, list) and keys:
            ex_s = ex.decode() if isinstance(ex, bytes) else ex
            k = keys[0].decode() if isinstance(keys[0], bytes) else str(keys[0])
            return ex_s, k
    return EXCHANGE, spec.routing_key


def _as_dead_letter(message: AbstractIncomingMessage, spec: QueueSpec) -> DeadLetter:
    headers = dict(message.headers or {})
    try:
        body, enc = message.body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        body, enc = base64.b64encode(message.body).decode(), "base64"
    exchange, key = origin(message, spec)
    reason = headers.get(ERROR_HEADER)
    failed = headers.get(FAILED_AT_HEADER)
    return DeadLetter(
        queue=spec.name,
        reason=reason.decode() if isinstance(reason, bytes) else reason,  # type: ignore[arg-type]
        exchange=exchange,
        routing_key=key,
        failed_at=failed if isinstance(failed, str) else None,
        body=body,
        body_encoding=enc,
        headers=_jsonable(headers),
    )


async def _connect(settings: Settings) -> AbstractConnection:
    last: Exception | None = None
    for url in settings.amqp_urls:
        try:
            return await aio_pika.connect(url, timeout=10)
        except Exception as exc:  # noqa: BLE001 - try the next broker
            last = exc
    raise ConnectionError(f"no broker reachable ({type(last).__name__})")


@contextlib.asynccontextmanager
async def _channel(settings: Settings) -> AsyncIterator[AbstractChannel]:
    conn = await _connect(settings)
    try:
        yield await conn.channel(publisher_confirms=True)
    finally:
        await conn.close()


class MissingQueue(LookupError):
    """The dead-letter queue is not on the broker: the daemon has not declared it yet, or
    the prefix or broker is not the daemon's."""


async def _dead_letter_queue(channel: AbstractChannel, spec: QueueSpec) -> AbstractQueue:
    try:
        return await channel.declare_queue(spec.dead_letter_queue, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        raise MissingQueue(
            f"no queue {spec.dead_letter_queue!r} on the broker"
            " (`dispatcher run` declares it at start; check DISPATCHER_PREFIX)"
        ) from None


async def inspect(settings: Settings, name: str, limit: int | None = None) -> list[DeadLetter]:
    """The queue's dead letters, oldest first. Nothing is removed: every message is fetched
    unacknowledged and returns to the queue when the channel closes."""
    spec = resolve(settings, name)
    out: list[DeadLetter] = []
    async with _channel(settings) as channel:
        queue = await _dead_letter_queue(channel, spec)
        while limit is None or len(out) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            out.append(_as_dead_letter(message, spec))
    return out


async def retry(settings: Settings, name: str | None = None) -> dict[str, int]:
    """Re-publish dead letters to their original exchange and routing key; ack each copy
    only after the broker confirmed the re-publication. Returns counts per queue."""
    specs = [resolve(settings, name)] if name else queues(settings.prefix)
    counts: dict[str, int] = {}
    async with _channel(settings) as channel:
        for spec in specs:
            queue = await _dead_letter_queue(channel, spec)
            pending = queue.declaration_result.message_count or 0
            done = 0
            # bounded by the depth seen at the start: a message that dies again is for later
            while done < pending:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                exchange_name, key = origin(message, spec)
                headers = {
                    k: v
                    for k, v in (message.headers or {}).items()
                    if k
                    not in (ERROR_HEADER, FAILED_AT_HEADER, QUEUE_HEADER, RETRIES_HEADER, "x-death")
                }
                previous = headers.get(DL_RETRIES_HEADER, 0)
                headers[DL_RETRIES_HEADER] = (previous if isinstance(previous, int) else 0) + 1
                exchange = (
                    channel.default_exchange
                    if exchange_name == ""
                    else await channel.get_exchange(exchange_name, ensure=False)
                )
                await exchange.publish(
                    aio_pika.Message(
                        body=message.body,
                        headers=headers,
                        content_type=message.content_type or "application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=message.message_id,
                    ),
                    routing_key=key,
                )
                await message.ack()
                done += 1
            counts[spec.name] = done
    return counts
