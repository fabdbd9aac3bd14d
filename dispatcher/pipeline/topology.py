"""The AMQP topology of CONTRACT §3, as data, and its idempotent declaration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractQueue

from dispatcher.core import heartbeat
from dispatcher.core.kinds import STREAMS
from dispatcher.oneline import one_line
from dispatcher.settings import QueueType, Settings

EXCHANGE: Final = "ganeti"
DL_EXCHANGE: Final = "ganeti-dl"


class TopologyError(RuntimeError):
    """The broker holds a queue or exchange that conflicts with ours. Not retried."""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    routing_key: str
    accepts: frozenset[str]

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.name}-dl"


def queues(prefix: str) -> list[QueueSpec]:
    return [
        QueueSpec(f"{prefix}-events-{stream}", f"ganeti.{prefix}.event.{stream}", accepts)
        for stream, accepts in STREAMS.items()
    ]


def routing_key_for(prefix: str, message_type: str) -> str:
    for stream, accepts in STREAMS.items():
        if message_type in accepts:
            return f"ganeti.{prefix}.event.{stream}"
    raise KeyError(message_type)


def _args(queue_type: QueueType, *, dead_letter: bool) -> dict[str, Any]:
    args: dict[str, Any] = {}
    if dead_letter:
        args["x-dead-letter-exchange"] = DL_EXCHANGE
    # classic is the broker's default: leaving the argument out keeps us equivalent to the
    # queues an existing Synnefo installation declared without it
    if queue_type is QueueType.QUORUM:
        args["x-queue-type"] = "quorum"
    return args


async def declare(channel: AbstractChannel, settings: Settings) -> dict[str, AbstractQueue]:
    """Declare exchanges, queues, dead-letter twins and bindings; return the live queues."""
    other = "classic" if settings.queue_type is QueueType.QUORUM else "quorum"
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    dl_exchange = await channel.declare_exchange(
        DL_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    live: dict[str, AbstractQueue] = {}
    for spec in queues(settings.prefix):
        for name, args, ex in (
            (spec.name, _args(settings.queue_type, dead_letter=True), exchange),
            (spec.dead_letter_queue, _args(settings.queue_type, dead_letter=False), dl_exchange),
        ):
            try:
                queue = await channel.declare_queue(name, durable=True, arguments=args)
            except aiormq.exceptions.ChannelPreconditionFailed as exc:
                raise TopologyError(
                    f"queue {name!r} already exists with other arguments "
                    f"({one_line(exc, kind=False)}); "
                    f"set DISPATCHER_QUEUE_TYPE={other} if it is a {other} queue, "
                    "or remove the queue yourself"
                ) from None
            await queue.bind(ex, routing_key=spec.routing_key)
            if name == spec.name:
                live[name] = queue
    return live


async def declare_heartbeat(channel: AbstractChannel, settings: Settings) -> AbstractQueue:
    """The deployment's heartbeat queue (see :mod:`dispatcher.core.heartbeat`): bounded, since
    only the newest heartbeat of each cluster matters."""
    exchange = await channel.declare_exchange(EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    name = heartbeat.queue_name(settings.prefix)
    args = _args(settings.queue_type, dead_letter=False)
    args["x-max-length"] = heartbeat.QUEUE_MAX_LENGTH
    args["x-message-ttl"] = heartbeat.QUEUE_MESSAGE_TTL_MS
    try:
        queue = await channel.declare_queue(name, durable=True, arguments=args)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyError(
            f"queue {name!r} already exists with other arguments ({one_line(exc, kind=False)}); "
            "remove the queue yourself (it holds only heartbeats)"
        ) from None
    await queue.bind(exchange, routing_key=heartbeat.ROUTING_KEY)
    return queue
