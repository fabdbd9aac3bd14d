"""Through the real broker and database: each message type changes the database as CONTRACT
§5.3 says, malformed ones land in ``<queue>-dl`` with their reason (§5.4), foreign and
unknown names are acked without change, and the daemon stays up throughout."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from dispatcher.db.engine import engine_scope
from dispatcher.pipeline.topology import routing_key_for
from dispatcher.simulation.publish import SIM_CLUSTER, create_world, publish
from tests.support import Env, async_wait_until, daemon, op_status

T0 = 1_795_000_000


async def _world(env: Env, vms: int = 3) -> Any:
    async with engine_scope(env.settings()) as engine:
        return await create_world(engine, vms)


async def _publish(env: Env, *bodies: dict[str, Any]) -> None:
    msgs = [(routing_key_for(env.prefix, b["type"]), b) for b in bodies]
    await publish(env.settings(), msgs)


async def _publish_raw(env: Env, routing_key: str, body: bytes) -> None:
    conn = await aio_pika.connect(env.vars["DISPATCHER_AMQP_URL"])
    try:
        channel = await conn.channel()
        exchange = await channel.get_exchange("ganeti")
        await exchange.publish(aio_pika.Message(body, delivery_mode=2), routing_key=routing_key)
    finally:
        await conn.close()


async def _dead_letters(env: Env, queue: str) -> list[dict[str, Any]]:
    return env.json("queue", "inspect", queue)


def _server(env: Env, vm_id: int) -> dict[str, Any]:
    return env.json("server", "show", str(vm_id))


async def test_each_type_is_applied(env: Env) -> None:
    world = await _world(env)
    vm = world.vm_ids[0]
    inst = f"{env.prefix}-{vm}"
    pub, priv = world.networks[0], world.networks[1]
    with daemon(env) as d:
        await _publish(
            env,
            op_status(inst, "OP_INSTANCE_CREATE", 10, "running", (T0, 0)),
            {
                "type": "ganeti-create-progress",
                "instance": inst,
                "rprogress": 42.9,
                "event_time": [T0 + 1, 0],
            },
            {
                "type": "image-warning",
                "instance": inst,
                "messages": ["disk", "slow"],
                "event_time": [T0 + 2, 0],
            },
        )

        async def building() -> bool:
            s = _server(env, vm)
            return s["buildpercentage"] == 42 and s["backendjobstatus"] == "running"

        await async_wait_until(building, 30, what="progress applied")
        s = _server(env, vm)
        assert s["operstate"] == "BUILD"
        assert s["diagnostics"][0]["level"] == "WARNING"
        assert s["diagnostics"][0]["message"] == "disk slow"
        nics = [
            {
                "network": f"{env.prefix}-net-{pub.id}",
                "mac": "aa:00:00:00:00:01",
                "ip": "192.0.2.5",
                "firewall": "limited",
            },
            {"network": f"{env.prefix}-net-{priv.id}", "mac": "aa:00:00:00:00:02"},
        ]
        await _publish(
            env,
            op_status(inst, "OP_INSTANCE_CREATE", 10, "success", (T0 + 3, 0), instance_nics=nics),
        )

        async def started() -> bool:
            return _server(env, vm)["operstate"] == "STARTED"

        await async_wait_until(started, 30, what="create success")
        s = _server(env, vm)
        assert s["backendjobid"] == 10 and s["backendopcode"] == "OP_INSTANCE_CREATE"
        assert s["backendtime"] == datetime.fromtimestamp(T0 + 3, UTC).isoformat().replace(
            "+00:00", "Z"
        )
        assert [
            (n["index"], n["network_id"], n["mac"], n["ipv4"], n["firewall_profile"])
            for n in s["nics"]
        ] == [
            (0, pub.id, "aa:00:00:00:00:01", "192.0.2.5", "PROTECTED"),
            (1, priv.id, "aa:00:00:00:00:02", "", ""),
        ]
        # net-status replaces the NIC set; an unprotected tag on the public network
        await _publish(
            env,
            {
                "type": "ganeti-net-status",
                "instance": inst,
                "event_time": [T0 + 4, 0],
                "nics": [
                    {
                        "network": f"{env.prefix}-net-{pub.id}",
                        "mac": "aa:00:00:00:00:01",
                        "ip": "192.0.2.5",
                    }
                ],
            },
        )

        async def one_nic() -> bool:
            return len(_server(env, vm)["nics"]) == 1

        await async_wait_until(one_nic, 30, what="net-status")
        assert _server(env, vm)["nics"][0]["firewall_profile"] == "DISABLED"
        # network jobs on the simulated cluster
        net_name = f"{env.prefix}-net-{priv.id}"
        await _publish(
            env,
            {
                "type": "ganeti-network-status",
                "network": net_name,
                "operation": "OP_NETWORK_ADD",
                "jobId": 20,
                "status": "success",
                "logmsg": None,
                "event_time": [T0, 0],
                "cluster": SIM_CLUSTER,
            },
            {
                "type": "ganeti-network-status",
                "network": net_name,
                "operation": "OP_NETWORK_CONNECT",
                "jobId": 21,
                "status": "success",
                "logmsg": None,
                "event_time": [T0 + 1, 0],
                "cluster": SIM_CLUSTER,
                "group_name": "default",
            },
        )

        async def active() -> bool:
            n = env.json("network", "show", str(priv.id))
            return n["state"] == "ACTIVE"

        await async_wait_until(active, 30, what="network active")
        n = env.json("network", "show", str(priv.id))
        assert n["backends"][0]["backendjobid"] == 21
        # removal
        await _publish(env, op_status(inst, "OP_INSTANCE_REMOVE", 30, "success", (T0 + 9, 0)))

        async def removed() -> bool:
            return bool(_server(env, vm)["deleted"])

        await async_wait_until(removed, 30, what="removal")
        s = _server(env, vm)
        assert s["operstate"] == "DESTROYED" and s["nics"] == []
        assert d.proc is not None and d.proc.poll() is None


MALFORMED: list[tuple[str, str, bytes, str]] = [
    ("op", "not JSON", b"{nope", "not JSON"),
    ("op", "not an object", b"[1, 2]", "not a JSON object"),
    ("op", "unknown type", json.dumps({"type": "ganeti-zzz"}).encode(), "unknown type"),
    (
        "op",
        "missing field",
        json.dumps(
            {
                "type": "ganeti-op-status",
                "instance": "x",
                "operation": "OP",
                "jobId": 1,
                "status": "success",
                "event_time": [1, 0],
            }
        ).encode(),
        "logmsg",
    ),
    (
        "op",
        "string jobId",
        json.dumps(
            {
                "type": "ganeti-op-status",
                "instance": "x",
                "operation": "OP",
                "jobId": "1",
                "status": "success",
                "logmsg": None,
                "event_time": [1, 0],
            }
        ).encode(),
        "jobId",
    ),
    (
        "op",
        "bad status",
        json.dumps(
            {
                "type": "ganeti-op-status",
                "instance": "x",
                "operation": "OP",
                "jobId": 1,
                "status": "done",
                "logmsg": None,
                "event_time": [1, 0],
            }
        ).encode(),
        "status",
    ),
    (
        "progress",
        "bad event_time",
        json.dumps(
            {
                "type": "ganeti-create-progress",
                "instance": "x",
                "rprogress": 3,
                "event_time": [1, 1000000],
            }
        ).encode(),
        "event_time",
    ),
    (
        "network",
        "cluster missing",
        json.dumps(
            {
                "type": "ganeti-network-status",
                "network": "n",
                "operation": "OP_NETWORK_ADD",
                "jobId": 1,
                "status": "success",
                "logmsg": None,
                "event_time": [1, 0],
            }
        ).encode(),
        "cluster",
    ),
    (
        "net",
        "too large",
        b'{"type": "ganeti-net-status", "pad": "' + b"x" * (1024 * 1024) + b'"}',
        "exceeds",
    ),
    (
        "op",
        "wrong queue",
        json.dumps(
            {
                "type": "ganeti-create-progress",
                "instance": "x",
                "rprogress": 3,
                "event_time": [1, 0],
            }
        ).encode(),
        "not accepted",
    ),
]


async def test_malformed_messages_are_dead_lettered_with_reason(env: Env) -> None:
    await _world(env, 1)
    with daemon(env) as d:
        for stream, _, body, _ in MALFORMED:
            await _publish_raw(env, f"ganeti.{env.prefix}.event.{stream}", body)
        by_queue: dict[str, list[dict[str, Any]]] = {}

        async def all_dead() -> bool:
            by_queue.clear()
            for stream in ("op", "net", "network", "progress"):
                by_queue[stream] = await _dead_letters(env, f"{env.prefix}-events-{stream}")
            return sum(map(len, by_queue.values())) >= len(MALFORMED)

        await async_wait_until(all_dead, 60, 0.3, "dead letters")
        for stream, label, _, fragment in MALFORMED:
            reasons = [dl["reason"] for dl in by_queue[stream]]
            assert any(fragment in (r or "") for r in reasons), (label, reasons)
        assert sum(map(len, by_queue.values())) == len(MALFORMED)
        assert d.proc is not None and d.proc.poll() is None
        # inspect did not consume them
        assert len(await _dead_letters(env, f"{env.prefix}-events-op")) == len(by_queue["op"])


@pytest.mark.parametrize("instance", ["other-5", "{p}-999999", "{p}-abc", "{p}-05"])
async def test_foreign_and_unknown_names_are_acked_without_change(env: Env, instance: str) -> None:
    world = await _world(env, 1)
    name = instance.format(p=env.prefix)
    vm = world.vm_ids[0]
    with daemon(env) as d:
        await _publish(env, op_status(name, "OP_INSTANCE_STARTUP", 5, "success", (T0, 0)))
        # a marker behind it: once it is applied, the foreign message was handled
        await _publish(
            env,
            {
                "type": "ganeti-create-progress",
                "instance": f"{env.prefix}-{vm}",
                "rprogress": 7,
                "event_time": [T0, 1],
            },
        )

        async def marker() -> bool:
            return _server(env, vm)["buildpercentage"] == 7

        await async_wait_until(marker, 30, what="marker applied")
        assert 'outcome="ignored"' in d.metrics()
        assert _server(env, vm)["backendjobid"] is None
        for stream in ("op", "progress"):
            assert await _dead_letters(env, f"{env.prefix}-events-{stream}") == []
        assert d.proc is not None and d.proc.poll() is None
