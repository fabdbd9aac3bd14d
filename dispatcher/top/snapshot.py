"""What ``dispatcher top`` shows, read once: the database (backends, servers, the newest
history entries) and the daemon's ``/metrics``. I/O here; the arithmetic between two
snapshots (rates, lag) is pure and lives in :func:`rates`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.db.liveness import liveness
from dispatcher.db.models import Backend, VirtualMachine, VmEvent


@dataclass(frozen=True, slots=True)
class BackendRow:
    id: int
    clustername: str
    offline: bool
    drained: bool
    mfree: int
    mtotal: int
    dfree: int
    dtotal: int
    servers: int
    silent_s: float


@dataclass(frozen=True, slots=True)
class Building:
    id: int
    name: str
    percent: int


@dataclass(frozen=True, slots=True)
class EventRow:
    received: datetime
    server_id: int
    what: str  # the opcode, or the message type when it has none
    status: str


@dataclass(frozen=True, slots=True)
class DaemonMetrics:
    """The counters behind the rates, and the dead-letter depths."""

    messages: float
    lag_sum: float
    lag_count: float
    dead_letters: dict[str, float]


@dataclass(slots=True)
class Snapshot:
    taken: float  # time.monotonic()
    backends: list[BackendRow] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    building: list[Building] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    daemon: DaemonMetrics | None = None
    daemon_error: str | None = None
    database_error: str | None = None


async def read_database(s: AsyncSession, snap: Snapshot, events: int) -> None:
    counts = dict(
        (await s.execute(
            select(VirtualMachine.backend_id, func.count())
            .where(VirtualMachine.deleted.is_(False))
            .group_by(VirtualMachine.backend_id)
        )).tuples().all()
    )  # fmt: skip
    silent = {r.backend_id: r.silent_s for r in await liveness(s)}
    snap.backends = [
        BackendRow(
            b.id,
            b.clustername,
            b.offline,
            b.drained,
            b.mfree,
            b.mtotal,
            b.dfree,
            b.dtotal,
            counts.get(b.id, 0),
            silent.get(b.id, 0.0),
        )
        for b in await s.scalars(select(Backend).order_by(Backend.id))
    ]
    snap.states = dict(
        (await s.execute(
            select(VirtualMachine.operstate, func.count())
            .where(VirtualMachine.deleted.is_(False))
            .group_by(VirtualMachine.operstate)
            .order_by(VirtualMachine.operstate)
        )).tuples().all()
    )  # fmt: skip
    snap.building = [
        Building(vm_id, name, pct)
        for vm_id, name, pct in (
            await s.execute(
                select(VirtualMachine.id, VirtualMachine.name, VirtualMachine.buildpercentage)
                .where(VirtualMachine.deleted.is_(False), VirtualMachine.operstate == "BUILD")
                .order_by(VirtualMachine.id)
            )
        ).tuples()
    ]
    rows = await s.scalars(select(VmEvent).order_by(VmEvent.id.desc()).limit(events))
    snap.events = [
        EventRow(
            e.received,
            e.machine_id,
            str(e.body.get("operation") or e.body.get("type") or "?"),
            _status(e.body),
        )
        for e in rows
    ]


def _status(body: dict[str, object]) -> str:
    if "status" in body:
        return str(body["status"])
    for key in ("rprogress", "progress"):
        if key in body:
            return f"{body[key]}%"
    return "-"


def parse_metrics(text: str) -> DaemonMetrics:
    messages = lag_sum = lag_count = 0.0
    dead: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "dispatcher_messages_total":
                messages += sample.value
            elif sample.name == "dispatcher_event_lag_seconds_sum":
                lag_sum += sample.value
            elif sample.name == "dispatcher_event_lag_seconds_count":
                lag_count += sample.value
            elif sample.name == "dispatcher_dead_letter_messages":
                dead[sample.labels.get("queue", "?")] = sample.value
    return DaemonMetrics(messages, lag_sum, lag_count, dead)


async def read_daemon(http: httpx.AsyncClient, url: str | None, snap: Snapshot) -> None:
    if url is None:
        snap.daemon_error = "no metrics listener (DISPATCHER_HTTP_LISTEN is empty)"
        return
    try:
        resp = await http.get(url)
        resp.raise_for_status()
    except httpx.HTTPError as exc:
        snap.daemon_error = f"{url}: {type(exc).__name__}"
        return
    snap.daemon = parse_metrics(resp.text)


@dataclass(frozen=True, slots=True)
class Rates:
    per_second: float | None
    lag_s: float | None  # mean lag of the messages applied between the two snapshots


def rates(before: Snapshot | None, now: Snapshot) -> Rates:
    if before is None or before.daemon is None or now.daemon is None:
        return Rates(None, None)
    dt = now.taken - before.taken
    new = now.daemon.messages - before.daemon.messages
    if dt <= 0 or new < 0:  # a restarted daemon starts its counters again
        return Rates(None, None)
    lagged = now.daemon.lag_count - before.daemon.lag_count
    lag = (now.daemon.lag_sum - before.daemon.lag_sum) / lagged if lagged > 0 else None
    return Rates(new / dt, lag)


def new_snapshot() -> Snapshot:
    return Snapshot(taken=time.monotonic())
