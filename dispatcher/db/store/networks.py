"""A batch's share for networks: each network's state on each backend, and the network's
own state derived from those."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import asyncpg

from dispatcher import metrics
from dispatcher.core.handling import Incoming, Outcome, Result
from dispatcher.core.messages import NetworkStatus
from dispatcher.core.names import network_id_from_name
from dispatcher.core.network_state import BnState, fold_network, network_state
from dispatcher.core.times import datetime_from_us, us_from_datetime
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
        backendtime_us=us_from_datetime(row["backendtime"]),
    )


def _network_event_row(bn_id: int, inc: Incoming) -> tuple[Any, ...]:
    return (bn_id, inc.digest, inc.key, datetime_from_us(inc.msg.event_time_us), body_json(inc.msg))


class NetworkBatch(Batch):
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
        targets: dict[int, Target] = {}
        for (net_id, cluster), idxs in wanted.items():
            if self.results[idxs[0]] is not None:
                continue
            row = bns[(net_id, backends[cluster])]
            t = targets.setdefault(row["id"], Target(row))
            t.new.extend((i, self.items[i]) for i in idxs)
        await record_history(self.pg, targets, self.results, _INSERT_NET_EVENTS, _network_event_row)
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

    async def _fold(self, targets: dict[int, Target], nets: dict[int, asyncpg.Record]) -> None:
        incremental, recompute = split_targets(targets)
        if not incremental and not recompute:
            return
        if recompute:
            metrics.RECOMPUTATIONS.labels("network").inc(len(recompute))
        histories = await read_histories(self.pg, _SELECT_NET_HISTORY, list(recompute))
        cols: tuple[list[Any], ...] = tuple([] for _ in range(9))
        touched: set[int] = set()
        for bn_id, t in (incremental | recompute).items():
            action = nets[t.row["network_id"]]["action"]
            if bn_id in recompute:
                hist = histories[bn_id]
                st, applied = fold_network(BnState(), [m for _, m, _ in hist], action)
                mark_recomputed(self.results, t, hist, applied)
                last_key = hist[-1][0]
            else:
                st, applied = fold_network(_bn_state(t.row), [inc.msg for _, inc in t.new], action)  # type: ignore[misc]
                mark_incremental(self.results, t, applied)
                last_key = t.new[-1][1].key
            touched.add(t.row["network_id"])
            push_row(
                cols,
                bn_id,
                st.operstate,
                st.deleted,
                st.backendjobid,
                st.backendopcode,
                st.backendjobstatus,
                st.backendlogmsg,
                datetime_from_us(st.backendtime_us),
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
