"""The consumer's own reconnect decision, for a failure the real broker shows only by chance:
when a broker node dies, an ack on its channel may fail with ``ChannelInvalidStateError`` (a
``RuntimeError``) before aio-pika marks the connection closed. Found by the 3-node cluster
test (``kill -9`` of a node); here the session is made to fail that way on demand."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import pytest

from dispatcher.pipeline.consumer import Consumer
from dispatcher.pipeline.processor import Processor
from dispatcher.settings import Settings


class OpenConnection:
    """A connection that does not yet know it is dead."""

    is_closed = False

    async def close(self) -> None:
        return None


class EmptyStore:
    async def apply(self, items: Any) -> list[Any]:
        return []


async def test_a_dead_channel_on_an_open_connection_is_a_reconnect_not_an_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stop = asyncio.Event()
    sessions: list[int] = []

    async def session(self: Consumer, conn: Any, stop_: asyncio.Event) -> None:
        sessions.append(1)
        if len(sessions) == 1:
            raise aiormq.exceptions.ChannelInvalidStateError("<Channel: '1'> closed")
        stop.set()  # the second session: the consumer came back by itself

    monkeypatch.setattr(Consumer, "_session", session)
    connects: list[str] = []

    async def connect(url: str, **_: Any) -> OpenConnection:
        connects.append(url)
        return OpenConnection()

    settings = Settings(amqp_url="amqp://a.invalid/,amqp://b.invalid/", http_listen="")
    processor = Processor(EmptyStore(), max_retries=1, retry_max_delay=0.01)
    consumer = Consumer(settings, processor, connect=connect)
    await asyncio.wait_for(consumer.run(stop), 30)
    assert len(sessions) == 2
    assert connects == ["amqp://a.invalid/", "amqp://b.invalid/"]  # failed over to the next
    assert consumer.state.reconnects == 1
