"""Applying a batch of validated messages to the database in one transaction.

Order independence (CONTRACT §5.2) works like this, per target (a VM, or a network on one
backend):

1. the target row is locked (``FOR UPDATE``, ids in ascending order so that concurrent
   daemons never deadlock);
2. each message is inserted into the target's history; the unique ``(target, digest)`` key
   turns a redelivery into a no-op (``duplicate``);
3. if every new message sorts after the newest one already folded into the row
   (``last_key``), the new messages are applied to the row's state incrementally;
   otherwise the state is recomputed by folding the whole history from the start.

Either way the row ends up equal to the in-order fold of its distinct messages, whichever
daemon applied which message in which order. The hot path speaks asyncpg directly: a
handful of array-parameter statements per batch, whatever its size.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dispatcher import metrics
from dispatcher.core.messages import (
    _ADAPTER,
    Message,
    NetStatus,
    NetworkStatus,
    OpStatus,
    VmMessage,
)
from dispatcher.core.names import network_id_from_name, vm_id_from_instance
from dispatcher.core.network_state import BnState, fold_network, network_state
from dispatcher.core.ordering import KIND_CODE, sort_key
from dispatcher.core.vm_state import Diagnostic, NicState, VmContext, VmState, fold

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Incoming:
    msg: Message
    digest: bytes
    key: bytes

    @classmethod
    def of(cls, msg: Message) -> Incoming:
        digest = msg.digest()
        return cls(msg, digest, sort_key(msg, digest))


def _ts(us: int | None) -> datetime | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def _us(ts: datetime | None) -> int | None:
    if ts is None:
        return None
    delta = ts - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _push(cols: Sequence[list[Any]], *values: Any) -> None:
    """Append one row to column-wise lists (the array parameters of an ``unnest``)."""
    for col, val in zip(cols, values, strict=True):
        col.append(val)


def _body(msg: Message) -> str:
    return msg.model_dump_json()


def _load(body: str | dict[str, Any]) -> Message:
    # the history queries read jsonb as text (``body::text``): one pass of the Rust JSON
    # validator instead of json.loads (SQLAlchemy's jsonb codec) plus validate_python
    if isinstance(body, str):
        return _ADAPTER.validate_json(body)
    return _ADAPTER.validate_python(body)


class _Write(StrEnum):
    """What of a VM's rows a batch rewrites besides the VM row itself."""

    KEEP_NICS = "keep-nics"  # incremental, NICs unchanged
    NICS = "nics"  # incremental, NICs changed
    ALL = "all"  # recomputed: NICs and diagnostics rebuilt from the history


@dataclass(slots=True)
class _Target:
    """One locked row and what this batch brings it."""

    row: asyncpg.Record
    new: list[tuple[int, Incoming]] = field(default_factory=list)


class _Batch:
    """One kind of target's share of a batch; writes each message's ``Result`` in place."""

    def __init__(
        self,
        pg: asyncpg.Connection,
        prefix: str,
        items: Sequence[Incoming],
        results: list[Result | None],
    ) -> None:
        self.pg, self.prefix, self.items, self.results = pg, prefix, items, results


_Row = Callable[[int, Incoming], tuple[Any, ...]]
_History = list[tuple[bytes, Any, bytes]]  # (sort key, message, digest), in order


async def _record_history(
    pg: asyncpg.Connection,
    targets: dict[int, _Target],
    results: list[Result | None],
    insert_sql: str,
    row: _Row,
) -> None:
    """Insert each target's new messages into its history; keep only those that are new.

    A message repeated within the batch or already in the history is a duplicate; the
    insert's ``RETURNING (target, digest)`` tells which rows really went in.
    """
    cols: list[list[Any]] = []
    seen: set[tuple[int, bytes]] = set()
    for target_id, t in targets.items():
        unique = []
        for i, inc in t.new:
            if (target_id, inc.digest) in seen:
                results[i] = Result(Outcome.DUPLICATE)
                continue
            seen.add((target_id, inc.digest))
            unique.append((i, inc))
            values = row(target_id, inc)
            if not cols:
                cols = [[] for _ in values]
            _push(cols, *values)
        t.new = unique
    if not cols:
        return
    inserted = {(r[0], r[1]) for r in await pg.fetch(insert_sql, *cols)}
    for target_id, t in targets.items():
        fresh = []
        for i, inc in t.new:
            if (target_id, inc.digest) in inserted:
                fresh.append((i, inc))
            else:
                results[i] = Result(Outcome.DUPLICATE)
        t.new = fresh


def _split(targets: dict[int, _Target]) -> tuple[dict[int, _Target], dict[int, _Target]]:
    """Targets with new messages: (all new after ``last_key``, some land in the past)."""
    incremental, recompute = {}, {}
    for target_id, t in targets.items():
        if not t.new:
            continue
        t.new.sort(key=lambda pair: pair[1].key)
        last = t.row["last_key"]
        if last is None or t.new[0][1].key > last:
            incremental[target_id] = t
        else:
            recompute[target_id] = t
    return incremental, recompute


async def _histories(
    pg: asyncpg.Connection, select_sql: str, target_ids: list[int]
) -> dict[int, _History]:
    """Each target's whole history in order (the query returns target, key, digest, body)."""
    out: dict[int, _History] = defaultdict(list)
    if target_ids:
        for r in await pg.fetch(select_sql, target_ids):
            out[r[0]].append((r["sort_key"], _load(r["body"]), r["digest"]))
    return out


def _mark_incremental(results: list[Result | None], t: _Target, applied: Sequence[bool]) -> None:
    for (i, _), ok in zip(t.new, applied, strict=True):
        results[i] = Result(Outcome.APPLIED if ok else Outcome.IGNORED)


def _mark_recomputed(
    results: list[Result | None], t: _Target, hist: _History, applied: Sequence[bool]
) -> None:
    by_digest = {d: ok for (_, _, d), ok in zip(hist, applied, strict=True)}
    for i, inc in t.new:
        ok = by_digest.get(inc.digest, False)
        results[i] = Result(Outcome.APPLIED if ok else Outcome.IGNORED)


class EventStore:
    """Applies batches on one connection it keeps between batches.

    Checking a connection out of the pool for every batch cost three round trips before the
    first statement (SQLAlchemy's pre-ping is BEGIN; ``;``; ROLLBACK on asyncpg), a fifth
    to a quarter of a small batch's time. The kept connection is dropped (invalidated) on
    any failure, so the next batch starts on a fresh, pre-pinged one; ``close`` returns it,
    and so does disposing of the engine (for users that never call ``close``).
    """

    def __init__(self, engine: AsyncEngine, prefix: str, *, from_eventd: bool = True) -> None:
        self._engine = engine
        self._prefix = prefix
        # simulated events (reconcile, set-state) say nothing about the cluster's eventd
        self._from_eventd = from_eventd
        self._conn: AsyncConnection | None = None
        self._pg: asyncpg.Connection | None = None
        event.listen(engine.sync_engine, "engine_disposed", self._on_engine_disposed)

    def _on_engine_disposed(self, _engine: Any) -> None:
        # runs inside AsyncEngine.dispose()'s greenlet, where the sync API may do I/O
        conn, self._conn, self._pg = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.sync_connection.invalidate()  # type: ignore[union-attr]
            with contextlib.suppress(Exception):
                conn.sync_connection.close()  # type: ignore[union-attr]

    async def apply(self, items: Sequence[Incoming]) -> list[Result]:
        results: list[Result | None] = [None] * len(items)
        pg = await self._connection()
        try:
            async with pg.transaction():
                await _VmBatch(pg, self._prefix, items, results).run()
                await _NetworkBatch(pg, self._prefix, items, results).run()
                if self._from_eventd:
                    await _touch_backends(pg, self._prefix, items, results)
        except BaseException:
            await self._drop()
            raise
        return [r if r is not None else Result(Outcome.IGNORED, "not handled") for r in results]

    async def _connection(self) -> asyncpg.Connection:
        if self._pg is None or self._pg.is_closed():
            await self._drop()
            conn = await self._engine.connect()
            try:
                raw = await conn.get_raw_connection()
            except BaseException:
                await conn.close()
                raise
            self._conn, self._pg = conn, raw.driver_connection
        return self._pg

    async def _drop(self) -> None:
        conn, self._conn, self._pg = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Return the kept connection to the pool (at shutdown)."""
        conn, self._conn, self._pg = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


_TOUCH_BACKENDS = """
UPDATE backends SET last_event = now()
WHERE (id IN (SELECT backend_id FROM virtual_machines WHERE id = ANY($1::int[]))
       OR clustername = ANY($2::text[]))
  AND (last_event IS NULL OR last_event < now())
"""


async def _touch_backends(
    pg: asyncpg.Connection, prefix: str, items: Sequence[Incoming], results: list[Result | None]
) -> None:
    """Note when each cluster last had an event applied. Runs last in the transaction, after
    every VM and network row is locked, so the lock order stays VMs, networks, backends."""
    vm_ids: set[int] = set()
    clusters: set[str] = set()
    for inc, res in zip(items, results, strict=True):
        if res is None or res.outcome is not Outcome.APPLIED:
            continue
        if isinstance(inc.msg, NetworkStatus):
            clusters.add(inc.msg.cluster)
        elif (vm_id := vm_id_from_instance(prefix, inc.msg.instance)) is not None:
            vm_ids.add(vm_id)
    if vm_ids or clusters:
        await pg.execute(_TOUCH_BACKENDS, sorted(vm_ids), sorted(clusters))


_SELECT_VMS = """
SELECT id, operstate, deleted, action, backendjobid, backendopcode, backendjobstatus,
       backendlogmsg, buildpercentage, backendtime, last_key
FROM virtual_machines WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE
"""
_INSERT_VM_EVENTS = """
INSERT INTO vm_events (machine_id, digest, sort_key, kind, event_time, body)
SELECT * FROM unnest($1::int[], $2::bytea[], $3::bytea[], $4::int2[], $5::timestamptz[],
                     $6::jsonb[])
ON CONFLICT (machine_id, digest) DO NOTHING
RETURNING machine_id, digest
"""
_SELECT_VM_HISTORY = """
SELECT machine_id, sort_key, digest, body::text AS body FROM vm_events
WHERE machine_id = ANY($1::int[]) ORDER BY machine_id, sort_key
"""
_SELECT_NICS = """
SELECT machine_id, index, network_id, mac, ipv4, ipv6, firewall_profile
FROM network_interfaces WHERE machine_id = ANY($1::int[]) ORDER BY machine_id, index
"""
_SELECT_NETWORKS = "SELECT id, public FROM networks WHERE id = ANY($1::int[])"
_UPDATE_VMS = """
UPDATE virtual_machines AS v SET
  operstate = u.operstate, deleted = u.deleted, backendjobid = u.jobid,
  backendopcode = u.opcode, backendjobstatus = u.jobstatus, backendlogmsg = u.logmsg,
  buildpercentage = u.pct, backendtime = u.btime, last_key = u.last_key, updated = now()
FROM unnest($1::int[], $2::text[], $3::bool[], $4::bigint[], $5::text[], $6::text[],
            $7::text[], $8::int[], $9::timestamptz[], $10::bytea[])
  AS u(id, operstate, deleted, jobid, opcode, jobstatus, logmsg, pct, btime, last_key)
WHERE v.id = u.id
"""
_DELETE_NICS = "DELETE FROM network_interfaces WHERE machine_id = ANY($1::int[])"
_INSERT_NICS = """
INSERT INTO network_interfaces (machine_id, index, network_id, mac, ipv4, ipv6, firewall_profile)
SELECT * FROM unnest($1::int[], $2::int[], $3::int[], $4::text[], $5::text[], $6::text[],
                     $7::text[])
"""
_DELETE_DIAGS = "DELETE FROM vm_diagnostics WHERE machine_id = ANY($1::int[])"
_INSERT_DIAGS = """
INSERT INTO vm_diagnostics (machine_id, digest, level, source, source_date, message, details)
SELECT * FROM unnest($1::int[], $2::bytea[], $3::text[], $4::text[], $5::timestamptz[],
                     $6::text[], $7::text[])
ON CONFLICT (machine_id, digest) DO NOTHING
"""


def _vm_state(row: asyncpg.Record, nics: tuple[NicState, ...]) -> VmState:
    return VmState(
        operstate=row["operstate"],
        deleted=row["deleted"],
        backendjobid=row["backendjobid"],
        backendopcode=row["backendopcode"],
        backendjobstatus=row["backendjobstatus"],
        backendlogmsg=row["backendlogmsg"],
        buildpercentage=row["buildpercentage"],
        backendtime_us=_us(row["backendtime"]),
        nics=nics,
    )


def _initial_vm_state(row: asyncpg.Record) -> VmState:
    # The job fields an API action recorded survive a recompute whose history has no
    # op-status yet; the first op-status in the history overwrites all four anyway.
    return VmState(
        backendjobid=row["backendjobid"],
        backendopcode=row["backendopcode"],
        backendjobstatus=row["backendjobstatus"],
        backendlogmsg=row["backendlogmsg"],
    )


def _vm_event_row(vm_id: int, inc: Incoming) -> tuple[Any, ...]:
    kind = KIND_CODE[inc.msg.type]
    return (vm_id, inc.digest, inc.key, kind, _ts(inc.msg.event_time_us), _body(inc.msg))


class _VmBatch(_Batch):
    async def run(self) -> None:
        targets = await self._lock_targets()
        if not targets:
            return
        await _record_history(self.pg, targets, self.results, _INSERT_VM_EVENTS, _vm_event_row)
        incremental, recompute = _split(targets)
        if not incremental and not recompute:
            return
        histories = await _histories(self.pg, _SELECT_VM_HISTORY, list(recompute))
        msgs: list[VmMessage] = [inc.msg for t in incremental.values() for _, inc in t.new]  # type: ignore[misc]
        for hist in histories.values():
            msgs.extend(m for _, m, _ in hist)
        networks = await self._networks(msgs)
        current_nics = await self._nics(list(incremental))
        writes: list[tuple[int, VmState, bytes, tuple[Diagnostic, ...], _Write]] = []
        for vm_id, t in incremental.items():
            ctx = VmContext(self.prefix, t.row["action"], networks)
            before = _vm_state(t.row, current_nics.get(vm_id, ()))
            out = fold(before, [inc.msg for _, inc in t.new], ctx)  # type: ignore[misc]
            _mark_incremental(self.results, t, out.applied)
            mode = _Write.KEEP_NICS if out.state.nics == before.nics else _Write.NICS
            writes.append((vm_id, out.state, t.new[-1][1].key, tuple(out.diagnostics), mode))
        for vm_id, t in recompute.items():
            ctx = VmContext(self.prefix, t.row["action"], networks)
            hist = histories[vm_id]
            out = fold(_initial_vm_state(t.row), [m for _, m, _ in hist], ctx)
            _mark_recomputed(self.results, t, hist, out.applied)
            writes.append((vm_id, out.state, hist[-1][0], tuple(out.diagnostics), _Write.ALL))
        if recompute:
            metrics.RECOMPUTATIONS.labels("vm").inc(len(recompute))
        await self._write(writes)

    async def _lock_targets(self) -> dict[int, _Target]:
        wanted: dict[int, list[int]] = defaultdict(list)
        for i, inc in enumerate(self.items):
            if isinstance(inc.msg, NetworkStatus):
                continue
            vm_id = vm_id_from_instance(self.prefix, inc.msg.instance)
            if vm_id is None:
                self.results[i] = Result(Outcome.IGNORED, "instance name is not ours")
            else:
                wanted[vm_id].append(i)
        if not wanted:
            return {}
        rows = await self.pg.fetch(_SELECT_VMS, sorted(wanted))
        targets = {r["id"]: _Target(r) for r in rows}
        for vm_id, idxs in wanted.items():
            t = targets.get(vm_id)
            for i in idxs:
                if t is None:
                    self.results[i] = Result(Outcome.IGNORED, "unknown VM")
                else:
                    t.new.append((i, self.items[i]))
        return targets

    async def _networks(self, msgs: list[VmMessage]) -> dict[int, bool]:
        ids: set[int] = set()
        for m in msgs:
            nics = (
                m.nic_list
                if isinstance(m, OpStatus)
                else m.nics
                if isinstance(m, NetStatus)
                else None
            )
            for nic in nics or ():
                net_id = network_id_from_name(self.prefix, nic.network)
                if net_id is not None:
                    ids.add(net_id)
        if not ids:
            return {}
        return {r["id"]: r["public"] for r in await self.pg.fetch(_SELECT_NETWORKS, sorted(ids))}

    async def _nics(self, vm_ids: list[int]) -> dict[int, tuple[NicState, ...]]:
        out: dict[int, list[NicState]] = defaultdict(list)
        if vm_ids:
            for r in await self.pg.fetch(_SELECT_NICS, vm_ids):
                out[r["machine_id"]].append(
                    NicState(
                        r["index"],
                        r["network_id"],
                        r["mac"],
                        r["ipv4"],
                        r["ipv6"],
                        r["firewall_profile"],
                    )
                )
        return {k: tuple(v) for k, v in out.items()}

    async def _write(
        self,
        writes: list[tuple[int, VmState, bytes, tuple[Diagnostic, ...], _Write]],
    ) -> None:
        cols: tuple[list[Any], ...] = tuple([] for _ in range(10))
        nic_vms: list[int] = []
        nic_cols: tuple[list[Any], ...] = tuple([] for _ in range(7))
        redo_diags: list[int] = []
        diag_cols: tuple[list[Any], ...] = tuple([] for _ in range(7))
        for vm_id, st, last_key, diags, mode in writes:
            _push(
                cols,
                vm_id,
                st.operstate,
                st.deleted,
                st.backendjobid,
                st.backendopcode,
                st.backendjobstatus,
                st.backendlogmsg,
                st.buildpercentage,
                _ts(st.backendtime_us),
                last_key,
            )
            if mode is not _Write.KEEP_NICS:
                nic_vms.append(vm_id)
                for n in st.nics:
                    _push(
                        nic_cols,
                        vm_id,
                        n.index,
                        n.network_id,
                        n.mac,
                        n.ipv4,
                        n.ipv6,
                        n.firewall_profile,
                    )
            if mode is _Write.ALL:
                redo_diags.append(vm_id)
            for d in diags:
                _push(
                    diag_cols,
                    vm_id,
                    d.digest,
                    d.level,
                    d.source,
                    _ts(d.source_time_us),
                    d.message[:10000],
                    d.details,
                )
        await self.pg.execute(_UPDATE_VMS, *cols)
        if nic_vms:
            await self.pg.execute(_DELETE_NICS, nic_vms)
            if nic_cols[0]:
                await self.pg.execute(_INSERT_NICS, *nic_cols)
        if redo_diags:
            await self.pg.execute(_DELETE_DIAGS, redo_diags)
        if diag_cols[0]:
            await self.pg.execute(_INSERT_DIAGS, *diag_cols)


_SELECT_NETS_LOCK = """
SELECT id, action, deleted FROM networks WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE
"""
_SELECT_BACKENDS = "SELECT id, clustername FROM backends WHERE clustername = ANY($1::text[])"
_SELECT_BNS = """
SELECT id, network_id, backend_id, operstate, deleted, backendjobid, backendopcode,
       backendjobstatus, backendlogmsg, backendtime, last_key
FROM backend_networks WHERE network_id = ANY($1::int[]) ORDER BY id FOR UPDATE
"""
_INSERT_BNS = """
INSERT INTO backend_networks (network_id, backend_id, operstate, deleted)
SELECT n, b, 'PENDING', false FROM unnest($1::int[], $2::int[]) AS u(n, b)
ON CONFLICT (network_id, backend_id) DO NOTHING
RETURNING id, network_id, backend_id, operstate, deleted, backendjobid, backendopcode,
          backendjobstatus, backendlogmsg, backendtime, last_key
"""
_INSERT_NET_EVENTS = """
INSERT INTO network_events (backend_network_id, digest, sort_key, event_time, body)
SELECT * FROM unnest($1::int[], $2::bytea[], $3::bytea[], $4::timestamptz[], $5::jsonb[])
ON CONFLICT (backend_network_id, digest) DO NOTHING
RETURNING backend_network_id, digest
"""
_SELECT_NET_HISTORY = """
SELECT backend_network_id, sort_key, digest, body::text AS body FROM network_events
WHERE backend_network_id = ANY($1::int[]) ORDER BY backend_network_id, sort_key
"""
_UPDATE_BNS = """
UPDATE backend_networks AS n SET
  operstate = u.operstate, deleted = u.deleted, backendjobid = u.jobid,
  backendopcode = u.opcode, backendjobstatus = u.jobstatus, backendlogmsg = u.logmsg,
  backendtime = u.btime, last_key = u.last_key, updated = now()
FROM unnest($1::int[], $2::text[], $3::bool[], $4::bigint[], $5::text[], $6::text[],
            $7::text[], $8::timestamptz[], $9::bytea[])
  AS u(id, operstate, deleted, jobid, opcode, jobstatus, logmsg, btime, last_key)
WHERE n.id = u.id
"""
_SELECT_ONLINE_BN_STATES = """
SELECT bn.network_id, bn.operstate FROM backend_networks bn
JOIN backends b ON b.id = bn.backend_id
WHERE bn.network_id = ANY($1::int[]) AND NOT b.offline
"""
_UPDATE_NETWORK_STATE = """
UPDATE networks AS n SET state = u.state, deleted = u.deleted, updated = now()
FROM unnest($1::int[], $2::text[], $3::bool[]) AS u(id, state, deleted)
WHERE n.id = u.id AND (n.state <> u.state OR n.deleted <> u.deleted)
"""


def _bn_state(row: asyncpg.Record) -> BnState:
    return BnState(
        operstate=row["operstate"],
        deleted=row["deleted"],
        backendjobid=row["backendjobid"],
        backendopcode=row["backendopcode"],
        backendjobstatus=row["backendjobstatus"],
        backendlogmsg=row["backendlogmsg"],
        backendtime_us=_us(row["backendtime"]),
    )


def _network_event_row(bn_id: int, inc: Incoming) -> tuple[Any, ...]:
    return (bn_id, inc.digest, inc.key, _ts(inc.msg.event_time_us), _body(inc.msg))


class _NetworkBatch(_Batch):
    async def run(self) -> None:
        wanted = self._wanted()
        if not wanted:
            return
        nets = {
            r["id"]: r
            for r in await self.pg.fetch(_SELECT_NETS_LOCK, sorted({n for n, _ in wanted}))
        }
        clusters = sorted({c for _, c in wanted})
        backends = {
            r["clustername"]: r["id"] for r in await self.pg.fetch(_SELECT_BACKENDS, clusters)
        }
        bns = {
            (r["network_id"], r["backend_id"]): r
            for r in await self.pg.fetch(_SELECT_BNS, sorted(nets))
        }
        missing = []
        for (net_id, cluster), idxs in wanted.items():
            reason = None
            if net_id not in nets:
                reason = "unknown network"
            elif cluster not in backends:
                reason = "unknown cluster"
            if reason:
                for i in idxs:
                    self.results[i] = Result(Outcome.IGNORED, reason)
            elif (net_id, backends[cluster]) not in bns:
                missing.append((net_id, backends[cluster]))
        if missing:
            rows = await self.pg.fetch(
                _INSERT_BNS, [m[0] for m in missing], [m[1] for m in missing]
            )
            bns.update({(r["network_id"], r["backend_id"]): r for r in rows})
        targets: dict[int, _Target] = {}
        for (net_id, cluster), idxs in wanted.items():
            if self.results[idxs[0]] is not None:
                continue
            row = bns[(net_id, backends[cluster])]
            t = targets.setdefault(row["id"], _Target(row))
            t.new.extend((i, self.items[i]) for i in idxs)
        await _record_history(
            self.pg, targets, self.results, _INSERT_NET_EVENTS, _network_event_row
        )
        await self._fold(targets, nets)

    def _wanted(self) -> dict[tuple[int, str], list[int]]:
        wanted: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, inc in enumerate(self.items):
            if not isinstance(inc.msg, NetworkStatus):
                continue
            net_id = network_id_from_name(self.prefix, inc.msg.network)
            if net_id is None:
                self.results[i] = Result(Outcome.IGNORED, "network name is not ours")
            else:
                wanted[(net_id, inc.msg.cluster)].append(i)
        return wanted

    async def _fold(self, targets: dict[int, _Target], nets: dict[int, asyncpg.Record]) -> None:
        incremental, recompute = _split(targets)
        if not incremental and not recompute:
            return
        if recompute:
            metrics.RECOMPUTATIONS.labels("network").inc(len(recompute))
        histories = await _histories(self.pg, _SELECT_NET_HISTORY, list(recompute))
        cols: tuple[list[Any], ...] = tuple([] for _ in range(9))
        touched: set[int] = set()
        for bn_id, t in (incremental | recompute).items():
            action = nets[t.row["network_id"]]["action"]
            if bn_id in recompute:
                hist = histories[bn_id]
                st, applied = fold_network(BnState(), [m for _, m, _ in hist], action)
                _mark_recomputed(self.results, t, hist, applied)
                last_key = hist[-1][0]
            else:
                st, applied = fold_network(_bn_state(t.row), [inc.msg for _, inc in t.new], action)  # type: ignore[misc]
                _mark_incremental(self.results, t, applied)
                last_key = t.new[-1][1].key
            touched.add(t.row["network_id"])
            _push(
                cols,
                bn_id,
                st.operstate,
                st.deleted,
                st.backendjobid,
                st.backendopcode,
                st.backendjobstatus,
                st.backendlogmsg,
                _ts(st.backendtime_us),
                last_key,
            )
        await self.pg.execute(_UPDATE_BNS, *cols)
        await refresh_network_states(self.pg, sorted(touched))


async def refresh_network_states(pg: asyncpg.Connection, network_ids: list[int]) -> None:
    """Recompute each network's state from its backend networks on online backends."""
    if not network_ids:
        return
    states: dict[int, list[str]] = {n: [] for n in network_ids}
    for r in await pg.fetch(_SELECT_ONLINE_BN_STATES, network_ids):
        states[r["network_id"]].append(r["operstate"])
    ids, values, deleted = [], [], []
    for net_id, bn_states in states.items():
        state, gone = network_state(bn_states)
        ids.append(net_id)
        values.append(state)
        deleted.append(gone)
    await pg.execute(_UPDATE_NETWORK_STATE, ids, values, deleted)
