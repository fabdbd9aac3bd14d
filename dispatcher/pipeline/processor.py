"""From a batch of deliveries to a decision per delivery (CONTRACT §5.1, §5.4).

No AMQP types here: the consumer hands in bodies and headers and carries out the decisions
(ack, dead-letter with a reason, re-queue for another attempt). The database work goes
through an ``EventStore``; while the database is unreachable, or its schema is not the one
this code knows (undefined table or column), the batch is held and retried with back-off,
never dead-lettered, so nothing is lost and nothing is taken off the queues.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dispatcher.core.handling import RETRIES_HEADER, Incoming, Outcome, Result
from dispatcher.core.messages import InvalidMessage, Message, parse
from dispatcher.db.errors import DbProblem, db_problem
from dispatcher.oneline import one_line
from dispatcher.pipeline.topology import QueueSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivery:
    queue: QueueSpec
    body: bytes
    headers: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str = ""
    message: Message | None = None


class Store(Protocol):
    async def apply(self, items: Sequence[Incoming]) -> list[Result]: ...


class Processor:
    def __init__(
        self,
        store: Store,
        *,
        max_retries: int,
        retry_max_delay: float,
        on_db_state: Callable[[DbProblem | None], None] = lambda problem: None,
        fault: Callable[[Message], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._max_retries = max_retries
        self._retry_max_delay = retry_max_delay
        self._on_db_state = on_db_state
        self._fault = fault
        self._sleep = sleep

    async def close(self) -> None:
        """Release what the store keeps between batches (its database connection)."""
        close = getattr(self._store, "close", None)
        if close is not None:
            await close()

    async def handle(self, batch: Sequence[Delivery]) -> list[Decision]:
        decisions: list[Decision | None] = [None] * len(batch)
        valid: list[tuple[int, Incoming]] = []
        for i, d in enumerate(batch):
            try:
                msg = parse(d.body)
            except InvalidMessage as exc:
                decisions[i] = Decision(Outcome.DEAD_LETTER, exc.reason)
                continue
            if msg.type not in d.queue.accepts:
                reason = f"type {msg.type!r} is not accepted on queue {d.queue.name}"
                decisions[i] = Decision(Outcome.DEAD_LETTER, reason, msg)
                continue
            valid.append((i, Incoming.of(msg)))
        if valid:
            await self._apply_or_split(valid, batch, decisions)
        return [d for d in decisions if d is not None]

    async def _apply_or_split(
        self,
        part: list[tuple[int, Incoming]],
        batch: Sequence[Delivery],
        decisions: list[Decision | None],
    ) -> None:
        """Apply ``part`` in one transaction; if it raises, bisect until the culprits stand alone.

        One poison message in a batch of n costs about 2·log2(n) transactions instead of n,
        and every other message is still applied. Splitting is safe because the store is
        order-independent: the halves may commit in any order.
        """
        try:
            results = await self._apply_with_db_retry([inc for _, inc in part])
        except Exception as exc:
            if db_problem(exc) is not None:
                raise
            if len(part) == 1:
                i, inc = part[0]
                decisions[i] = self._failed(exc, inc, batch[i])
                return
            log.warning("batch of %d failed (%s); splitting it", len(part), one_line(exc))
            mid = len(part) // 2
            await self._apply_or_split(part[:mid], batch, decisions)
            await self._apply_or_split(part[mid:], batch, decisions)
            return
        for (i, inc), res in zip(part, results, strict=True):
            decisions[i] = _decision(res, inc.msg)

    def _failed(self, exc: Exception, inc: Incoming, delivery: Delivery) -> Decision:
        tries = _retries(delivery.headers)
        reason = f"processing failed: {type(exc).__name__}: {exc}"[:500]
        log.error("message failed (attempt %d): %s", tries + 1, reason)
        if tries < self._max_retries:
            return Decision(Outcome.RETRY, reason, inc.msg)
        return Decision(Outcome.DEAD_LETTER, f"{reason} (after {tries + 1} attempts)", inc.msg)

    async def _apply_with_db_retry(self, items: list[Incoming]) -> list[Result]:
        delay = 0.1
        while True:
            try:
                if self._fault is not None:
                    for inc in items:
                        self._fault(inc.msg)
                results = await self._store.apply(items)
            except Exception as exc:
                problem = db_problem(exc)
                if problem is None:
                    raise
                self._on_db_state(problem)
                log.warning(
                    "%s (%s); holding %d messages, retrying in %.1f s",
                    problem.value,
                    one_line(exc),
                    len(items),
                    delay,
                )
                await self._sleep(delay)
                delay = min(delay * 2, self._retry_max_delay)
                continue
            self._on_db_state(None)
            return results


def _decision(res: Result, msg: Message) -> Decision:
    return Decision(res.outcome, res.reason, msg)


def _retries(headers: Mapping[str, Any]) -> int:
    value = headers.get(RETRIES_HEADER, 0)
    return value if isinstance(value, int) and value >= 0 else 0
