"""A daemon never runs on a schema it does not know.

At start, ``dispatcher run`` (and every command that uses the database) compares the
database's Alembic revision with the code's head: never migrated, behind or ahead is one
line on stderr, exit 1, and nothing is taken off the queues. A schema that goes wrong under
a running daemon (an undefined table) is never a message's fault: the batch is held, the
daemon reports not ready, nothing is dead-lettered, and the messages go back to the queue
if it stops.
"""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import asyncpg
import httpx
import pytest

from dispatcher import migrate as migrations
from tests.support import Daemon, Env, async_wait_until, op_status, pg_dsn
from tests.test_faults import Tally, depths, publish_raw, routing_key

HEAD = migrations.head()
NEWER = "9999_from_a_newer_dispatcher"


async def _sql(env: Env, *statements: str) -> None:
    conn = await asyncpg.connect(pg_dsn(env.vars["DISPATCHER_DATABASE_URL"]))
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _move_schema(env: Env, to: str) -> None:
    """Put the test's (migrated) database at revision ``to``: ``base`` is never migrated."""
    if to == NEWER:
        await _sql(env, f"UPDATE alembic_version SET version_num = '{NEWER}'")
        return
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(env.vars["DISPATCHER_DATABASE_URL"])
    try:
        await migrations.downgrade(engine, to)
    finally:
        await engine.dispose()


def _expected_line(at: str) -> str:
    if at == "base":
        return (
            f"dispatcher: database at revision none (never migrated), this dispatcher needs "
            f"{HEAD}: run `dispatcher migrate`"
        )
    if at == NEWER:
        return (
            f"dispatcher: database at revision {NEWER}, newer than this dispatcher's {HEAD}"
            " (a newer dispatcher migrated it): upgrade this dispatcher"
        )
    return (
        f"dispatcher: database at revision {at}, this dispatcher needs {HEAD}:"
        " run `dispatcher migrate`"
    )


def _dispatcher_lines(stderr: str) -> list[str]:
    """The command's own lines (the daemon also logs its start-up at INFO)."""
    return [line for line in stderr.splitlines() if line.startswith("dispatcher:")]


@pytest.mark.parametrize("at", ["base", "0001", NEWER], ids=["never-migrated", "older", "newer"])
async def test_run_on_a_schema_it_does_not_know_exits_1_and_consumes_nothing(
    env: Env, at: str
) -> None:
    # a backlog on the declared queues, published while the schema was right
    summary = json.loads(env.cli("simulate", "--vms", "4", "--seed", "9", "--json").stdout)
    before = await depths(env, dead_letters=True)
    assert sum(before.values()) == summary["published"] > 0
    await _move_schema(env, at)

    run = env.cli("run", check=False, timeout=60)
    assert run.returncode == 1, run.stderr
    assert _dispatcher_lines(run.stderr) == [_expected_line(at)], run.stderr
    assert "Traceback" not in run.stderr and "ERROR" not in run.stderr
    assert await depths(env, dead_letters=True) == before

    # the CLI says the same, in one line, whatever the command
    for args in (("server", "list"), ("reconcile", "servers")):
        cli = env.cli(*args, check=False)
        assert cli.returncode == 1, cli.stderr
        assert cli.stderr.splitlines() == [_expected_line(at)]

    if at == NEWER:
        # nor does migrate touch it: there is nothing this code could upgrade it to
        cli = env.cli("migrate", check=False)
        assert cli.returncode == 1, cli.stderr
        assert cli.stderr.splitlines() == [_expected_line(at)]
        return
    # once migrated, the same backlog is consumed to the end, nothing dead-lettered
    env.cli("migrate")
    d = Daemon(env).start()
    try:

        async def drained() -> bool:
            return not any((await depths(env, dead_letters=True)).values())

        await async_wait_until(drained, 120, 0.2, "the backlog consumed")
        tally = Tally()

        def counted() -> bool:
            tally.scrape(d)
            return tally.handled() == summary["published"]

        await async_wait_until(lambda: asyncio.to_thread(counted), 30, 0.1, "every message counted")
        assert tally.outcome("dead_lettered") == 0 and tally.outcome("retried") == 0
        assert d.stop() == 0
    finally:
        d.kill()


def _readyz(d: Daemon) -> tuple[int, dict[str, Any]]:
    r = httpx.get(f"http://127.0.0.1:{d.port}/readyz", timeout=5)
    return r.status_code, r.json()


async def test_a_schema_broken_under_a_running_daemon_holds_messages_not_dead_letters(
    env: Env,
) -> None:
    summary = json.loads(env.cli("simulate", "--vms", "2", "--seed", "5", "--json").stdout)
    vm = env.json("server", "list")[0]
    name = f"{env.prefix}-{vm['id']}"
    shutdown = op_status(name, "OP_INSTANCE_SHUTDOWN", 900_001, "success", (4_000_000_000, 0))
    # a short grace: the held batch cannot finish, and the stop must not wait 10 s for it
    extra = {"DISPATCHER_SHUTDOWN_GRACE": "1", "DISPATCHER_DB_RETRY_MAX": "0.5"}
    d = Daemon(env, extra).start()
    try:
        tally = Tally()

        def consumed() -> bool:  # handled, not just delivered: nothing left in flight
            tally.scrape(d)
            return tally.handled() == summary["published"]

        await async_wait_until(lambda: asyncio.to_thread(consumed), 120, 0.1, "the stream handled")
        # the history table goes away under the running daemon
        await _sql(env, "ALTER TABLE vm_events RENAME TO vm_events_away")
        await publish_raw(env, [(routing_key(env, "op"), json.dumps(shutdown).encode())])

        def held() -> bool:
            code, body = _readyz(d)
            return code == 503 and body["checks"].get("schema") is False

        await async_wait_until(lambda: asyncio.to_thread(held), 60, 0.2, "/readyz 503 (schema)")
        assert "database schema does not match" in d.log()
        tally.scrape(d)
        assert tally.outcome("dead_lettered") == 0 and tally.outcome("retried") == 0
        assert not any((await depths(env, dead_letters=True)).values())  # held, unacked
        d.signal(signal.SIGTERM)
        assert d.proc is not None and d.proc.wait(30) == 0
    finally:
        d.kill()
    # stopped while held: the message is back on its queue, not in a dead-letter queue
    left = await depths(env, dead_letters=True)
    assert left[f"{env.prefix}-events-op"] == 1, left
    assert sum(left.values()) == 1, left
    assert env.json("server", "show", str(vm["id"]))["operstate"] != "STOPPED"

    await _sql(env, "ALTER TABLE vm_events_away RENAME TO vm_events")
    d = Daemon(env).start()
    try:

        def stopped() -> bool:
            return env.json("server", "show", str(vm["id"]))["operstate"] == "STOPPED"

        await async_wait_until(lambda: asyncio.to_thread(stopped), 60, 0.2, "STOPPED applied")
        tally = Tally()

        def counted() -> bool:
            tally.scrape(d)
            return tally.handled() == 1

        await async_wait_until(lambda: asyncio.to_thread(counted), 30, 0.1, "the message counted")
        assert tally.outcome("applied") == 1
        assert d.stop() == 0
    finally:
        d.kill()
    assert not any((await depths(env, dead_letters=True)).values())
