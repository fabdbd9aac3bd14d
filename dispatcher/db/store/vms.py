"""A batch's share for virtual machines: the VM rows, their NICs and diagnostics."""

from __future__ import annotations

from collections import defaultdict
from enum import StrEnum
from typing import Any

import asyncpg

from dispatcher import metrics
from dispatcher.core.handling import Incoming, Outcome, Result
from dispatcher.core.kinds import CODE
from dispatcher.core.messages import NetStatus, NetworkStatus, OpStatus, VmMessage
from dispatcher.core.names import network_id_from_name, vm_id_from_instance
from dispatcher.core.times import datetime_from_us, us_from_datetime
from dispatcher.core.vm_state import Diagnostic, NicState, VmContext, VmState, fold
from dispatcher.db.store.batch import (
    Batch,
    Target,
    body_json,
    mark_incremental,
    mark_recomputed,
    push_row,
    read_histories,
    record_history,
    split_targets,
)


class _Write(StrEnum):
    """What of a VM's rows a batch rewrites besides the VM row itself."""

    KEEP_NICS = "keep-nics"  # incremental, NICs unchanged
    NICS = "nics"  # incremental, NICs changed
    ALL = "all"  # recomputed: NICs and diagnostics rebuilt from the history


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
        backendtime_us=us_from_datetime(row["backendtime"]),
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
    kind = CODE[inc.msg.type]
    return (
        vm_id,
        inc.digest,
        inc.key,
        kind,
        datetime_from_us(inc.msg.event_time_us),
        body_json(inc.msg),
    )


class VmBatch(Batch):
    async def run(self) -> None:
        targets = await self._lock_targets()
        if not targets:
            return
        await record_history(self.pg, targets, self.results, _INSERT_VM_EVENTS, _vm_event_row)
        incremental, recompute = split_targets(targets)
        if not incremental and not recompute:
            return
        histories = await read_histories(self.pg, _SELECT_VM_HISTORY, list(recompute))
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
            mark_incremental(self.results, t, out.applied)
            mode = _Write.KEEP_NICS if out.state.nics == before.nics else _Write.NICS
            writes.append((vm_id, out.state, t.new[-1][1].key, tuple(out.diagnostics), mode))
        for vm_id, t in recompute.items():
            ctx = VmContext(self.prefix, t.row["action"], networks)
            hist = histories[vm_id]
            out = fold(_initial_vm_state(t.row), [m for _, m, _ in hist], ctx)
            mark_recomputed(self.results, t, hist, out.applied)
            writes.append((vm_id, out.state, hist[-1][0], tuple(out.diagnostics), _Write.ALL))
        if recompute:
            metrics.RECOMPUTATIONS.labels("vm").inc(len(recompute))
        await self._write(writes)

    async def _lock_targets(self) -> dict[int, Target]:
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
        targets = {r["id"]: Target(r) for r in rows}
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
            push_row(
                cols,
                vm_id,
                st.operstate,
                st.deleted,
                st.backendjobid,
                st.backendopcode,
                st.backendjobstatus,
                st.backendlogmsg,
                st.buildpercentage,
                datetime_from_us(st.backendtime_us),
                last_key,
            )
            if mode is not _Write.KEEP_NICS:
                nic_vms.append(vm_id)
                for n in st.nics:
                    push_row(
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
                push_row(
                    diag_cols,
                    vm_id,
                    d.digest,
                    d.level,
                    d.source,
                    datetime_from_us(d.source_time_us),
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
