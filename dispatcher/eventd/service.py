"""``dispatcher eventd``: the composition. Watch the Ganeti job queue directory, turn every
job file change into messages, publish them.

Flow: inotify (``IN_MOVED_TO``/``IN_CLOSE_WRITE`` on ``job-<id>``) only records *which* job
changed, in an ordered set; one worker takes jobs from that set, reads the file as it is now,
builds the messages (:mod:`.jobfile`), drops those already published, adds NICs where they
belong (:mod:`.nics`) and hands the rest to the publisher. Ganeti rewriting a file six times
in a burst therefore costs at most six reads, usually fewer; a status that lived only between
two reads is skipped, as with snf-ganeti-eventd.

- **Catch-up**: the watch is set up first, then every ``job-<id>`` already in the directory
  is queued, so nothing falls between the two. On a restart this re-publishes the current
  status of every job still in the queue: duplicates, which the consumer absorbs.
- **Dedupe**: ``(job id, op index, status)`` is published once per process. Memory is
  bounded: at most ``dedupe_jobs`` jobs (least recently changed forgotten first), a finished
  job is forgotten ``dedupe_ttl`` seconds after it finished, and an archived or deleted job
  at once. Forgetting too early only costs a duplicate.
- **Broker down**: the publisher buffers up to ``buffer_size`` messages. Beyond that the worker
  stops reading files and just remembers job ids (a few bytes each, bounded by the queue
  directory itself), warns once, and re-reads those files when there is room again (from
  ``archive/`` if Ganeti archived one meanwhile): the latest status of every job is published,
  only intermediate ones can be skipped, memory stays bounded, and inotify is always drained.
- **Master only**: checked (one ``stat``) before each job is read; a node that becomes master
  re-scans the queue.
- **Stop** (SIGTERM/SIGINT): stop watching, give the publisher ``shutdown_grace`` seconds to
  get the outstanding confirms, exit 0. Whatever was not confirmed is still in the job files
  and is re-published by the next start's catch-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import Gauge

from dispatcher import metrics
from dispatcher.core.heartbeat import ROUTING_KEY as HEARTBEAT_KEY
from dispatcher.core.heartbeat import TYPE as HEARTBEAT_TYPE
from dispatcher.core.heartbeat import heartbeat_body
from dispatcher.core.messages import InvalidMessage, parse
from dispatcher.eventd.inotify import (
    IN_CLOSE_WRITE,
    IN_DELETE,
    IN_MOVED_FROM,
    IN_MOVED_TO,
    DirectoryWatcher,
    InotifyEvent,
)
from dispatcher.eventd.jobfile import (
    FINALIZED,
    JobEvent,
    JobFileError,
    events_from_job,
    job_id_from_filename,
    job_status,
    load_job,
)
from dispatcher.eventd.master import MasterCheck
from dispatcher.eventd.nics import NicReader
from dispatcher.eventd.publisher import Outgoing, Publisher
from dispatcher.runtime.health import HealthServer
from dispatcher.runtime.sdnotify import Notifier, watchdog_task
from dispatcher.runtime.signals import stop_on_signals

__all__ = ["Dedupe", "EventService", "EventdOptions", "Sink", "run_eventd"]

log = logging.getLogger(__name__)

WATCH_MASK = IN_MOVED_TO | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_DELETE
_MAX_ROUTING_KEY = 255

DEFERRED = Gauge(
    "dispatcher_eventd_deferred_jobs",
    "Changed jobs eventd has not read yet because the publish buffer is full",
    registry=metrics.REGISTRY,
)
REMEMBERED = Gauge(
    "dispatcher_eventd_dedupe_jobs",
    "Jobs eventd remembers for deduplication",
    registry=metrics.REGISTRY,
)


class Sink(Protocol):
    """Where messages go (the :class:`Publisher`, or a test double)."""

    def has_room(self, n: int = 1) -> bool: ...
    def put(self, messages: Sequence[Outgoing]) -> None: ...
    async def wait_room(self) -> None: ...


# --------------------------------------------------------------------------- dedupe


class Dedupe:
    """Which ``(op index, status)`` of which job was published; bounded as described above."""

    def __init__(
        self,
        max_jobs: int = 10_000,
        ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_jobs = max_jobs
        self.ttl = ttl
        self._clock = clock
        self._jobs: OrderedDict[int, set[tuple[int, str]]] = OrderedDict()
        self._finished: dict[int, float] = {}
        self._expiry: deque[tuple[float, int]] = deque()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def fresh(self, events: Iterable[JobEvent]) -> list[JobEvent]:
        self._expire()
        out = []
        for ev in events:
            seen = self._jobs.get(ev.job_id)
            if seen is None or (ev.op_index, ev.status) not in seen:
                out.append(ev)
        return out

    def mark(self, job_id: int, keys: Iterable[tuple[int, str]], *, finished: bool) -> None:
        seen = self._jobs.setdefault(job_id, set())
        seen.update(keys)
        self._jobs.move_to_end(job_id)
        if finished and job_id not in self._finished:
            deadline = self._clock() + self.ttl
            self._finished[job_id] = deadline
            self._expiry.append((deadline, job_id))
        while len(self._jobs) > self.max_jobs:
            old, _ = self._jobs.popitem(last=False)
            self._finished.pop(old, None)
        self._expire()
        REMEMBERED.set(len(self._jobs))

    def forget(self, job_id: int) -> None:
        self._jobs.pop(job_id, None)
        self._finished.pop(job_id, None)
        REMEMBERED.set(len(self._jobs))

    def _expire(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            deadline, job_id = self._expiry.popleft()
            if self._finished.get(job_id) == deadline:
                self.forget(job_id)
        # entries of forgotten jobs linger in the deque until their deadline: bound it too
        if len(self._expiry) > 2 * self.max_jobs:
            self._expiry = deque((d, j) for d, j in self._expiry if self._finished.get(j) == d)


# --------------------------------------------------------------------------- the worker


def _mtime(st: os.stat_result) -> list[int]:
    ns = st.st_mtime_ns
    return [ns // 1_000_000_000, (ns // 1000) % 1_000_000]


class EventService:
    """Job ids in, messages out. Single worker (:meth:`run`); callbacks from the loop."""

    def __init__(
        self,
        queue_dir: Path,
        cluster: str,
        sink: Sink,
        *,
        nics: NicReader | None = None,
        master: MasterCheck | None = None,
        dedupe: Dedupe | None = None,
    ) -> None:
        self.queue_dir = Path(queue_dir)
        self.cluster = cluster
        self.sink = sink
        self.nics = nics
        self.master = master
        self.dedupe = dedupe or Dedupe()
        self._dirty: dict[int, None] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._deferring = False
        self._was_master: bool | None = None
        self.watch_lost = asyncio.Event()
        self.watching = False
        self.queued = 0  # messages handed to the sink
        # job changes dealt with (published, nothing new, unreadable, or not the master):
        # what a caller waits on to know a change it made to the directory has been seen
        self.handled = 0

    # -- inputs (called on the loop; never block) ---------------------------------------

    def notice(self, job_id: int) -> None:
        self._dirty[job_id] = None
        if self._deferring:
            DEFERRED.set(len(self._dirty))
        self._idle.clear()
        self._wake.set()

    def on_inotify(self, event: InotifyEvent) -> None:
        if event.overflow:
            log.warning("inotify event queue overflowed: re-reading the whole queue directory")
            self.rescan()
            return
        if event.watch_gone:
            log.error("the queue directory %s was removed or moved away", self.queue_dir)
            self.watch_lost.set()
            return
        job_id = job_id_from_filename(event.name)
        if job_id is None:
            return
        if event.mask & (IN_MOVED_TO | IN_CLOSE_WRITE):
            self.notice(job_id)
        elif job_id not in self._dirty:  # archived or deleted: no more changes will come
            self.dedupe.forget(job_id)

    def rescan(self) -> int:
        """Queue every job file in the directory; return how many."""
        try:
            names = os.listdir(self.queue_dir)
        except OSError as exc:
            log.error("cannot list %s: %s", self.queue_dir, exc.strerror)
            return 0
        ids = sorted(i for i in map(job_id_from_filename, names) if i is not None)
        for job_id in ids:
            self.notice(job_id)
        return len(ids)

    @property
    def backlog(self) -> int:
        """Jobs noticed and not handled yet (deferred ones included)."""
        return len(self._dirty)

    async def settle(self) -> None:
        """Wait until every noticed job has been handled (or deferred for lack of room)."""
        await self._idle.wait()

    # -- the worker ---------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                job_id = next(iter(self._dirty))
                del self._dirty[job_id]
                try:
                    done = await self._handle(job_id)
                except Exception:  # a bug must not stop the producer; the next change retries
                    log.exception("failed to handle job %d", job_id)
                    done = True
                if done:
                    self.handled += 1
                else:
                    self._dirty[job_id] = None
                    self._start_deferring()
                    self._idle.set()  # nothing more can happen until there is room
                    await self.sink.wait_room()
                    self._idle.clear()
                    self._stop_deferring()
            self._idle.set()

    def _start_deferring(self) -> None:
        DEFERRED.set(len(self._dirty))
        if not self._deferring:
            self._deferring = True
            log.warning(
                "publish buffer full (broker down or slow): job changes are being remembered "
                "and their files will be re-read once messages get through; %d jobs waiting",
                len(self._dirty),
            )

    def _stop_deferring(self) -> None:
        if self._deferring:
            self._deferring = False
            log.info("publish buffer has room again: re-reading %d job files", len(self._dirty))
        DEFERRED.set(0)

    def check_master(self) -> bool:
        if self.master is None:
            return True
        now = self.master.is_master()
        if now != self._was_master:
            if now:
                log.info("this node is the master (%s): publishing", self.master.master)
                if self._was_master is False:
                    self.rescan()
            else:
                log.info(
                    "this node is not the master (master: %s): not publishing",
                    self.master.master or "unknown",
                )
            self._was_master = now
        return now

    def _read(self, job_id: int) -> tuple[bytes, list[int], bool] | None:
        """The file's bytes, its mtime, and whether it came from the archive."""
        name = f"job-{job_id}"
        for path, archived in (
            (self.queue_dir / name, False),
            (self.queue_dir / "archive" / str(job_id // 10000) / name, True),
        ):
            try:
                with open(path, "rb") as fh:
                    return fh.read(), _mtime(os.fstat(fh.fileno())), archived
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cannot read %s: %s", path, exc.strerror)
                return None
        return None

    async def _handle(self, job_id: int) -> bool:
        """Publish what is new in job ``job_id``. False: no room, try again later."""
        if not self.check_master():
            return True
        read = self._read(job_id)
        if read is None:
            self.dedupe.forget(job_id)
            return True
        data, mtime, _archived = read
        try:
            job = load_job(data)
            events = events_from_job(job, cluster=self.cluster, fallback_time=mtime, job_id=job_id)
        except JobFileError as exc:
            log.warning("skipping job file %s: %s", f"job-{job_id}", exc)
            return True
        fresh = self.dedupe.fresh(events)
        if fresh:
            if not self.sink.has_room(len(fresh)):
                return False
            out = [m for m in [await self._message(ev) for ev in fresh] if m is not None]
            self.sink.put(out)
            self.queued += len(out)
            self.dedupe.mark(
                job_id,
                [(ev.op_index, ev.status) for ev in fresh],
                finished=job_status(job) in FINALIZED,
            )
        # an archived job is forgotten when its IN_MOVED_FROM arrives (see on_inotify), not
        # here: events about it may still be queued, and would re-publish it
        return True

    async def _message(self, ev: JobEvent) -> Outgoing | None:
        body = dict(ev.body)
        if ev.wants_nics and self.nics is not None:
            nics = await self.nics.read(ev.name)
            if nics is not None:
                body["instance_nics"] = nics
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        key = ev.routing_key
        try:
            parse(raw)
        except InvalidMessage as exc:
            log.error("not publishing job %d op %d: %s", ev.job_id, ev.op_index, exc.reason)
            return None
        if len(key.encode()) > _MAX_ROUTING_KEY:
            log.warning("not publishing job %d op %d: name too long", ev.job_id, ev.op_index)
            return None
        log.debug(
            "job %d op %d %s %s %s -> %s",
            ev.job_id,
            ev.op_index,
            body["operation"],
            ev.name,
            ev.status,
            key,
        )
        return Outgoing(key, raw, ev.type)


# --------------------------------------------------------------------------- the command


@dataclass
class EventdOptions:
    queue_dir: Path
    cluster: str
    master: MasterCheck | None = None
    nics: NicReader | None = None
    buffer_size: int = 10_000
    dedupe_jobs: int = 10_000
    dedupe_ttl: float = 3600.0
    master_poll: float = 10.0
    heartbeat_interval: int = 0  # seconds; 0: no heartbeat (the command sets 30)
    node_name: str | None = None
    once: bool = False
    once_timeout: float = 60.0
    http_listen: str = ""
    shutdown_grace: float = 10.0
    amqp_urls: list[str] = field(default_factory=list)


class EventdFailed(RuntimeError):
    """eventd cannot go on (one line for the operator): exit 1."""


async def run_eventd(
    opts: EventdOptions,
    *,
    sink: Sink | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[EventService], None] | None = None,
) -> int:
    """Run until ``stop`` (or SIGTERM/SIGINT); with ``opts.once``, publish what is there and
    return. ``sink`` replaces the broker publisher (tests)."""
    stop = stop or asyncio.Event()
    notifier = Notifier()
    publisher: Publisher | None = None
    if sink is None:
        publisher = Publisher(opts.amqp_urls, capacity=opts.buffer_size)
        sink = publisher
    service = EventService(
        opts.queue_dir,
        opts.cluster,
        sink,
        nics=opts.nics,
        master=opts.master,
        dedupe=Dedupe(opts.dedupe_jobs, opts.dedupe_ttl),
    )

    with stop_on_signals(stop, notifier):
        tasks: list[asyncio.Task[None]] = []
        try:
            async with contextlib.AsyncExitStack() as stack:
                if not opts.once:
                    await _enter_health(stack, opts, service, publisher, notifier)
                if publisher is not None:
                    publisher.start()
                await _enter_watch(stack, opts, service)
                found = service.rescan()
                tasks.append(asyncio.create_task(service.run(), name="eventd-worker"))
                if opts.once:
                    return await _once(service, publisher, opts, found, stop)
                tasks.extend(_background(service, opts))
                log.info(
                    "watching %s for cluster %s (%d job files at start)",
                    opts.queue_dir,
                    opts.cluster,
                    found,
                )
                notifier.ready(f"watching {opts.queue_dir}")
                if on_ready is not None:
                    on_ready(service)
                await _until_stopped(stop, service, publisher, tasks)
                service.watching = False
                await _flush(publisher, opts.shutdown_grace)
                log.info("stopped")
                return 0
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if publisher is not None:
                await publisher.close(0)
            if opts.nics is not None:
                await opts.nics.aclose()
            notifier.close()


async def _enter_health(
    stack: contextlib.AsyncExitStack,
    opts: EventdOptions,
    service: EventService,
    publisher: Publisher | None,
    notifier: Notifier,
) -> None:
    async def readiness() -> dict[str, bool]:
        return {
            "watching": service.watching,
            "broker": publisher.connected if publisher is not None else True,
        }

    try:
        await stack.enter_async_context(HealthServer(opts.http_listen, readiness))
    except OSError as exc:
        raise EventdFailed(
            f"cannot listen on {opts.http_listen} ({exc.strerror}): give eventd its "
            "own DISPATCHER_HTTP_LISTEN (empty turns the listener off)"
        ) from None
    await stack.enter_async_context(watchdog_task(notifier))


async def _enter_watch(
    stack: contextlib.AsyncExitStack, opts: EventdOptions, service: EventService
) -> None:
    try:
        watcher = DirectoryWatcher(opts.queue_dir, WATCH_MASK, service.on_inotify)
        await stack.enter_async_context(watcher)
    except OSError as exc:
        raise EventdFailed(
            f"cannot watch the queue directory {opts.queue_dir}: {exc.strerror}"
        ) from None
    service.watching = True


async def _flush(publisher: Publisher | None, grace: float) -> None:
    if publisher is None:
        return
    lost = await publisher.close(grace)
    if lost:
        log.warning(
            "%d messages were not confirmed by the broker within %.0f s; the next start "
            "re-publishes every job still in the queue",
            lost,
            grace,
        )


async def _once(
    service: EventService,
    publisher: Publisher | None,
    opts: EventdOptions,
    found: int,
    stop: asyncio.Event,
) -> int:
    deadline = time.monotonic() + opts.once_timeout
    while True:
        await service.settle()
        if not service.backlog:  # deferred jobs wait for the buffer to drain
            break
        if publisher is None or time.monotonic() > deadline or stop.is_set():
            break
        await asyncio.sleep(0.05)
    if publisher is None:
        return 0
    left = max(0.0, deadline - time.monotonic())
    drained = asyncio.create_task(publisher.drain(left))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({drained, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    ok = drained.done() and drained.result()
    drained.cancel()
    if publisher.task is not None and publisher.task.done() and not publisher.task.cancelled():
        exc = publisher.task.exception()
        if exc is not None:
            raise EventdFailed(str(exc))
    if not ok or service.backlog:
        raise EventdFailed(
            f"{publisher.pending + service.backlog} messages or jobs not confirmed by the "
            f"broker within {opts.once_timeout:.0f} s"
        )
    log.info("published %d messages from %d job files", service.queued, found)
    return 0


def _background(service: EventService, opts: EventdOptions) -> list[asyncio.Task[None]]:
    tasks = []
    if opts.master is not None:
        tasks.append(asyncio.create_task(_poll_master(service, opts.master_poll)))
    if opts.heartbeat_interval > 0:
        tasks.append(asyncio.create_task(_heartbeat(service, opts), name="heartbeat"))
    return tasks


async def _heartbeat(service: EventService, opts: EventdOptions) -> None:
    """Say every ``heartbeat_interval`` seconds that this eventd is alive, while it is the
    master's. Skipped while the publish buffer is full: a heartbeat that would only leave
    after the backlog says nothing the events will not."""
    node = opts.node_name or (opts.master.master if opts.master is not None else None)
    while True:
        if service.watching and service.check_master() and service.sink.has_room():
            body = heartbeat_body(
                opts.cluster, node, time.time_ns() // 1000, opts.heartbeat_interval
            )
            service.sink.put([Outgoing(HEARTBEAT_KEY, body, HEARTBEAT_TYPE)])
        await asyncio.sleep(opts.heartbeat_interval)


async def _poll_master(service: EventService, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        service.check_master()


async def _until_stopped(
    stop: asyncio.Event,
    service: EventService,
    publisher: Publisher | None,
    tasks: list[asyncio.Task[None]],
) -> None:
    stop_wait = asyncio.create_task(stop.wait())
    lost_wait = asyncio.create_task(service.watch_lost.wait())
    waiters: set[asyncio.Future[object]] = {stop_wait, lost_wait, *tasks}  # type: ignore[arg-type]
    if publisher is not None and publisher.task is not None:
        waiters.add(publisher.task)  # type: ignore[arg-type]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop_wait.cancel()
        lost_wait.cancel()
    if stop.is_set():
        return
    if service.watch_lost.is_set():
        raise EventdFailed(f"the queue directory {service.queue_dir} is gone")
    for task in [*tasks, *([publisher.task] if publisher and publisher.task else [])]:
        if task.done():
            exc = task.exception() if not task.cancelled() else None
            raise EventdFailed(str(exc) if exc else "an eventd task ended unexpectedly")
