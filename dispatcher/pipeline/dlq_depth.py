"""Samples the depth of the dead-letter queues into ``dispatcher_dead_letter_messages``.

A passive declare on a channel of its own: if a queue is missing the broker closes that
channel, never the one the consumer acks on."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aio_pika.abc import AbstractConnection

from dispatcher import metrics
from dispatcher.pipeline.topology import QueueSpec

log = logging.getLogger(__name__)


async def sample_forever(conn: AbstractConnection, specs: list[QueueSpec], period: float) -> None:
    while True:
        await sample_once(conn, specs)
        await asyncio.sleep(period)


async def sample_once(conn: AbstractConnection, specs: list[QueueSpec]) -> None:
    channel = await conn.channel(publisher_confirms=False)
    try:
        for spec in specs:
            queue = await channel.declare_queue(spec.dead_letter_queue, passive=True)
            depth = queue.declaration_result.message_count or 0
            metrics.DEAD_LETTER_DEPTH.labels(spec.name).set(depth)
    except Exception as exc:  # noqa: BLE001 - a sample missed is not worth a reconnect
        log.debug("dead-letter depth not sampled: %s", exc)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
