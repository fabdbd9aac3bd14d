"""``dispatcher simulate``: create a simulated cluster's rows, then publish a realistic event
stream for them to the broker (CONTRACT §3/§4 format), optionally writing the state that
the stream must produce."""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from dispatcher.core.names import instance_name
from dispatcher.core.times import datetime_from_us, iso
from dispatcher.core.vm_state import VmContext
from dispatcher.db.models import Backend, Flavor, Network, VirtualMachine
from dispatcher.eventd.publisher import Outgoing, Publisher
from dispatcher.pipeline.topology import declare
from dispatcher.settings import Settings
from dispatcher.simulation.streams import (
    Generator,
    SimNetwork,
    Stream,
    expected_backend_network,
    expected_vm,
)

SIM_CLUSTER = "sim.gnt.test"


@dataclass
class World:
    backend_id: int
    networks: list[SimNetwork]
    vm_ids: list[int]


async def create_world(engine: AsyncEngine, vms: int, networks: int = 3) -> World:
    """Rows the stream refers to: a backend, ``networks`` networks (the first public) and
    ``vms`` servers in BUILD, as the API would have created them."""
    async with engine.begin() as conn:
        backend_id = await conn.scalar(select(Backend.id).where(Backend.clustername == SIM_CLUSTER))
        if backend_id is None:
            backend_id = await conn.scalar(
                insert(Backend)
                .returning(Backend.id)
                .values(
                    clustername=SIM_CLUSTER,
                    host="127.0.0.1",
                    port=5080,
                    insecure=False,
                    offline=False,
                    drained=False,
                    mfree=0,
                    mtotal=0,
                    dfree=0,
                    dtotal=0,
                    pinst_cnt=0,
                    ctotal=0,
                )
            )
        flavor_id = await conn.scalar(
            select(Flavor.id).where(
                Flavor.cpu == 1, Flavor.ram == 128, Flavor.disk == 1, Flavor.disk_template == "file"
            )
        )
        if flavor_id is None:
            flavor_id = await conn.scalar(
                insert(Flavor)
                .returning(Flavor.id)
                .values(cpu=1, ram=128, disk=1, disk_template="file", deleted=False)
            )
        nets = []
        for i in range(networks):
            net_id = await conn.scalar(
                insert(Network)
                .returning(Network.id)
                .values(
                    name=f"sim-net-{i}",
                    subnet="10.0.0.0/16",
                    public=(i == 0),
                    mode="bridged",
                    link="br0",
                    dhcp=False,
                    state="PENDING",
                    deleted=False,
                    action="CREATE",
                )
            )
            assert net_id is not None
            nets.append(SimNetwork(net_id, i == 0, net_id % 250))
        ids: list[int] = []
        for start in range(0, vms, 5000):
            rows = [
                {
                    "name": f"sim-{start + i}",
                    "backend_id": backend_id,
                    "flavor_id": flavor_id,
                    "imageid": "debian-test",
                    "deleted": False,
                    "suspended": False,
                    "action": "CREATE",
                    "operstate": "BUILD",
                    "buildpercentage": 0,
                }
                for i in range(min(5000, vms - start))
            ]
            result = await conn.execute(insert(VirtualMachine).returning(VirtualMachine.id), rows)
            ids.extend(r[0] for r in result)
    assert backend_id is not None
    return World(backend_id, nets, sorted(ids))


def expectations(stream: Stream, world: World, prefix: str) -> dict[str, Any]:
    networks = {n.id: n.public for n in world.networks}
    servers = {}
    for vm_id, bodies in stream.by_vm.items():
        st = expected_vm(bodies, VmContext(prefix, "CREATE", networks))
        servers[str(vm_id)] = {
            "instance": instance_name(prefix, vm_id),
            "operstate": st.operstate,
            "deleted": st.deleted,
            "backendjobid": st.backendjobid,
            "backendopcode": st.backendopcode,
            "backendjobstatus": st.backendjobstatus,
            "backendlogmsg": st.backendlogmsg,
            "buildpercentage": st.buildpercentage,
            "backendtime": _iso_us(st.backendtime_us),
            "nics": [
                {
                    "index": n.index,
                    "network_id": n.network_id,
                    "mac": n.mac,
                    "ipv4": n.ipv4,
                    "ipv6": n.ipv6,
                    "firewall_profile": n.firewall_profile,
                }
                for n in st.nics
            ],
        }
    nets = {}
    for net_id, bodies in stream.by_network.items():
        bn = expected_backend_network(bodies, "CREATE")
        nets[str(net_id)] = {
            "backend_id": world.backend_id,
            "operstate": bn.operstate,
            "deleted": bn.deleted,
            "backendjobid": bn.backendjobid,
            "backendopcode": bn.backendopcode,
            "backendjobstatus": bn.backendjobstatus,
            "backendtime": _iso_us(bn.backendtime_us),
        }
    return {"servers": servers, "networks": nets}


def _iso_us(us: int | None) -> str | None:
    return iso(datetime_from_us(us))


async def publish(
    settings: Settings,
    messages: list[tuple[str, dict[str, Any]]],
    rate: float = 0,
    *,
    window: int = 256,
) -> int:
    """Publish persistently with confirms, ``window`` in flight; paced at ``rate``/s if set.

    Through eventd's publisher, so a broker node lost mid-stream is failed over like eventd
    does: to the next of the comma-separated URLs, unconfirmed messages re-sent (at least
    once; the consumer takes the duplicates)."""
    await _declare_topology(settings)
    publisher = Publisher(
        settings.amqp_urls,
        capacity=max(len(messages), 1),
        window=window,
        connection_name="ganeti-dispatcher-simulate",
    )
    outgoing = [
        Outgoing(key, json.dumps(body).encode(), str(body.get("type"))) for key, body in messages
    ]
    publisher.start()
    try:
        if rate > 0:
            started = time.monotonic()
            step = max(1, int(rate / 50))
            for i in range(0, len(outgoing), step):
                part = outgoing[i : i + step]
                publisher.put(part)
                due = started + (i + len(part)) / rate
                if (delay := due - time.monotonic()) > 0:
                    await asyncio.sleep(delay)  # pacing the producer, not synchronising a test
        else:
            publisher.put(outgoing)
        if not await publisher.drain(None) and publisher.task is not None:
            publisher.task.result()  # the publisher's fatal error (an exchange conflict)
    finally:
        lost = await publisher.close()
    if lost:
        raise RuntimeError(f"{lost} messages not confirmed by the broker")
    return len(outgoing)


async def _declare_topology(settings: Settings) -> None:
    """Declare the queues on the first broker that answers (the consumers' topology, so that
    nothing published before a daemon starts is unroutable)."""
    error: BaseException | None = None
    for url in settings.amqp_urls:
        try:
            conn = await aio_pika.connect(url, timeout=10)
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            error = exc
            continue
        async with conn:
            await declare(await conn.channel(), settings)
        return
    raise ConnectionError(f"no broker reachable: {error}")


async def simulate(
    settings: Settings,
    engine: AsyncEngine,
    *,
    vms: int,
    rate: float = 0,
    seed: int | None = None,
    reorder: int = 50,
    duplicate_rate: float = 0.15,
    expect: Path | None = None,
) -> dict[str, Any]:
    seed = seed if seed is not None else random.randrange(2**31)
    world = await create_world(engine, vms)
    gen = Generator(
        settings.prefix,
        SIM_CLUSTER,
        world.networks,
        seed=seed,
        start_us=time.time_ns() // 1000 - 3_600_000_000,
        job_base=random.Random(seed).randrange(10**6, 10**9),
        duplicate_rate=duplicate_rate,
    )
    stream = gen.stream(
        world.vm_ids, remove_networks={world.networks[-1].id: True}, reorder_window=reorder
    )
    if expect is not None:
        doc = json.dumps(expectations(stream, world, settings.prefix))
        await asyncio.to_thread(expect.write_text, doc)
    sent = await publish(settings, stream.messages, rate)
    return {
        "seed": seed,
        "vms": len(world.vm_ids),
        "first_vm": world.vm_ids[0] if world.vm_ids else None,
        "last_vm": world.vm_ids[-1] if world.vm_ids else None,
        "networks": [n.id for n in world.networks],
        "backend_id": world.backend_id,
        "published": sent,
        "duplicates": stream.duplicates,
    }
