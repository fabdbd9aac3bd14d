"""``dispatcher progress-monitor``: rchar of the wrapped reader → ganeti-create-progress on
``ganeti.<prefix>.event.progress``; exit status passed through; the broker never fails it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dispatcher.core.messages import CreateProgress, parse
from dispatcher.eventd.progress_monitor import _Sampler, monitor, progress_message, read_io
from dispatcher.eventd.publisher import Outgoing
from tests.support import PYTHON, ROOT, async_wait_until, free_port, unique_prefix, until_true
from tests.test_eventd import bound_queue, collect_until, published_before_marker

MIB = 1024 * 1024


class ListSink:
    def __init__(self, room: bool = True) -> None:
        self.sent: list[Outgoing] = []
        self.room = room

    def has_room(self, n: int = 1) -> bool:
        return self.room

    def put(self, messages: Sequence[Outgoing]) -> None:
        self.sent.extend(messages)

    def values(self) -> list[float]:
        return [json.loads(m.body)["rprogress"] for m in self.sent]


@pytest.fixture(scope="module")
def amqp_url(service_env: dict[str, str]) -> str:
    return service_env["DISPATCHER_AMQP_URL"]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "disk.img"
    path.write_bytes(os.urandom(8 * MIB))
    return path


# Reads its file a MiB at a time; after each MiB it says so (its pid, on the "ready" FIFO)
# and waits for the test to let it go on (a byte on the "gate" FIFO).
GATED_READER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
gate, ready = os.open(sys.argv[2], os.O_RDONLY), os.open(sys.argv[3], os.O_WRONLY)
while os.read(fd, 1024 * 1024):
    os.write(ready, b"%d\\n" % os.getpid())
    os.read(gate, 1)
"""


def _env(amqp_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(DISPATCHER_AMQP_URL=amqp_url, DISPATCHER_HTTP_LISTEN="")
    return env


def _monitor_cmd(instance: str, size: int, *command: str, interval: float = 0.2) -> list[str]:
    return [
        PYTHON,
        "-m",
        "dispatcher",
        "progress-monitor",
        "-i",
        instance,
        "-r",
        str(size),
        "--interval",
        str(interval),
        "--publish-timeout",
        "2",
        "--",
        *command,
    ]


# --------------------------------------------------------------------------- pure


def test_read_io_and_messages(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "io").write_text(
        "rchar: 4194304\nwchar: 10\nsyscr: 3\nsyscw: 1\nread_bytes: 0\nwrite_bytes: 0\n"
        "cancelled_write_bytes: 0\n"
    )
    assert read_io(42, tmp_path) == {
        "rchar": 4194304,
        "wchar": 10,
        "syscr": 3,
        "syscw": 1,
        "read_bytes": 0,
        "write_bytes": 0,
        "cancelled_write_bytes": 0,
    }
    assert read_io(43, tmp_path) is None
    assert read_io(os.getpid())["rchar"] > 0  # type: ignore[index]
    body = progress_message("snf-7", [1795894896, 5], 50.0)
    msg = parse(json.dumps(body).encode())
    assert isinstance(msg, CreateProgress) and msg.rprogress == 50.0
    assert body == {
        "type": "ganeti-create-progress",
        "instance": "snf-7",
        "rprogress": 50.0,
        "event_time": [1795894896, 5],
    }


def test_sampler_rounds_skips_repeats_and_drops_when_full(tmp_path: Path) -> None:
    io = tmp_path / "7" / "io"
    io.parent.mkdir()
    sink = ListSink()
    sampler = _Sampler("t1-5", 3 * MIB, None, sink, lambda: 1795894896.25, tmp_path)
    for rchar in (MIB, MIB, 2 * MIB, 4 * MIB):
        io.write_text(f"rchar: {rchar}\nwchar: 0\n")
        sampler.sample(7)
    assert sink.values() == [33.33, 66.67, 133.33]  # unchanged skipped; may exceed 100
    assert {m.routing_key for m in sink.sent} == {"ganeti.t1.event.progress"}
    assert json.loads(sink.sent[0].body)["event_time"] == [1795894896, 250000]
    sink.room = False
    io.write_text(f"rchar: {5 * MIB}\n")
    sampler.sample(7)
    assert len(sink.sent) == 3
    sampler.final()  # the final one is never dropped
    assert sink.values()[-1] == 100.0
    (tmp_path / "8").mkdir()
    writes = ListSink()
    both = _Sampler("t1-5", MIB, 2 * MIB, writes, time.time, tmp_path)
    (tmp_path / "8" / "io").write_text(f"rchar: {MIB // 2}\nwchar: {MIB}\n")
    both.sample(8)
    both.final()
    bodies = [json.loads(m.body) for m in writes.sent]
    assert [(b["rprogress"], b["wprogress"]) for b in bodies] == [(50.0, 50.0), (100.0, 100.0)]


# --------------------------------------------------------------------------- in process


async def test_monitor_gated_reader_rising_then_100(image: Path, tmp_path: Path) -> None:
    gate_path, ready_path = tmp_path / "gate", tmp_path / "ready"
    os.mkfifo(gate_path)
    os.mkfifo(ready_path)
    # O_RDWR: opening a FIFO so never blocks (the loop runs the monitor meanwhile)
    gate = os.open(gate_path, os.O_RDWR)
    ready = os.open(ready_path, os.O_RDWR | os.O_NONBLOCK)
    sink = ListSink()
    reader = [sys.executable, "-c", GATED_READER, str(image), str(gate_path), str(ready_path)]
    task = asyncio.create_task(
        monitor(reader, instance="t9-1", read_bytes=8 * MIB, interval=0.05, sink=sink)
    )
    try:
        for chunk in range(1, 9):
            pid = int(await _ready_line(ready, task))
            # the reader is blocked on the gate: its rchar stays put until the monitor has
            # published the progress it shows
            io = read_io(pid)
            assert io is not None
            expected = round(io["rchar"] * 100 / (8 * MIB), 2)

            def shown(want: float = expected) -> bool:
                return sink.values()[-1:] == [want]

            await until_true(shown, what=f"the progress after MiB {chunk}")
            os.write(gate, b"g")
        rc = await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        os.close(gate)
        os.close(ready)
    assert rc == 0
    values = sink.values()
    assert len(values) >= 9, values  # one per MiB read, then the final 100
    assert values[:-1] == sorted(values[:-1]) and len(set(values[:-1])) == len(values) - 1
    assert values[-1] == 100.0
    for m in sink.sent:
        parse(m.body)


async def _ready_line(fd: int, task: asyncio.Task[int]) -> bytes:
    line = b""

    async def more() -> bool:
        nonlocal line
        assert not task.done(), "the monitor ended early"
        try:
            line += os.read(fd, 64)
        except BlockingIOError:
            pass
        return line.endswith(b"\n")

    await async_wait_until(more, 30, 0.01, "the reader to finish a MiB")
    return line.strip()


async def test_monitor_exit_status_and_no_final_on_failure() -> None:
    sink = ListSink()
    assert await monitor(["false"], instance="t9-1", read_bytes=1, interval=0.05, sink=sink) == 1
    assert (
        await monitor(
            ["sh", "-c", "exit 3"], instance="t9-1", read_bytes=1, interval=0.05, sink=sink
        )
        == 3
    )
    assert (
        await monitor(
            ["sh", "-c", "kill -KILL $$"], instance="t9-1", read_bytes=1, interval=0.05, sink=sink
        )
        == 128 + signal.SIGKILL
    )
    assert await monitor(["/nonexistent/reader"], instance="t9-1", read_bytes=1, sink=sink) == 127
    assert 100.0 not in sink.values()


# --------------------------------------------------------------- the command, real broker


async def test_progress_monitor_dd_against_the_broker(amqp_url: str, image: Path) -> None:
    prefix = unique_prefix()
    instance = f"{prefix}-7"
    async with bound_queue(amqp_url, f"ganeti.{prefix}.event.progress") as queue:
        # dd is the direct child; its output goes to a pipe the test drains a MiB at a time:
        # having taken k MiB, it waits for the progress of those k MiB before reading on
        # (dd, blocked on the full pipe, has read at least what the test took)
        proc = await asyncio.create_subprocess_exec(
            *_monitor_cmd(instance, 8 * MIB, "dd", f"if={image}", "bs=64k", "status=none"),
            env=_env(amqp_url),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        copied, mib = 0, 1
        got: list[tuple[str, dict[str, Any]]] = []
        while chunk := await proc.stdout.read(64 * 1024):
            copied += len(chunk)
            if mib < 8 and copied >= mib * MIB:

                def reached(b: dict[str, Any], k: int = mib) -> bool:
                    return b["rprogress"] >= 12.5 * k

                got += await collect_until(queue, reached)
                mib += 1
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert copied == 8 * MIB  # the wrapped command's output is untouched
        got += await collect_until(queue, lambda b: b["rprogress"] == 100.0)  # the last one
    bodies: list[dict[str, Any]] = [b for _, b in got]
    assert {b["type"] for b in bodies} == {"ganeti-create-progress"}
    assert {b["instance"] for b in bodies} == {instance}
    values = [b["rprogress"] for b in bodies]
    assert values[-1] == 100.0
    rising = values[:-1]
    assert len(set(rising)) >= 7, values  # at least one per MiB the test let through
    assert rising == sorted(rising) and 0 < rising[0] < 100, values
    times = [tuple(b["event_time"]) for b in bodies]
    assert times == sorted(times)


async def test_failing_command_exit_status_and_no_final(amqp_url: str) -> None:
    prefix = unique_prefix()
    async with bound_queue(amqp_url, f"ganeti.{prefix}.event.progress") as queue:
        for command, want in ((["false"], 1), (["sh", "-c", "exit 7"], 7)):
            run = await asyncio.to_thread(
                subprocess.run,
                _monitor_cmd(f"{prefix}-1", MIB, *command),
                env=_env(amqp_url),
                cwd=ROOT,
                capture_output=True,
                timeout=60,
            )
            assert run.returncode == want, run.stderr
        # no final 100 (and nothing read): a monitor waits for its confirms before exiting,
        # so anything it sent would be queued before this marker
        key = f"ganeti.{prefix}.event.progress"
        assert await published_before_marker(amqp_url, queue, key) == []


def test_broker_down_never_fails_the_command(tmp_path: Path) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    out = tmp_path / "out"
    start = time.monotonic()
    run = subprocess.run(
        _monitor_cmd("t1-1", 10, "sh", "-c", f"echo hello > {out}; sleep 0.5"),
        env=_env(dead),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert out.read_text() == "hello\n"
    assert "not delivered" in run.stderr
    assert time.monotonic() - start < 20


def test_signals_are_forwarded_to_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        _monitor_cmd("t1-1", 10, "sh", "-c", f"touch {marker}; exec sleep 30"),
        env=_env(f"amqp://guest:guest@127.0.0.1:{free_port()}/"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM


def test_usage_errors() -> None:
    env = _env("amqp://guest:guest@127.0.0.1:1/")
    for args in (
        ["-i", "t1-1", "-r", "10"],
        ["-i", "t1-1", "-r", "0", "--", "true"],
        ["-i", "", "-r", "10", "--", "true"],
    ):
        run = subprocess.run(
            [PYTHON, "-m", "dispatcher", "progress-monitor", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 2, (args, run.stderr)
