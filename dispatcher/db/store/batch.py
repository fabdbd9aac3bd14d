"""What the VM and the network batches share: a locked target row and the messages a batch
brings it, the history insert that turns redeliveries into duplicates, the choice between
folding incrementally and recomputing from the whole history, and marking each message's
``Result``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from dispatcher.core.handling import Incoming, Outcome, Result
from dispatcher.core.messages import Message, load_stored


def push_row(cols: Sequence[list[Any]], *values: Any) -> None:
    """Append one row to column-wise lists (the array parameters of an ``unnest``)."""
    for col, val in zip(cols, values, strict=True):
        col.append(val)


def body_json(msg: Message) -> str:
    return msg.model_dump_json()


@dataclass(slots=True)
class Target:
    """One locked row and what this batch brings it."""

    row: asyncpg.Record
    new: list[tuple[int, Incoming]] = field(default_factory=list)


class Batch:
    """One kind of target's share of a batch; writes each message's ``Result`` in place."""

    def __init__(
        self,
        pg: asyncpg.Connection,
        prefix: str,
        items: Sequence[Incoming],
        results: list[Result | None],
    ) -> None:
        self.pg, self.prefix, self.items, self.results = pg, prefix, items, results


RowOf = Callable[[int, Incoming], tuple[Any, ...]]
History = list[tuple[bytes, Any, bytes]]  # (sort key, message, digest), in order


async def record_history(
    pg: asyncpg.Connection,
    targets: dict[int, Target],
    results: list[Result | None],
    insert_sql: str,
    row: RowOf,
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
            push_row(cols, *values)
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


def split_targets(targets: dict[int, Target]) -> tuple[dict[int, Target], dict[int, Target]]:
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


async def read_histories(
    pg: asyncpg.Connection, select_sql: str, target_ids: list[int]
) -> dict[int, History]:
    """Each target's whole history in order (the query returns target, key, digest, body)."""
    out: dict[int, History] = defaultdict(list)
    if target_ids:
        for r in await pg.fetch(select_sql, target_ids):
            out[r[0]].append((r["sort_key"], load_stored(r["body"]), r["digest"]))
    return out


def mark_incremental(results: list[Result | None], t: Target, applied: Sequence[bool]) -> None:
    for (i, _), ok in zip(t.new, applied, strict=True):
        results[i] = Result(Outcome.APPLIED if ok else Outcome.IGNORED)


def mark_recomputed(
    results: list[Result | None], t: Target, hist: History, applied: Sequence[bool]
) -> None:
    by_digest = {d: ok for (_, _, d), ok in zip(hist, applied, strict=True)}
    for i, inc in t.new:
        ok = by_digest.get(inc.digest, False)
        results[i] = Result(Outcome.APPLIED if ok else Outcome.IGNORED)
