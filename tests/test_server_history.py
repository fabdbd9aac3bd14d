"""``server events`` (a server's history, oldest first) and ``server set-state`` (an
administrator's state, recorded as a synthetic event in that history)."""

from __future__ import annotations

import json

from dispatcher.actions.refresh import ADMIN_LOGMSG
from dispatcher.core.handling import Incoming
from dispatcher.core.messages import parse
from dispatcher.db.engine import engine_scope
from dispatcher.db.store import EventStore
from dispatcher.simulation.publish import create_world
from tests.support import Env, op_status


async def _apply(env: Env, *bodies: dict[str, object]) -> None:
    async with engine_scope(env.settings()) as engine:
        store = EventStore(engine, env.prefix)
        try:
            await store.apply([Incoming.of(parse(json.dumps(b).encode())) for b in bodies])
        finally:
            await store.close()


async def _world(env: Env) -> int:
    async with engine_scope(env.settings()) as engine:
        return (await create_world(engine, 1)).vm_ids[0]


async def test_events_oldest_first_whatever_the_arrival_order(env: Env) -> None:
    vm = await _world(env)
    inst = f"{env.prefix}-{vm}"
    t0 = 1_795_000_000
    progress = {"type": "ganeti-create-progress", "instance": inst, "rprogress": 40,
                "event_time": [t0 + 1, 0]}  # fmt: skip
    # delivered newest first: the history is still listed in CONTRACT §5.2 order
    await _apply(env, op_status(inst, "OP_INSTANCE_CREATE", 9, "success", (t0 + 2, 0)))
    await _apply(env, progress, op_status(inst, "OP_INSTANCE_CREATE", 9, "running", (t0, 5)))

    events = env.json("server", "events", str(vm))
    assert [(e["type"], e["status"], e["detail"]) for e in events] == [
        ("ganeti-op-status", "running", None),
        ("ganeti-create-progress", None, "40%"),
        ("ganeti-op-status", "success", None),
    ]
    assert [e["event_time"] for e in events] == [
        "2026-11-18T11:06:40.000005Z",
        "2026-11-18T11:06:41Z",
        "2026-11-18T11:06:42Z",
    ]
    assert events[0]["job_id"] == 9 and events[0]["operation"] == "OP_INSTANCE_CREATE"
    assert events[1]["body"] == progress
    lines = env.cli("server", "events", str(vm)).stdout.splitlines()
    assert lines[0].split() == ["EVENT_TIME", "TYPE", "OPERATION", "JOB_ID", "STATUS", "DETAIL"]
    assert [line.split()[1] for line in lines[1:]] == [
        "ganeti-op-status",
        "ganeti-create-progress",
        "ganeti-op-status",
    ]
    assert env.json("server", "show", str(vm))["operstate"] == "STARTED"


async def test_events_of_an_unknown_server_is_bad_input(env: Env) -> None:
    proc = env.cli("server", "events", "999999", check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == "dispatcher: no server 999999"


async def test_set_state_is_an_event_in_the_history(env: Env) -> None:
    vm = await _world(env)
    inst = f"{env.prefix}-{vm}"
    await _apply(env, op_status(inst, "OP_INSTANCE_CREATE", 3, "success", (1_795_000_000, 0)))
    assert env.cli("server", "set-state", str(vm), "STOPPED", "--reason", "node  died").stdout == (
        "STOPPED\n"
    )
    shown = env.json("server", "show", str(vm))
    assert shown["operstate"] == "STOPPED"
    assert shown["backendlogmsg"] == f"{ADMIN_LOGMSG}: node died"
    last = env.json("server", "events", str(vm))[-1]
    assert (last["operation"], last["job_id"], last["status"]) == (
        "OP_INSTANCE_SHUTDOWN",
        0,
        "success",
    )
    assert last["detail"] == f"{ADMIN_LOGMSG}: node died"

    doc = env.json("server", "set-state", str(vm), "ERROR", "--reason", "disk lost")
    assert doc["operstate"] == "ERROR" and not doc["deleted"]
    doc = env.json("server", "set-state", str(vm), "DESTROYED", "--reason", "gone by hand")
    assert doc["operstate"] == "DESTROYED" and doc["deleted"]
    assert len(env.json("server", "events", str(vm))) == 4
    # a deleted server takes no more events (§5.3), so no more overrides either
    proc = env.cli("server", "set-state", str(vm), "STARTED", "--reason", "x", check=False)
    assert proc.returncode == 1 and "is deleted" in proc.stderr


async def test_set_state_refuses_bad_input(env: Env) -> None:
    vm = await _world(env)
    build = env.cli("server", "set-state", str(vm), "BUILD", "--reason", "x", check=False)
    assert build.returncode == 2 and "invalid choice" in build.stderr
    empty = env.cli("server", "set-state", str(vm), "STOPPED", "--reason", " ", check=False)
    assert empty.returncode == 2 and "--reason" in empty.stderr
    missing = env.cli("server", "set-state", "999999", "STOPPED", "--reason", "x", check=False)
    assert missing.returncode == 2
    assert env.json("server", "events", str(vm)) == []
    assert env.json("server", "show", str(vm))["operstate"] == "BUILD"
