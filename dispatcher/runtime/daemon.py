"""``dispatcher run``: the composition root. Every resource is entered on one exit stack,
so teardown runs in reverse order whatever happens; signals only set the stop event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dispatcher import metrics, migrate
from dispatcher.core.messages import Message
from dispatcher.db.engine import engine_scope
from dispatcher.db.errors import DbProblem, is_transient
from dispatcher.db.liveness import liveness, record_heartbeat
from dispatcher.db.store import EventStore
from dispatcher.pipeline.consumer import Consumer, ConsumerState
from dispatcher.pipeline.processor import Processor
from dispatcher.runtime.health import HealthServer
from dispatcher.runtime.sdnotify import Notifier, watchdog_task
from dispatcher.runtime.signals import stop_on_signals
from dispatcher.settings import Settings

log = logging.getLogger(__name__)

LIVENESS_SAMPLE_S = 2.0


async def database_answers(engine: AsyncEngine, limit: float = 2.0) -> bool:
    try:
        async with asyncio.timeout(limit), engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable now"
        if not is_transient(exc):
            log.warning("database check failed: %s", exc)
        return False
    return True


async def _wait_for_database(engine: AsyncEngine, stop: asyncio.Event, notifier: Notifier) -> bool:
    delay = 0.5
    while not stop.is_set():
        if await database_answers(engine, limit=10):
            return True
        notifier.status("waiting for the database")
        log.warning("database not reachable; retrying in %.1f s", delay)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 10.0)
    return False


async def _sample_liveness(engine: AsyncEngine, period: float) -> None:
    """The per-cluster silence gauges, from the database (every daemon's view is the same)."""
    while True:
        try:
            async with AsyncSession(engine) as s:
                rows = [r for r in await liveness(s) if not r.offline]
        except Exception as exc:  # noqa: BLE001 - a sample missed is not worth more
            log.debug("cluster liveness not sampled: %s", exc)
        else:
            for gauge in (
                metrics.CLUSTER_SILENT,
                metrics.CLUSTER_LAST_HEARTBEAT,
                metrics.CLUSTER_LAST_EVENT,
            ):
                gauge.clear()
            for r in rows:
                metrics.CLUSTER_SILENT.labels(r.clustername).set(round(r.silent_s, 3))
                for gauge, at in (
                    (metrics.CLUSTER_LAST_HEARTBEAT, r.last_heartbeat),
                    (metrics.CLUSTER_LAST_EVENT, r.last_event),
                ):
                    if at is not None:
                        gauge.labels(r.clustername).set(at.timestamp())
        await asyncio.sleep(period)


def fault_injector(settings: Settings) -> Callable[[Message], None] | None:
    """Test seam: make processing raise for the named instances (see README, testing)."""
    names = settings.fault_inject_instances
    if not names:
        return None

    def fail(msg: Message) -> None:
        if getattr(msg, "instance", None) in names:
            raise RuntimeError(f"injected fault for {msg.instance}")  # type: ignore[union-attr]

    return fail


def _ignore(_: object) -> None:
    return None


async def run(settings: Settings, *, stop: asyncio.Event | None = None) -> int:
    stop = stop or asyncio.Event()
    notifier = Notifier()
    state = ConsumerState()
    try:
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(stop_on_signals(stop, notifier))
            engine = await stack.enter_async_context(engine_scope(settings))

            async def readiness() -> dict[str, bool]:
                return {
                    "database": await database_answers(engine),
                    "broker": state.broker_connected,
                    "consuming": state.consuming,
                    # a held batch on a wrong schema is not waited out by itself
                    "schema": state.db_problem is not DbProblem.SCHEMA,
                }

            await stack.enter_async_context(HealthServer(settings.http_listen, readiness))
            await stack.enter_async_context(watchdog_task(notifier))
            notifier.status("connecting to the database")
            if not await _wait_for_database(engine, stop, notifier):
                return 0
            # before the topology and the first delivery: on a schema this code does not know,
            # every valid event would become a dead letter
            await migrate.require_head(engine)

            def on_db_state(problem: DbProblem | None) -> None:
                if state.db_problem != problem:
                    notifier.status(f"{problem.value}, retrying" if problem else "consuming")
                    if problem is DbProblem.UNREACHABLE:
                        metrics.DB_RECONNECTS.inc()
                state.db_problem = problem

            processor = Processor(
                EventStore(engine, settings.prefix),
                max_retries=settings.max_retries,
                retry_max_delay=settings.db_retry_max,
                on_db_state=on_db_state,
                fault=fault_injector(settings),
            )
            state.on_consuming.append(lambda: _ignore(notifier.ready("consuming")))
            notifier.status("connecting to the broker")
            sampler = asyncio.create_task(_sample_liveness(engine, LIVENESS_SAMPLE_S))
            try:
                await Consumer(
                    settings,
                    processor,
                    state=state,
                    on_heartbeat=lambda hb: record_heartbeat(engine, hb),
                ).run(stop)
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            log.info("stopped")
            return 0
    finally:
        notifier.close()
