"""The operator CLI against the real Ganeti 3.0 sandbox: every action goes through
``dispatcher …`` as a subprocess, Ganeti's answer is checked over RAPI, and the database
follows through ``dispatcher run`` consuming the events.

The Ganeti-side producer is not part of this test: after each job ends, the test publishes
the ``ganeti-op-status`` / ``ganeti-network-status`` message Ganeti's job would produce (job
id, opcode, status and end time read from ``GET /2/jobs/N``; the instance's NICs from
``GET /2/instances/NAME``), as the producer will. Each test removes what it created on the
cluster, also when it fails.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dispatcher.actions.reconciliation import SIM_LOGMSG
from dispatcher.pipeline.topology import routing_key_for
from dispatcher.rapi import RapiClient, RapiError, RapiNotFound
from dispatcher.simulation.publish import publish
from tests.support import Env, async_wait_until, daemon

pytestmark = pytest.mark.sandbox

JOB_BUDGET = 180.0  # seconds per job; they take 1-5 s on the sandbox
DB_BUDGET = 30.0  # seconds for the daemon to apply a published event
VM_PASSWORD = "sandbox-Root-pw-7f3a"


class Cluster:
    """The test's handle on the sandbox: RAPI for the truth, AMQP for the events."""

    def __init__(self, env: Env, sandbox: dict[str, str], rapi: RapiClient) -> None:
        self.env, self.sandbox, self.rapi = env, sandbox, rapi
        self.name = sandbox["GANETI_SANDBOX_CLUSTER"]
        self.node = sandbox["GANETI_SANDBOX_NODE"]

    async def finish(self, job_id: int, expect: str = "success") -> dict[str, Any]:
        status = await self.rapi.wait_for_job(job_id, timeout=JOB_BUDGET)
        assert status["status"] == expect, f"job {job_id}: {status.get('opresult')}"
        return status

    async def publish(self, *bodies: dict[str, Any]) -> None:
        msgs = [(routing_key_for(self.env.prefix, b["type"]), b) for b in bodies]
        await publish(self.env.settings(), msgs)

    async def instance_nics(self, instance: str) -> list[dict[str, Any]]:
        inst = await self.rapi.get_instance(instance)
        firewall = {}
        for tag in inst["tags"]:
            parts = tag.split(":")
            if len(parts) == 4 and tag.startswith("synnefo:network:"):
                firewall[int(parts[2])] = parts[3]
        nics = []
        for i, mac in enumerate(inst["nic.macs"]):
            nic = {"network": inst["nic.networks.names"][i], "mac": mac, "ip": inst["nic.ips"][i]}
            if i in firewall:
                nic["firewall"] = firewall[i]
            nics.append(nic)
        return nics

    async def op_status(self, job_id: int, *, nics: bool = False) -> dict[str, Any]:
        """Wait for the job, publish its op-status (with the NICs when asked), and wait for the
        server to show it. Returns the job."""
        job = await self.finish(job_id)
        op = job["ops"][0]
        body: dict[str, Any] = {
            "type": "ganeti-op-status",
            "instance": op["instance_name"],
            "operation": op["OP_ID"],
            "jobId": job["id"],
            "status": job["status"],
            "logmsg": None,
            "event_time": job["end_ts"],
            "cluster": self.name,
        }
        if nics:
            body["instance_nics"] = await self.instance_nics(op["instance_name"])
        await self.publish(body)
        vm_id = int(op["instance_name"].rsplit("-", 1)[1])

        async def applied() -> bool:
            s = self.server(vm_id)
            return s["backendjobid"] == job["id"] and s["backendjobstatus"] == job["status"]

        await async_wait_until(applied, DB_BUDGET, 0.3, f"job {job_id} applied to the server")
        return job

    async def network_status(self, job_id: int) -> dict[str, Any]:
        job = await self.finish(job_id)
        op = job["ops"][0]
        await self.publish(
            {
                "type": "ganeti-network-status",
                "network": op["network_name"],
                "operation": op["OP_ID"],
                "jobId": job["id"],
                "status": job["status"],
                "logmsg": None,
                "event_time": job["end_ts"],
                "cluster": self.name,
                "group_name": op.get("group_name"),
            }
        )
        return job

    def server(self, vm_id: int) -> dict[str, Any]:
        return self.env.json("server", "show", str(vm_id))

    def network(self, net_id: int) -> dict[str, Any]:
        return self.env.json("network", "show", str(net_id))

    async def ganeti_state(self, instance: str) -> tuple[str, bool]:
        inst = await self.rapi.get_instance(instance)
        return inst["admin_state"], inst["oper_state"]


async def _cleanup(rapi: RapiClient, prefix: str) -> None:
    """Remove every instance and network of this test's prefix from the cluster."""
    for name in await rapi.get_instances():
        if name.startswith(f"{prefix}-"):
            try:
                await rapi.wait_for_job(await rapi.delete_instance(name), timeout=JOB_BUDGET)
            except RapiError:
                pass
    for name in await rapi.get_networks():
        if not name.startswith(f"{prefix}-net-"):
            continue
        try:
            info = await rapi.get_network(name)
            jobs = [await rapi.disconnect_network(name, g[0]) for g in info["group_list"]]
            for job in jobs:
                await rapi.wait_for_job(job, timeout=JOB_BUDGET)
            await rapi.wait_for_job(await rapi.delete_network(name), timeout=JOB_BUDGET)
        except RapiError:
            pass


@pytest.fixture
async def cluster(
    env: Env, ganeti_sandbox: dict[str, str], sandbox_rapi: RapiClient
) -> AsyncIterator[Cluster]:
    try:
        yield Cluster(env, ganeti_sandbox, sandbox_rapi)
    finally:
        await _cleanup(sandbox_rapi, env.prefix)


def _add_backend(env: Env, sandbox: dict[str, str]) -> int:
    out = env.cli(
        "backend", "add", sandbox["GANETI_SANDBOX_CLUSTER"],
        "--host", sandbox["GANETI_SANDBOX_HOST"],
        "--port", sandbox["GANETI_SANDBOX_PORT"],
        "--username", sandbox["GANETI_SANDBOX_USER"],
        "--password-file", sandbox["GANETI_SANDBOX_PASSWORD_FILE"],
        "--ca-file", sandbox["GANETI_SANDBOX_CA_FILE"],
    ).stdout  # fmt: skip
    return int(out)


def _close(actual: int, expected: int) -> bool:
    """Live node values move a little between two reads."""
    return abs(actual - expected) <= max(256, expected // 20)


async def test_update_resources_reads_the_node(cluster: Cluster) -> None:
    env = cluster.env
    backend_id = _add_backend(env, cluster.sandbox)
    before = env.json("backend", "show", str(backend_id))
    assert before["mtotal"] == 0 and "password" not in json.dumps(before)
    env.cli("backend", "update-resources", str(backend_id))
    doc = env.json("backend", "show", str(backend_id))
    [node] = [n for n in await cluster.rapi.get_nodes(bulk=True) if n["vm_capable"]]
    assert doc["mtotal"] == node["mtotal"] and doc["ctotal"] == node["ctotal"]
    assert doc["dtotal"] == node["dtotal"] and doc["pinst_cnt"] == node["pinst_cnt"]
    assert _close(doc["mfree"], node["mfree"]) and _close(doc["dfree"], node["dfree"])
    assert doc["mfree"] > 0 and doc["updated"] > before["updated"]
    listing = env.json("backend", "update-resources")
    assert [b["id"] for b in listing] == [backend_id]


# a server's whole life in real Ganeti jobs (create, NICs, stop/start, reboot, remove): ~80 s
# on 2 cores, so 4x that rather than the global 150 s
@pytest.mark.timeout(360)
async def test_server_lifecycle_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    env, rapi, p = cluster.env, cluster.rapi, cluster.env.prefix
    backend_id = _add_backend(env, cluster.sandbox)
    flavor_id = int(env.cli("flavor", "create", "--cpu", "1", "--ram", "128", "--disk", "1").stdout)
    subnet = ipaddress.ip_network(f"10.77.{100 + secrets.randbelow(140)}.0/24")
    password_file = tmp_path / "vm-password"
    password_file.write_text(VM_PASSWORD)

    with daemon(env):
        pass  # declares the queues; while no daemon runs, the database cannot change
    # -- network create: CreateNetwork, then ConnectNetwork to the node group -------------
    doc = env.json("network", "create", "lan", "--subnet", str(subnet),
                   "--gateway", str(subnet.network_address + 1))  # fmt: skip
    net_id, net = doc["id"], f"{p}-net-{doc['id']}"
    assert doc["state"] == "PENDING" and doc["action"] == "CREATE"
    [jobs] = doc["jobs"]
    assert jobs["backend_id"] == backend_id and jobs["error"] is None
    for job in jobs["jobs"]["create"] + jobs["jobs"]["connect"]:
        await cluster.network_status(job)
    info = await rapi.get_network(net)
    assert info["network"] == str(subnet)
    assert [g[0] for g in info["group_list"]] == await rapi.get_groups()

    # -- server create: the instance exists and its job succeeds ---------------------------
    proc = env.cli("server", "create", "web", "--flavor", str(flavor_id), "--image",
                   "debian-test", "--password-file", str(password_file),
                   "--network", str(net_id), "--json")  # fmt: skip
    assert VM_PASSWORD not in proc.stdout + proc.stderr
    created = json.loads(proc.stdout)
    vm_id, inst = created["id"], f"{p}-{created['id']}"
    assert (created["operstate"], created["action"]) == ("BUILD", "CREATE")
    assert created["backend_id"] == backend_id
    await cluster.finish(created["backendjobid"])
    assert await cluster.ganeti_state(inst) == ("up", True)
    # no daemon runs: the server stays in BUILD, where only remove is allowed
    refused = env.cli("server", "stop", str(vm_id), check=False)
    assert refused.returncode == 1 and "BUILD" in refused.stderr

    with daemon(env) as d:

        async def active() -> bool:
            return cluster.network(net_id)["state"] == "ACTIVE"

        await async_wait_until(active, DB_BUDGET, 0.3, "network ACTIVE")
        await cluster.op_status(created["backendjobid"], nics=True)
        s = cluster.server(vm_id)
        assert s["operstate"] == "STARTED"
        [nic] = s["nics"]
        assert nic["network_id"] == net_id and ipaddress.ip_address(nic["ipv4"]) in subnet

        # -- stop, start, reboot: jobs succeed and Ganeti shows the state ----------------------
        job = int(env.cli("server", "stop", str(vm_id)).stdout)
        assert cluster.server(vm_id)["action"] == "STOP"
        await cluster.op_status(job)
        assert await cluster.ganeti_state(inst) == ("down", False)
        assert cluster.server(vm_id)["operstate"] == "STOPPED"

        job = int(env.cli("server", "start", str(vm_id)).stdout)
        await cluster.op_status(job)
        assert await cluster.ganeti_state(inst) == ("up", True)
        assert cluster.server(vm_id)["operstate"] == "STARTED"

        for extra in ((), ("--hard",)):
            doc = env.json("server", "reboot", str(vm_id), *extra)
            assert doc["action"] == "REBOOT" and doc["backendjobid"] in (None, doc["job_id"])
            job = await cluster.op_status(doc["job_id"])
            assert job["ops"][0]["reboot_type"] == ("hard" if extra else "soft")
            assert await cluster.ganeti_state(inst) == ("up", True)
            assert cluster.server(vm_id)["operstate"] == "STARTED"

        # -- firewall: the tag is set; the no-op modify reports the NICs -----------------------
        doc = env.json("server", "firewall", str(vm_id), "ENABLED")
        for job in doc["job_ids"][:-1]:
            await cluster.finish(job)
        await cluster.op_status(doc["job_id"], nics=True)
        tags = await rapi.get_instance_tags(inst)
        assert "synnefo:network:0:protected" in tags
        assert cluster.server(vm_id)["nics"][0]["firewall_profile"] == "ENABLED"
        doc = env.json("server", "firewall", str(vm_id), "PROTECTED")
        for job in doc["job_ids"]:
            await cluster.finish(job)
        tags = await rapi.get_instance_tags(inst)
        assert "synnefo:network:0:limited" in tags
        assert "synnefo:network:0:protected" not in tags

        # -- connect: a second NIC with an address from the pool; disconnect removes it --------
        job = int(env.cli("server", "connect", str(vm_id), str(net_id)).stdout)
        await cluster.op_status(job, nics=True)
        g = await rapi.get_instance(inst)
        assert len(g["nic.macs"]) == 2 and g["nic.networks.names"] == [net, net]
        assert ipaddress.ip_address(g["nic.ips"][1]) in subnet
        nics = cluster.server(vm_id)["nics"]
        assert [n["index"] for n in nics] == [0, 1]
        assert nics[1]["ipv4"] == g["nic.ips"][1] and nics[0]["firewall_profile"] == "PROTECTED"

        bad = env.cli("server", "disconnect", str(vm_id), "5", check=False)
        assert bad.returncode == 2 and "no NIC 5" in bad.stderr
        job = int(env.cli("server", "disconnect", str(vm_id), "1").stdout)
        await cluster.op_status(job, nics=True)
        assert len((await rapi.get_instance(inst))["nic.macs"]) == 1
        assert [n["index"] for n in cluster.server(vm_id)["nics"]] == [0]

        # -- console: the node and the port Ganeti allocated -----------------------------------
        console = env.json("server", "console", str(vm_id))
        g = await rapi.get_instance(inst)
        assert console == {"kind": "vnc", "host": cluster.node, "port": g["network_port"]}
        assert env.cli("server", "console", str(vm_id)).stdout.split()[:2] == ["kind", "vnc"]

        # -- remove: the instance disappears and the server is deleted -------------------------
        job = int(env.cli("server", "remove", str(vm_id)).stdout)
        assert cluster.server(vm_id)["action"] == "DESTROY"
        await cluster.op_status(job)
        with pytest.raises(RapiNotFound):
            await rapi.get_instance(inst)
        s = cluster.server(vm_id)
        assert s["deleted"] is True and s["operstate"] == "DESTROYED" and s["nics"] == []
        again = env.cli("server", "start", str(vm_id), check=False)
        assert again.returncode == 1 and "deleted" in again.stderr

        # -- network remove: disconnect and delete on the cluster ------------------------------
        doc = env.json("network", "remove", str(net_id))
        assert doc["action"] == "DESTROY"
        [jobs] = doc["jobs"]
        assert "remove_nics" not in jobs["jobs"]
        for job in jobs["jobs"]["disconnect"] + jobs["jobs"]["delete"]:
            await cluster.network_status(job)
        with pytest.raises(RapiNotFound):
            await rapi.get_network(net)

        async def deleted() -> bool:
            return bool(cluster.network(net_id)["deleted"])

        await async_wait_until(deleted, DB_BUDGET, 0.3, "network deleted")
        assert d.proc is not None and d.proc.poll() is None, d.log()[-2000:]
        assert VM_PASSWORD not in d.log()


async def test_create_refused_by_the_cluster_leaves_nothing(cluster: Cluster) -> None:
    """A create Ganeti rejects at submission (an unknown disk template is a 400)."""
    env = cluster.env
    _add_backend(env, cluster.sandbox)
    flavor_id = env.cli(
        "flavor", "create", "--cpu", "1", "--ram", "128", "--disk", "1",
        "--disk-template", "no-such-template",
    ).stdout.strip()  # fmt: skip
    proc = env.cli("server", "create", "bad", "--flavor", flavor_id, "--image", "x", check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1
    assert cluster.name in proc.stderr
    assert env.json("server", "list", "--all") == []


async def test_reconcile_without_events(cluster: Cluster) -> None:
    """No event at all reaches the database: reconcile finds the connected network, the
    running server and the failed build, and --fix repairs all three through the store."""
    env, rapi, p = cluster.env, cluster.rapi, cluster.env.prefix
    _add_backend(env, cluster.sandbox)
    flavor_id = env.cli(
        "flavor", "create", "--cpu", "1", "--ram", "128", "--disk", "0",
        "--disk-template", "diskless",
    ).stdout.strip()  # fmt: skip
    subnet = f"10.77.{100 + secrets.randbelow(140)}.0/24"
    doc = env.json("network", "create", "quiet-net", "--subnet", subnet)
    net_id = doc["id"]
    for job in doc["jobs"][0]["jobs"]["create"] + doc["jobs"][0]["jobs"]["connect"]:
        await cluster.finish(job)
    good = env.json("server", "create", "quiet", "--flavor", flavor_id, "--image", "x",
                    "--network", str(net_id))  # fmt: skip
    await cluster.finish(good["backendjobid"])
    # no network and no public network: no NIC, which the default ipolicy refuses
    bad = env.json("server", "create", "nonic", "--flavor", flavor_id, "--image", "x")
    await cluster.finish(bad["backendjobid"], expect="error")

    nets = env.json("reconcile", "networks")
    assert [(f["id"], f["name"]) for f in nets["not_active"]] == [(net_id, f"{p}-net-{net_id}")]
    assert nets["missing"] == nets["hanging"] == nets["orphans"] == [] and nets["errors"] == []
    report = env.json("reconcile", "servers")
    assert report["fix"] is False and report["errors"] == []
    assert [f["id"] for f in report["unsynced_operstate"]] == [good["id"]]
    assert [f["id"] for f in report["unsynced_nics"]] == [good["id"]]
    assert [f["id"] for f in report["build_errors"]] == [bad["id"]]
    assert report["stale"] == report["orphans"] == []
    text = env.cli("reconcile", "servers").stdout
    assert "unsynced_operstate" in text and "build_errors" in text

    assert all(f["fixed"] for f in env.json("reconcile", "networks", "--fix")["not_active"])
    assert cluster.network(net_id)["state"] == "ACTIVE"
    fixed = env.json("reconcile", "servers", "--fix")
    kinds = ("unsynced_operstate", "unsynced_nics", "build_errors")
    assert all(f["fixed"] for kind in kinds for f in fixed[kind]), fixed
    s = cluster.server(good["id"])
    assert s["operstate"] == "STARTED" and s["backendlogmsg"] == SIM_LOGMSG
    [nic] = s["nics"]
    ganeti = await rapi.get_instance(f"{p}-{good['id']}")
    assert (nic["network_id"], nic["ipv4"], nic["mac"]) == (
        net_id,
        ganeti["nic.ips"][0],
        ganeti["nic.macs"][0],
    )
    assert cluster.server(bad["id"])["operstate"] == "ERROR"
    again = env.json("reconcile", "servers")
    assert all(again[kind] == [] for kind in (*kinds, "stale", "orphans")), again
    assert env.cli("reconcile", "networks").stdout.startswith("no differences")


def _gnt_instance(sandbox: dict[str, str], *args: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", sandbox["GANETI_SANDBOX_NETNS"], "gnt-instance", *args],
        check=True,
        capture_output=True,
        timeout=300,
    )


async def test_refresh_reads_the_live_state(cluster: Cluster) -> None:
    """No eventd runs: the instance is changed with ``gnt-instance`` inside the cluster's
    namespace, and ``server refresh`` brings the database in line through simulated events
    in the server's history."""
    env = cluster.env
    _add_backend(env, cluster.sandbox)
    flavor_id = env.cli(
        "flavor", "create", "--cpu", "1", "--ram", "128", "--disk", "0",
        "--disk-template", "diskless",
    ).stdout.strip()  # fmt: skip
    subnet = f"10.77.{100 + secrets.randbelow(140)}.0/24"
    net = env.json("network", "create", "refresh-net", "--subnet", subnet)
    for job in net["jobs"][0]["jobs"]["create"] + net["jobs"][0]["jobs"]["connect"]:
        await cluster.finish(job)
    vm = env.json("server", "create", "r", "--flavor", flavor_id, "--image", "x",
                  "--network", str(net["id"]))  # fmt: skip
    await cluster.finish(vm["backendjobid"])
    instance = vm["instance"]
    assert env.json("server", "show", str(vm["id"]))["operstate"] == "BUILD"

    # without eventd the database never hears of the build, nor of this shutdown
    _gnt_instance(cluster.sandbox, "shutdown", "--timeout=0", instance)
    assert await cluster.ganeti_state(instance) == ("down", False)
    doc = env.json("server", "refresh", str(vm["id"]))
    assert doc["operstate"] == "STOPPED" and doc["backendlogmsg"] == SIM_LOGMSG
    kinds = sorted(f["kind"] for f in doc["findings"])
    assert kinds == ["unsynced_nics", "unsynced_operstate"] and doc["errors"] == []
    assert all(f["fixed"] for f in doc["findings"])
    [nic] = doc["nics"]
    ganeti = await cluster.rapi.get_instance(instance)
    assert (nic["network_id"], nic["ipv4"], nic["mac"]) == (
        net["id"],
        ganeti["nic.ips"][0],
        ganeti["nic.macs"][0],
    )
    ops = [
        (e["operation"], e["detail"])
        for e in env.json("server", "events", str(vm["id"]))
        if e["type"] == "ganeti-op-status"
    ]
    assert ops == [
        ("OP_INSTANCE_CREATE", SIM_LOGMSG),
        ("OP_INSTANCE_SHUTDOWN", SIM_LOGMSG),
    ]
    # nothing differs: nothing is applied
    again = env.json("server", "refresh", str(vm["id"]))
    assert again["findings"] == [] and again["operstate"] == "STOPPED"

    _gnt_instance(cluster.sandbox, "startup", instance)
    assert env.cli("server", "refresh", str(vm["id"])).stdout.splitlines()[-1] == (
        "operstate STARTED"
    )
    _gnt_instance(cluster.sandbox, "remove", "-f", "--shutdown-timeout=0", instance)
    gone = env.json("server", "refresh", str(vm["id"]))
    assert [f["kind"] for f in gone["findings"]] == ["stale"]
    assert gone["operstate"] == "DESTROYED" and gone["deleted"]
    assert env.json("server", "events", str(vm["id"]))[-1]["operation"] == "OP_INSTANCE_REMOVE"
    proc = env.cli("server", "refresh", str(vm["id"]), check=False)
    assert proc.returncode == 1 and "is deleted" in proc.stderr
