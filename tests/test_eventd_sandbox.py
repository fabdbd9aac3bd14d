"""``dispatcher eventd`` on the real Ganeti 3.0 sandbox (scripts/ganeti-sandbox.sh): real jobs
submitted over RAPI, their queue files read by eventd, the messages read from RabbitMQ.

Where eventd runs. Ganeti's daemons live in the network namespace ``gnt``; the job queue
(/var/lib/ganeti/queue) and ssconf are on the shared filesystem. Two placements work:

- ``netns`` (as on a real master): ``ip netns exec gnt dispatcher eventd``. There
  ``socket.getfqdn()`` is ``node1.gnt.test`` (the namespace's /etc/hosts), so the master check
  needs no help; the broker is the root namespace's RabbitMQ through the sandbox's bridge on
  127.0.0.1:5672, and RAPI is 127.0.0.1:5080 inside.
- ``root``: eventd in the root namespace reads the same files; RabbitMQ and RAPI (through the
  forwarder) are on 127.0.0.1. The host's own name is not the node's, so it is given:
  ``--node-name node1.gnt.test`` (without it eventd rightly refuses to publish).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.core.messages import STATUS_RANK
from dispatcher.eventd.nics import nics_from_instance
from dispatcher.rapi import RapiClient
from dispatcher.rapi.errors import RapiError
from tests.support import PYTHON, ROOT, SANDBOX, sandbox_client, sandbox_env, unique_prefix
from tests.test_eventd import bound_queue, collect_until

pytestmark = pytest.mark.sandbox

AMQP = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(scope="module")
def sandbox(service_env: dict[str, str]) -> dict[str, str]:
    return sandbox_env()


@pytest.fixture
async def rapi(sandbox: dict[str, str]) -> AsyncIterator[RapiClient]:
    async with sandbox_client(sandbox) as client:
        yield client


def _eventd_env(sandbox: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(
        DISPATCHER_AMQP_URL=AMQP,
        DISPATCHER_HTTP_LISTEN="",
        DISPATCHER_LOG_LEVEL="INFO",
        DISPATCHER_GANETI_QUEUE_DIR=sandbox["GANETI_SANDBOX_QUEUE_DIR"],
        DISPATCHER_EVENTD_NIC_SOURCE="rapi",
        DISPATCHER_EVENTD_RAPI_HOST="127.0.0.1",
        DISPATCHER_EVENTD_RAPI_PORT=sandbox["GANETI_SANDBOX_PORT"],
        DISPATCHER_EVENTD_RAPI_USERNAME=sandbox["GANETI_SANDBOX_RO_USER"],
        DISPATCHER_EVENTD_RAPI_PASSWORD_FILE=sandbox["GANETI_SANDBOX_RO_PASSWORD_FILE"],
        DISPATCHER_EVENTD_RAPI_CA_FILE=sandbox["GANETI_SANDBOX_CA_FILE"],
    )
    return env


def _eventd_argv(where: str, sandbox: dict[str, str], *extra: str) -> list[str]:
    argv = [PYTHON, "-m", "dispatcher", "eventd", *extra]
    if where == "netns":
        return ["ip", "netns", "exec", sandbox["GANETI_SANDBOX_NETNS"], *argv]
    return [*argv, "--node-name", sandbox["GANETI_SANDBOX_NODE"]]


@contextlib.asynccontextmanager
async def running_eventd(where: str, sandbox: dict[str, str]) -> AsyncIterator[list[str]]:
    proc = await asyncio.create_subprocess_exec(
        *_eventd_argv(where, sandbox),
        env=_eventd_env(sandbox),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    watching = asyncio.Event()

    async def read() -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            lines.append(line.decode(errors="replace").rstrip())
            if " watching " in lines[-1]:
                watching.set()

    reader = asyncio.create_task(read())
    try:
        waiting = asyncio.create_task(watching.wait())
        await asyncio.wait({waiting, reader}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert watching.is_set(), "\n".join(lines[-30:])
        yield lines
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 60)
        await reader
    assert rc == 0, "\n".join(lines[-30:])


async def _job_ok(rapi: RapiClient, job_id: int) -> dict[str, Any]:
    result = await rapi.wait_for_job(job_id, timeout=180)
    assert result["status"] == "success", result
    return result


async def _cleanup(rapi: RapiClient, instance: str, network: str) -> None:
    steps: list[Callable[[], Awaitable[int]]] = [
        lambda: rapi.delete_instance(instance),
        lambda: rapi.disconnect_network(network, "default"),
        lambda: rapi.delete_network(network),
    ]
    for step in steps:
        with contextlib.suppress(RapiError, TimeoutError):
            await rapi.wait_for_job(await step(), timeout=180)


async def _an_os(sandbox: dict[str, str]) -> str:
    """An OS the cluster offers (GET /2/os; the RAPI client has no call for it)."""
    ctx = ssl.create_default_context(cafile=sandbox["GANETI_SANDBOX_CA_FILE"])
    auth = (
        sandbox["GANETI_SANDBOX_RO_USER"],
        Path(sandbox["GANETI_SANDBOX_RO_PASSWORD_FILE"]).read_text().strip(),
    )
    url = f"https://{sandbox['GANETI_SANDBOX_HOST']}:{sandbox['GANETI_SANDBOX_PORT']}/2/os"
    async with httpx.AsyncClient(verify=ctx, auth=auth, trust_env=False, timeout=60) as http:
        names = (await http.get(url)).raise_for_status().json()
    assert names, "the sandbox cluster offers no OS"
    return str(names[0])


def _is(body: dict[str, Any], job_id: int, status: str) -> bool:
    return body.get("jobId") == job_id and body.get("status") == status


def _statuses_in_order(bodies: list[dict[str, Any]]) -> list[str]:
    statuses = [b["status"] for b in bodies]
    assert len(statuses) == len(set(statuses)), f"duplicate status in one process: {statuses}"
    assert statuses == sorted(statuses, key=lambda s: STATUS_RANK[s]), statuses
    return statuses


@pytest.mark.parametrize("where", ["netns", "root"])
async def test_eventd_on_the_sandbox(where: str, sandbox: dict[str, str], rapi: RapiClient) -> None:
    prefix = unique_prefix()
    instance, network = f"{prefix}-1", f"{prefix}-net-1"
    subnet = f"10.77.{random.randint(100, 250)}"
    cluster, node = sandbox["GANETI_SANDBOX_CLUSTER"], sandbox["GANETI_SANDBOX_NODE"]
    os_name = await _an_os(sandbox)
    keys = (f"ganeti.{prefix}.event.op", f"ganeti.{prefix}.event.network")
    try:
        async with bound_queue(AMQP, *keys) as queue, running_eventd(where, sandbox):
            add = await rapi.create_network(network, f"{subnet}.0/24", gateway=f"{subnet}.1")
            await _job_ok(rapi, add)
            connect = await rapi.connect_network(network, "default", "bridged", "br0")
            await _job_ok(rapi, connect)
            create = await rapi.create_instance(
                {
                    "mode": "create",
                    "name": instance,
                    "disk_template": "diskless",
                    "disks": [],
                    "nics": [{"network": network, "ip": "pool"}],
                    "os_type": os_name,
                    "hypervisor": "fake",
                    "pnode": node,
                    "beparams": {"memory": 128, "vcpus": 1},
                    "ip_check": False,
                    "name_check": False,
                    "start": True,
                    "tags": ["synnefo:network:0:protected"],
                }
            )
            await _job_ok(rapi, create)
            info = await rapi.get_instance(instance)
            # eventd reads the NICs from the cluster when it sees the success: remove the
            # instance only after that (its start-up catch-up of an old queue can be slow)
            early = await collect_until(queue, lambda b: _is(b, create, "success"), 180)
            remove = await rapi.delete_instance(instance)
            await _job_ok(rapi, remove)
            # the remove's success is the last message of the test (jobs are read in order)
            got = early + await collect_until(queue, lambda b: _is(b, remove, "success"), 60)
    finally:
        await _cleanup(rapi, instance, network)

    def of(job_id: int) -> list[dict[str, Any]]:
        return [b for _, b in got if b["jobId"] == job_id]

    for _, body in got:
        assert body["cluster"] == cluster
    # networks: OP_NETWORK_ADD and _CONNECT, with the fields the consumer uses
    [add_ok] = [b for b in of(add) if b["status"] == "success"]
    assert add_ok["type"] == "ganeti-network-status" and add_ok["network"] == network
    assert add_ok["operation"] == "OP_NETWORK_ADD"
    assert (add_ok["subnet"], add_ok["gateway"]) == (f"{subnet}.0/24", f"{subnet}.1")
    [conn_ok] = [b for b in of(connect) if b["status"] == "success"]
    assert conn_ok["operation"] == "OP_NETWORK_CONNECT" and conn_ok["group_name"] == "default"
    _statuses_in_order(of(add))
    # the create: each status at most once, in order, ending in success with the NICs
    creates = of(create)
    assert _statuses_in_order(creates)[-1] == "success"
    assert {b["operation"] for b in creates} == {"OP_INSTANCE_CREATE"}
    assert {b["instance"] for b in creates} == {instance}
    success = creates[-1]
    assert success["event_time"] >= creates[0]["event_time"]
    assert success["logmsg"]  # Ganeti logs "* starting instance..." and the like
    nics = success["instance_nics"]
    assert nics == nics_from_instance(info)
    assert [n["mac"] for n in nics] == info["nic.macs"]
    assert [n["ip"] for n in nics] == info["nic.ips"] and nics[0]["ip"].startswith(subnet)
    assert [n["network"] for n in nics] == [network]
    assert nics[0]["firewall"] == "protected"
    assert all("instance_nics" not in b for b in creates[:-1])
    # the remove: success, no NIC lookup for a gone instance
    removes = of(remove)
    assert _statuses_in_order(removes)[-1] == "success"
    assert "instance_nics" not in removes[-1]


async def test_root_namespace_without_node_name_is_not_the_master(
    sandbox: dict[str, str],
) -> None:
    if socket.getfqdn().lower() == sandbox["GANETI_SANDBOX_NODE"]:
        pytest.skip("the root namespace already resolves to the node's name")
    run = await asyncio.to_thread(
        subprocess.run,
        [PYTHON, "-m", "dispatcher", "eventd", "--once"],
        env={**_eventd_env(sandbox), "DISPATCHER_EVENTD_NIC_SOURCE": "none"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"not the master (master: {sandbox['GANETI_SANDBOX_NODE']})" in run.stderr
    assert "published 0 messages" in run.stderr


@contextlib.contextmanager
def monitor_prefix(command: str) -> Iterator[None]:
    """Make the sandbox OS's create script copy its image through ``command`` (the script's
    SANDBOX_MONITOR_CMD interface), and take it away again afterwards."""
    env = {**os.environ, "SANDBOX_MONITOR_CMD": command}
    subprocess.run(
        ["bash", str(SANDBOX), "start"], env=env, check=True, capture_output=True, timeout=900
    )
    try:
        yield
    finally:
        env.pop("SANDBOX_MONITOR_CMD")
        subprocess.run(
            ["bash", str(SANDBOX), "start"], env=env, check=True, capture_output=True, timeout=900
        )


async def test_progress_monitor_inside_the_os_create_script(
    sandbox: dict[str, str], rapi: RapiClient
) -> None:
    """Ganeti runs the OS create script in the namespace; it copies an 8 MiB image through
    ``dispatcher progress-monitor``, which publishes to the broker through the bridge."""
    images = Path("/srv/ganeti/images")
    image = next((p for p in sorted(images.glob("*")) if p.is_file()), None)
    if image is None:
        pytest.skip("the sandbox has no image under /srv/ganeti/images")
    prefix = unique_prefix()
    instance = f"{prefix}-2"
    dispatcher_bin = Path(PYTHON).with_name("dispatcher")
    command = f'{dispatcher_bin} progress-monitor -i "$INSTANCE_NAME" -r <bytes> --interval 0.3 --'
    os_name = await _an_os(sandbox)
    try:
        async with bound_queue(AMQP, f"ganeti.{prefix}.event.progress") as queue:
            with monitor_prefix(command):
                create = await rapi.create_instance(
                    {
                        "mode": "create",
                        "name": instance,
                        "disk_template": "file",
                        "disks": [{"size": 1024}],
                        "file_driver": "loop",
                        "nics": [{}],
                        "os_type": os_name,
                        "osparams": {"img_id": image.name},
                        "hypervisor": "fake",
                        "pnode": sandbox["GANETI_SANDBOX_NODE"],
                        "beparams": {"memory": 128, "vcpus": 1},
                        "ip_check": False,
                        "name_check": False,
                        "start": False,
                    }
                )
                await _job_ok(rapi, create)
            # the final 100 is the monitor's last message
            got = await collect_until(queue, lambda b: b["rprogress"] == 100.0, 60)
    finally:
        with contextlib.suppress(RapiError, TimeoutError):
            await rapi.wait_for_job(await rapi.delete_instance(instance), timeout=180)
    bodies = [b for _, b in got]
    assert {(b["type"], b["instance"]) for b in bodies} == {("ganeti-create-progress", instance)}
    values = [b["rprogress"] for b in bodies]
    assert values[-1] == 100.0
    assert len(values) >= 3 and values[:-1] == sorted(values[:-1]), values
    assert 0 < values[0] < 100, values
