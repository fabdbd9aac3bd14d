"""Edge cases of applying valid messages to the real database."""

from __future__ import annotations

import json

from dispatcher.core.handling import Incoming, Outcome
from dispatcher.core.messages import parse
from dispatcher.db.engine import engine_scope
from dispatcher.db.store import EventStore
from dispatcher.simulation.publish import SIM_CLUSTER, create_world
from tests.support import Env


async def test_nul_character_in_a_valid_message_is_applied(env: Env) -> None:
    settings = env.settings()
    async with engine_scope(settings) as engine:
        world = await create_world(engine, 1)
        vm = world.vm_ids[0]
        body = {
            "type": "ganeti-op-status",
            "instance": f"{env.prefix}-{vm}",
            "operation": "OP_INSTANCE_CREATE",
            "jobId": 7,
            "status": "error",
            "logmsg": "bad\u0000byte",
            "event_time": [1_795_000_000, 0],
        }
        msg = parse(json.dumps(body).encode())
        assert msg.logmsg == "bad\ufffdbyte"  # type: ignore[union-attr]
        store = EventStore(engine, env.prefix)
        try:
            (result,) = await store.apply([Incoming.of(msg)])
        finally:
            await store.close()
    assert result.outcome is Outcome.APPLIED
    shown = env.json("server", "show", str(vm))
    assert shown["operstate"] == "ERROR"
    assert shown["backendlogmsg"] == "bad\ufffdbyte"


def test_only_real_nul_characters_are_replaced() -> None:
    def logmsg(raw_json_string: str) -> str | None:
        body = (
            '{"type": "ganeti-op-status", "instance": "snf-1", "operation": "OP_X",'
            f' "jobId": 1, "status": "error", "logmsg": {raw_json_string},'
            ' "event_time": [1, 0]}'
        )
        return parse(body.encode()).logmsg  # type: ignore[union-attr]

    assert logmsg('"a\\u0000b"') == "a\ufffdb"
    # an escaped backslash, then the text u0000: no NUL, kept as written
    assert logmsg('"a\\\\u0000b"') == "a\\u0000b"
    assert logmsg('"a\\\\\\u0000b"') == "a\\\ufffdb"


async def test_long_strings_in_a_valid_message_are_applied(env: Env) -> None:
    """CONTRACT §4 bounds no string: a long opcode, MAC or address is stored whole, a long
    helper subtype is applied, and a name too long to be ours is acked as not ours (not
    dead-lettered)."""
    settings = env.settings()
    opcode = "OP_" + "X" * 500
    mac = "aa:" * 200 + "ff"
    ip6 = "2001:db8::" + "1" * 300
    async with engine_scope(settings) as engine:
        world = await create_world(engine, 1)
        vm = world.vm_ids[0]
        net = world.networks[0].id
        base = {"instance": f"{env.prefix}-{vm}", "event_time": [1_795_000_000, 0]}
        bodies = [
            {
                **base,
                "type": "ganeti-op-status",
                "operation": opcode,
                "jobId": 7,
                "status": "success",
                "logmsg": "",
                "nics": [{"network": f"{env.prefix}-net-{net}", "mac": mac, "ipv6": ip6}],
            },
            {
                **base,
                "type": "image-helper",
                "subtype": "s" * 300,
                "messages": ["m"],
                "event_time": [1_795_000_001, 0],
            },
            {
                **base,
                "type": "ganeti-op-status",
                "instance": f"{env.prefix}-" + "9" * 5000,
                "operation": "OP_INSTANCE_STARTUP",
                "jobId": 8,
                "status": "success",
                "logmsg": None,
            },
        ]
        store = EventStore(engine, env.prefix)
        try:
            results = await store.apply(
                [Incoming.of(parse(json.dumps(b).encode())) for b in bodies]
            )
        finally:
            await store.close()
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED, Outcome.IGNORED]
    shown = env.json("server", "show", str(vm))
    assert shown["backendopcode"] == opcode
    assert [(n["mac"], n["ipv6"]) for n in shown["nics"]] == [(mac, ip6)]
    assert [d["source"] for d in shown["diagnostics"]] == ["image-helper"]


async def test_a_network_made_again_after_removal_comes_back(env: Env) -> None:
    """§5.3 exempts only removed VMs from later messages: a network removed and then made
    again under its name (``reconcile networks --fix``) is ACTIVE again, not deleted."""
    settings = env.settings()
    async with engine_scope(settings) as engine:
        world = await create_world(engine, 0)
        net = world.networks[1].id

        def status(operation: str, job: int, second: int) -> Incoming:
            body = {
                "type": "ganeti-network-status",
                "network": f"{env.prefix}-net-{net}",
                "operation": operation,
                "jobId": job,
                "status": "success",
                "logmsg": "",
                "event_time": [1_795_000_000 + second, 0],
                "cluster": SIM_CLUSTER,
            }
            return Incoming.of(parse(json.dumps(body).encode()))

        store = EventStore(engine, env.prefix)
        try:
            life = [("OP_NETWORK_ADD", 1), ("OP_NETWORK_CONNECT", 2), ("OP_NETWORK_REMOVE", 3)]
            for op, job in life:
                await store.apply([status(op, job, job)])
            removed = env.json("network", "show", str(net))
            # delivered out of order: the connect of the new life before its add
            again = [status("OP_NETWORK_CONNECT", 5, 5), status("OP_NETWORK_ADD", 4, 4)]
            results = await store.apply(again)
        finally:
            await store.close()
    assert (removed["state"], removed["deleted"]) == ("DELETED", True)
    assert [r.outcome for r in results] == [Outcome.APPLIED, Outcome.APPLIED]
    shown = env.json("network", "show", str(net))
    assert (shown["state"], shown["deleted"]) == ("ACTIVE", False)
    [bn] = shown["backends"]
    assert (bn["operstate"], bn["deleted"], bn["backendjobid"]) == ("ACTIVE", False, 5)
