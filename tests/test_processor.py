"""The processor's poison isolation: a batch that raises is bisected, not replayed one by one.

A store that raises on demand is an error path a real PostgreSQL cannot produce on demand
for chosen messages, so an in-memory store stands in here; the real store's poison path is
covered end to end by ``test_faults.py::test_poison_message``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc

from dispatcher.core.handling import RETRIES_HEADER, Incoming, Outcome, Result
from dispatcher.db.errors import DbProblem
from dispatcher.pipeline.processor import Delivery, Processor
from dispatcher.pipeline.topology import queues
from tests.support import op_status

OP_QUEUE = next(q for q in queues("snf") if q.name.endswith("-op"))


class PoisonStore:
    """Applies every batch unless it holds a poisoned instance; counts transactions."""

    def __init__(self, poisoned: set[str]) -> None:
        self.poisoned = poisoned
        self.calls = 0
        self.applied: list[str] = []

    async def apply(self, items: Sequence[Incoming]) -> list[Result]:
        self.calls += 1
        names = [inc.msg.instance for inc in items]  # type: ignore[union-attr]
        bad = [n for n in names if n in self.poisoned]
        if bad:
            raise RuntimeError(f"cannot apply {bad[0]}")
        self.applied.extend(names)
        return [Result(Outcome.APPLIED) for _ in items]


def deliveries(n: int, *, retries: int = 0) -> list[Delivery]:
    out = []
    for k in range(n):
        body = op_status(f"snf-{k + 1}", "OP_INSTANCE_STARTUP", 100 + k, "success", (1, k))
        out.append(Delivery(OP_QUEUE, json.dumps(body).encode(), {RETRIES_HEADER: retries}))
    return out


async def no_sleep(_: float) -> None:
    return None


@pytest.mark.parametrize(("size", "poisoned"), [(512, {"snf-300"}), (64, {"snf-1", "snf-64"})])
async def test_poison_is_bisected_out_and_the_rest_applied(size: int, poisoned: set[str]) -> None:
    store = PoisonStore(poisoned)
    proc = Processor(store, max_retries=3, retry_max_delay=0.01, sleep=no_sleep)
    decisions = await proc.handle(deliveries(size))
    verdicts = {
        d.message.instance: d.outcome  # type: ignore[union-attr]
        for d in decisions
    }
    assert len(decisions) == size
    assert {n for n, v in verdicts.items() if v is Outcome.RETRY} == poisoned
    assert all(v is Outcome.APPLIED for n, v in verdicts.items() if n not in poisoned)
    assert sorted(store.applied) == sorted(n for n in verdicts if n not in poisoned)
    # each culprit costs at most two transactions per level of the split
    bound = 1 + 2 * len(poisoned) * math.ceil(math.log2(size))
    assert store.calls <= bound, (store.calls, bound)
    print(f"[processor] batch={size} poisoned={len(poisoned)} transactions={store.calls}")


async def test_poison_past_its_retries_is_dead_lettered_with_reason() -> None:
    store = PoisonStore({"snf-2"})
    proc = Processor(store, max_retries=3, retry_max_delay=0.01, sleep=no_sleep)
    decisions = await proc.handle(deliveries(4, retries=3))
    by_name = {d.message.instance: d for d in decisions}  # type: ignore[union-attr]
    assert by_name["snf-2"].outcome is Outcome.DEAD_LETTER
    assert "RuntimeError: cannot apply snf-2" in by_name["snf-2"].reason
    assert "after 4 attempts" in by_name["snf-2"].reason
    assert [by_name[n].outcome for n in ("snf-1", "snf-3", "snf-4")] == [Outcome.APPLIED] * 3


async def test_a_healthy_batch_is_one_transaction() -> None:
    store = PoisonStore(set())
    proc = Processor(store, max_retries=3, retry_max_delay=0.01, sleep=no_sleep)
    decisions = await proc.handle(deliveries(100))
    assert [d.outcome for d in decisions] == [Outcome.APPLIED] * 100
    assert store.calls == 1


class SchemaGoneStore(PoisonStore):
    """Raises what SQLAlchemy raises on a missing table for the first ``broken`` batches."""

    def __init__(self, broken: int) -> None:
        super().__init__(set())
        self.broken = broken

    async def apply(self, items: Sequence[Incoming]) -> list[Result]:
        if self.broken:
            self.broken -= 1
            self.calls += 1
            orig = asyncpg.exceptions.UndefinedTableError('relation "vm_events" does not exist')
            raise sa_exc.ProgrammingError("INSERT INTO vm_events ...", None, orig)
        return await super().apply(items)


async def test_a_schema_error_holds_the_batch_instead_of_dead_lettering_it() -> None:
    """Even a message past its retries: an undefined table is not the message's fault."""
    store = SchemaGoneStore(broken=7)
    states: list[DbProblem | None] = []
    proc = Processor(
        store, max_retries=0, retry_max_delay=0.01, on_db_state=states.append, sleep=no_sleep
    )
    decisions = await proc.handle(deliveries(10, retries=5))
    assert [d.outcome for d in decisions] == [Outcome.APPLIED] * 10
    assert store.calls == 8  # the whole batch, held and retried; never split
    assert states == [DbProblem.SCHEMA] * 7 + [None]
