"""CONTRACT §5.4: ``queue retry`` re-publishes dead letters to their original exchange and
routing key, so a message that failed for a reason since mended is applied after all."""

from __future__ import annotations

import json
from typing import Any

from dispatcher.db.engine import engine_scope
from dispatcher.pipeline.topology import routing_key_for
from dispatcher.simulation.publish import create_world, publish
from tests.support import Env, async_wait_until, daemon, op_status

T0 = 1_795_000_000


def _server(env: Env, vm_id: int) -> dict[str, Any]:
    return env.json("server", "show", str(vm_id))


async def test_retry_sends_dead_letters_back_where_they_came_from(env: Env) -> None:
    async with engine_scope(env.settings()) as engine:
        world = await create_world(engine, 2)
    vm, other = world.vm_ids
    inst = f"{env.prefix}-{vm}"
    msg = op_status(inst, "OP_INSTANCE_CREATE", 41, "success", (T0, 0))
    op_queue = f"{env.prefix}-events-op"
    # a processing fault for this instance: retried 0 times, then dead-lettered
    with daemon(
        env, DISPATCHER_FAULT_INJECT_INSTANCES=json.dumps([inst]), DISPATCHER_MAX_RETRIES="0"
    ):
        await publish(env.settings(), [(routing_key_for(env.prefix, msg["type"]), msg)])

        async def dead() -> list[dict[str, Any]]:
            return env.json("queue", "inspect", op_queue)

        letters = await async_wait_until(dead, 60, 0.3, "dead letter")
    assert len(letters) == 1
    assert "injected fault" in letters[0]["reason"]
    assert letters[0]["routing_key"] == f"ganeti.{env.prefix}.event.op"
    assert json.loads(letters[0]["body"]) == msg
    assert _server(env, vm)["operstate"] == "BUILD"
    # the fault is gone: retry all queues, the message is applied, the dead-letter queue empty
    with daemon(env):
        out = env.json("queue", "retry")
        assert out["retried"][op_queue] == 1
        assert sum(out["retried"].values()) == 1

        async def started() -> bool:
            return _server(env, vm)["operstate"] == "STARTED"

        await async_wait_until(started, 60, 0.3, "retried message applied")
        assert env.json("queue", "inspect", op_queue) == []
    assert _server(env, vm)["backendjobid"] == 41
    assert _server(env, other)["operstate"] == "BUILD"


async def test_retry_of_an_invalid_message_dead_letters_it_again(env: Env) -> None:
    op_queue = f"{env.prefix}-events-op"
    # fields missing; the padding makes the body longer than a table cell
    bad = {"type": "ganeti-op-status", "instance": f"{env.prefix}-1", "pad": "p" * 300}
    with daemon(env):
        await publish(env.settings(), [(f"ganeti.{env.prefix}.event.op", bad)])

        async def dead() -> list[dict[str, Any]]:
            return env.json("queue", "inspect", op_queue)

        first = await async_wait_until(dead, 60, 0.3, "dead letter")
        # the plain listing shows each reason and the whole body
        plain = env.cli("queue", "inspect", op_queue).stdout
        assert first[0]["reason"] in plain and first[0]["body"] in plain
        assert plain.rstrip().endswith("1 dead letter(s)")
        assert env.json("queue", "retry", op_queue)["retried"] == {op_queue: 1}

        async def dead_again() -> list[dict[str, Any]] | None:
            letters = env.json("queue", "inspect", op_queue)
            again = [d for d in letters if d["headers"].get("x-dispatcher-dl-retries") == 1]
            return again or None

        again = await async_wait_until(dead_again, 60, 0.3, "dead-lettered again")
    assert len(first) == 1 and len(again) == 1
    assert again[0]["reason"] == first[0]["reason"]
    # an unknown queue name is bad input
    res = env.cli("queue", "retry", "no-such-queue", check=False)
    assert res.returncode == 2 and "unknown queue" in res.stderr
