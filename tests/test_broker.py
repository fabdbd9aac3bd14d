"""dispatcher.broker and dispatcher.oneline: the connection loop both broker clients share.

The real broker paths (an outage, a killed node, fail-over) are covered by test_faults,
test_consumer_reconnect, test_eventd and test_rabbitmq_cluster; these fakes make the error
paths a real broker cannot produce on demand: a cancellation that the client library turns
into a connection error, and a surprise exception from a session."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dispatcher.broker import BrokerLink
from dispatcher.oneline import one_line


def test_one_line() -> None:
    assert one_line(ValueError("a\n  b\tc")) == "ValueError: a b c"
    assert one_line(ValueError("a\nb"), kind=False) == "a b"
    assert one_line(TimeoutError()) == "TimeoutError"
    assert one_line(TimeoutError(), kind=False) == "TimeoutError"
    long = one_line("x " * 300, 20)
    assert long == "x x x x x x x x x..." and len(long) == 20
    assert one_line("short", 20) == "short"


class FakeConnection:
    def __init__(self) -> None:
        self.is_closed = False
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1
        self.is_closed = True


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_urls_are_tried_in_turn_and_a_broker_failure_reconnects() -> None:
    tried: list[str] = []
    conns: list[FakeConnection] = []

    async def connect(url: str, **_: Any) -> FakeConnection:
        tried.append(url)
        if url == "amqp://down/":
            raise ConnectionRefusedError("refused")
        conn = FakeConnection()
        conns.append(conn)
        return conn

    stop = asyncio.Event()
    sessions = 0
    reconnects: list[int] = []

    async def session(url: str, conn: Any) -> None:
        nonlocal sessions
        sessions += 1
        if sessions == 1:
            raise ConnectionResetError("broker went away")
        stop.set()

    link = BrokerLink(
        ["amqp://down/", "amqp://up/"],
        connection_name="t",
        connect=connect,
        max_delay=0.01,
        on_reconnect=lambda: reconnects.append(1),
    )
    await asyncio.wait_for(link.run(session, stop=stop), 10)
    assert tried == ["amqp://down/", "amqp://up/", "amqp://down/", "amqp://up/"]
    assert sessions == 2 and link.reconnects == 1 and reconnects == [1]
    assert [c.closes for c in conns] == [1, 1]


async def test_a_cancellation_turned_into_a_connection_error_still_cancels() -> None:
    connecting = asyncio.Event()

    async def connect(url: str, **_: Any) -> FakeConnection:
        connecting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            # what aiormq does with a cancelled connect
            raise ConnectionError("connection cancelled") from None
        raise AssertionError("unreachable")

    async def session(url: str, conn: Any) -> None:
        raise AssertionError("never connected")

    link = BrokerLink(["amqp://x/"], connection_name="t", connect=connect, max_delay=0.01)
    task = asyncio.create_task(link.run(session, stop=asyncio.Event()))
    await asyncio.wait_for(connecting.wait(), 10)
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    assert task.cancelled()


async def test_a_surprise_propagates_unless_resilient() -> None:
    async def connect(url: str, **_: Any) -> FakeConnection:
        return FakeConnection()

    class Surprise(Exception):
        pass

    async def session(url: str, conn: Any) -> None:
        raise Surprise("a bug")

    link = BrokerLink(["amqp://x/"], connection_name="t", connect=connect, max_delay=0.01)
    with pytest.raises(Surprise):
        await asyncio.wait_for(link.run(session, stop=asyncio.Event()), 10)

    stop = asyncio.Event()
    calls = 0

    async def flaky(url: str, conn: Any) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise Surprise("from the client library")
        stop.set()

    await asyncio.wait_for(link.run(flaky, stop=stop, resilient=True), 10)
    assert calls == 3


async def test_fatal_errors_are_not_retried() -> None:
    async def connect(url: str, **_: Any) -> FakeConnection:
        return FakeConnection()

    async def session(url: str, conn: Any) -> None:
        raise ConnectionAbortedError("fatal here")

    link = BrokerLink(["amqp://x/"], connection_name="t", connect=connect, max_delay=0.01)
    with pytest.raises(ConnectionAbortedError):
        await asyncio.wait_for(link.run(session, fatal=(ConnectionAbortedError,)), 10)


async def test_stop_during_back_off_returns_at_once() -> None:
    attempts = 0

    async def connect(url: str, **_: Any) -> FakeConnection:
        nonlocal attempts
        attempts += 1
        raise OSError("unreachable")

    async def session(url: str, conn: Any) -> None:
        raise AssertionError("never connected")

    stop = asyncio.Event()
    link = BrokerLink(["amqp://x/"], connection_name="t", connect=connect, max_delay=3600)
    task = asyncio.create_task(link.run(session, stop=stop))
    await _until(lambda: attempts >= 1)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert attempts >= 1
