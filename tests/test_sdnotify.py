"""dispatcher.runtime.sdnotify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.runtime.sdnotify import Notifier, watchdog_interval, watchdog_loop, watchdog_task
from tests.support import until_true


def _recv(sock: socket.socket, timeout: float = 2.0) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


def _drain(sock: socket.socket) -> list[str]:
    sock.setblocking(False)
    out = []
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    return out


@pytest.fixture
def path_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    # A short directory: AF_UNIX paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="sdn", dir="/tmp") as d:
        path = str(Path(d) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        try:
            yield sock
        finally:
            sock.close()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    name = f"dispatcher-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    try:
        yield sock
    finally:
        sock.close()


def test_path_socket_messages(path_socket: socket.socket) -> None:
    with Notifier() as n:
        assert n.enabled
        assert n.ready()
        assert _recv(path_socket) == "READY=1"
        assert n.status("consuming 4 queues")
        assert _recv(path_socket) == "STATUS=consuming 4 queues"
        assert n.watchdog()
        assert _recv(path_socket) == "WATCHDOG=1"
        assert n.stopping()
        assert _recv(path_socket) == "STOPPING=1"


def test_abstract_socket_messages(abstract_socket: socket.socket) -> None:
    with Notifier() as n:
        assert n.ready(status="ready")
        assert _recv(abstract_socket) == "READY=1\nSTATUS=ready"
        assert n.stopping("draining")
        assert _recv(abstract_socket) == "STOPPING=1\nSTATUS=draining"
        assert n.watchdog()
        assert _recv(abstract_socket) == "WATCHDOG=1"


def test_status_is_one_line(path_socket: socket.socket) -> None:
    with Notifier() as n:
        n.status("database down\nretrying")
        assert _recv(path_socket) == "STATUS=database down retrying"
        n.notify("EXTEND_TIMEOUT_USEC=5000000")
        assert _recv(path_socket) == "EXTEND_TIMEOUT_USEC=5000000"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    n.close()


def test_explicit_socket_and_env_mapping(path_socket: socket.socket) -> None:
    path = path_socket.getsockname()
    with Notifier(env={"NOTIFY_SOCKET": path}) as n:
        n.ready()
        assert _recv(path_socket) == "READY=1"
    assert Notifier(env={}).enabled is False


def test_unreachable_socket_does_not_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/dir/notify")
    with Notifier() as n:
        assert n.enabled
        assert n.ready() is False
        assert n.watchdog() is False


def test_unsupported_address_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert Notifier().enabled is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "500000"}, 0.5),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_watchdog_interval_reads_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 2.0


class SteppedClock:
    """The watchdog loop's ``sleep``: it records each delay asked for and returns only when
    the test calls :meth:`step`, so the tests count steps, not real seconds."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._due: asyncio.Future[None] | None = None

    async def __call__(self, delay: float) -> None:
        self.asked.append(delay)
        self._due = asyncio.get_running_loop().create_future()
        await self._due

    def step(self) -> None:
        assert self._due is not None and not self._due.done(), "the loop is not sleeping"
        self._due.set_result(None)

    async def sleeping(self, times: int) -> None:
        """Until the loop has gone to sleep for the ``times``-th time."""
        await until_true(lambda: len(self.asked) >= times, 10, what=f"sleep #{times}")
        assert len(self.asked) == times


async def test_watchdog_loop_pings_at_half_interval(path_socket: socket.socket) -> None:
    clock = SteppedClock()
    with Notifier() as n:
        task = asyncio.create_task(watchdog_loop(n, 0.2, sleep=clock))
        for i in range(1, 6):
            await clock.sleeping(i)
            # a datagram is queued on the receiving socket by the sendto itself
            assert _drain(path_socket) == ["WATCHDOG=1"]  # one ping per period, no more
            clock.step()
        await clock.sleeping(6)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert _drain(path_socket) == ["WATCHDOG=1"]
    assert clock.asked == [0.1] * 6  # half the interval each time


async def test_stuck_loop_stops_the_pings(path_socket: socket.socket) -> None:
    clock = SteppedClock()
    with Notifier() as n:
        task = asyncio.create_task(watchdog_loop(n, 0.1, sleep=clock))
        await clock.sleeping(1)
        assert _drain(path_socket) == ["WATCHDOG=1"]
        clock.step()  # the next ping is due ...
        time.sleep(0.05)  # ... but the loop is stuck in a blocking call (the fault itself)
        assert _drain(path_socket) == []
        await clock.sleeping(2)  # the loop runs again: the overdue ping goes out
        assert _drain(path_socket) == ["WATCHDOG=1"]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_watchdog_loop_rejects_bad_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        await watchdog_loop(Notifier(env={}), 0)


async def test_watchdog_task_runs_only_under_a_watchdog(
    path_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    with Notifier() as n:
        async with watchdog_task(n) as task:
            assert task is None

        monkeypatch.setenv("WATCHDOG_USEC", "100000")
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        clock = SteppedClock()
        async with watchdog_task(n, sleep=clock) as task:
            assert task is not None
            await clock.sleeping(1)
            clock.step()
            await clock.sleeping(2)
        assert task.cancelled()
        assert clock.asked == [0.05, 0.05]  # WATCHDOG_USEC / 2
        assert _drain(path_socket) == ["WATCHDOG=1", "WATCHDOG=1"]
        # stopped with the block: a later datagram is the next thing the socket gets
        n.status("after the block")
        assert _recv(path_socket) == "STATUS=after the block"

    async with watchdog_task(Notifier(env={}), 1.0) as task:
        assert task is None  # nothing to notify
