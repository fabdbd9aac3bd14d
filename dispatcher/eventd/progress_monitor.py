"""``dispatcher progress-monitor``: snf-progress-monitor for Python 3 (reference §c.3).

Runs COMMAND (stdin, stdout and stderr inherited) and, every ``interval`` seconds, reads
``rchar`` (and ``wchar``) from ``/proc/<pid>/io`` of that child, publishing
``ganeti-create-progress`` ``{"type", "instance", "rprogress": round(rchar*100/BYTES, 2),
"event_time"}`` to ``ganeti.<prefix>.event.progress`` whenever the value changed. When the
command exits 0 a final ``rprogress: 100.0`` follows; on any other exit nothing more. The
monitor exits with the command's status (128+N when a signal N ended it) and forwards
SIGTERM, SIGINT and SIGHUP to it.

The counted process is the direct child: make COMMAND the reader itself (``dd``, ``cat``,
or ``sh -c 'exec dd ...'``). Its children's reads are added to it by the kernel only when
they exit, which is how snf-progress-monitor behaved too.

The broker never fails the command: publishing goes through the non-blocking
:class:`~dispatcher.eventd.publisher.Publisher`; when it is down, samples are buffered (a
bounded number; beyond it samples are dropped, as any later sample supersedes them, but the
final 100 is always queued), and at exit
the monitor waits at most ``publish_timeout`` seconds for the confirms, then logs what was
not delivered and exits with the command's status anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from dispatcher.eventd.jobfile import routing_prefix
from dispatcher.eventd.publisher import Outgoing
from dispatcher.pipeline.topology import routing_key_for

__all__ = ["ProgressSink", "monitor", "progress_message", "read_io"]

log = logging.getLogger(__name__)

TYPE = "ganeti-create-progress"
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ProgressSink(Protocol):
    def has_room(self, n: int = 1) -> bool: ...
    def put(self, messages: Sequence[Outgoing]) -> None: ...


def read_io(pid: int, proc_root: Path = Path("/proc")) -> dict[str, int] | None:
    """The counters of ``/proc/<pid>/io`` (``rchar``, ``wchar``, ...), or None if unreadable."""
    try:
        text = (proc_root / str(pid) / "io").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    counters = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and value.strip().isdigit():
            counters[key.strip()] = int(value.strip())
    return counters


def _now(clock: Callable[[], float]) -> list[int]:
    t = clock()
    sec = int(t)
    return [sec, min(999_999, round((t - sec) * 1_000_000))]


def progress_message(
    instance: str,
    event_time: list[int],
    rprogress: float,
    wprogress: float | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": TYPE,
        "instance": instance,
        "rprogress": rprogress,
        "event_time": event_time,
    }
    if wprogress is not None:
        body["wprogress"] = wprogress
    return body


def _outgoing(body: dict[str, Any]) -> Outgoing:
    key = routing_key_for(routing_prefix(body["instance"]), TYPE)
    return Outgoing(key, json.dumps(body, separators=(",", ":")).encode(), TYPE)


class _Sampler:
    """Turns ``/proc/<pid>/io`` readings into messages, skipping unchanged values."""

    def __init__(
        self,
        instance: str,
        read_bytes: int,
        write_bytes: int | None,
        sink: ProgressSink,
        clock: Callable[[], float],
        proc_root: Path,
    ) -> None:
        self.instance = instance
        self.read_bytes = read_bytes
        self.write_bytes = write_bytes
        self.sink = sink
        self.clock = clock
        self.proc_root = proc_root
        self.last: tuple[float, float | None] | None = None
        self.full_warned = False

    def sample(self, pid: int) -> None:
        counters = read_io(pid, self.proc_root)
        if counters is None or "rchar" not in counters:
            return
        rprog = round(counters["rchar"] * 100 / self.read_bytes, 2)
        wprog = None
        if self.write_bytes:
            wprog = round(counters.get("wchar", 0) * 100 / self.write_bytes, 2)
        if (rprog, wprog) == self.last:
            return
        self.last = (rprog, wprog)
        if not self.sink.has_room(1):
            if not self.full_warned:
                log.warning("broker unreachable: progress messages are being dropped")
                self.full_warned = True
            return
        body = progress_message(self.instance, _now(self.clock), rprog, wprog)
        self.sink.put([_outgoing(body)])

    def final(self) -> None:
        full = 100.0 if self.write_bytes else None
        self.sink.put([_outgoing(progress_message(self.instance, _now(self.clock), 100.0, full))])


async def monitor(
    command: Sequence[str],
    *,
    instance: str,
    read_bytes: int,
    write_bytes: int | None = None,
    interval: float = 3.0,
    sink: ProgressSink,
    clock: Callable[[], float] = time.time,
    proc_root: Path = Path("/proc"),
) -> int:
    """Run ``command`` and report its progress to ``sink``; return its exit status."""
    try:
        proc = await asyncio.create_subprocess_exec(*command)
    except FileNotFoundError:
        log.error("cannot run %s: command not found", command[0])
        return 127
    except OSError as exc:
        log.error("cannot run %s: %s", command[0], exc.strerror or exc)
        return 126
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        if proc.returncode is None:
            log.info("forwarding %s to %s (pid %d)", sig.name, command[0], proc.pid)
            proc.send_signal(sig)

    for sig in _FORWARDED:
        loop.add_signal_handler(sig, forward, sig)
    sampler = _Sampler(instance, read_bytes, write_bytes, sink, clock, proc_root)
    try:
        waiter = asyncio.create_task(proc.wait())
        while not (await asyncio.wait({waiter}, timeout=interval))[0]:
            sampler.sample(proc.pid)
        rc = waiter.result()
    finally:
        for sig in _FORWARDED:
            loop.remove_signal_handler(sig)
    if rc == 0:
        sampler.final()
        return 0
    log.info("%s exited with status %d: no final progress", command[0], rc)
    return rc if rc > 0 else 128 - rc
