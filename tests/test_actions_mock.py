"""Outbound actions against a scripted RAPI (``httpx.MockTransport``) and the real database:
what each action sends, the start_action rules, nothing half-written when Ganeti refuses
(500, 401, timeout), the password never in output or logs, offline backends refused, the
CreateInstance kwargs never mutated, the pnode choice, the CLI's exit codes, and reconcile.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dispatcher.actions import clients as clients_mod
from dispatcher.actions import networks as net_actions
from dispatcher.actions import servers as srv
from dispatcher.actions.clients import ClientPool
from dispatcher.actions.errors import (
    BackendUnavailableError,
    BuildingError,
    ClusterError,
    DeletedError,
    InUseError,
    InvalidActionError,
    InvalidInputError,
    NotFoundError,
    RequestError,
)
from dispatcher.actions.reconciliation import SIM_LOGMSG, reconcile_networks, reconcile_servers
from dispatcher.actions.resources import sum_resources, update_resources
from dispatcher.cli import build_parser
from dispatcher.cli.common import CommandError, UsageError
from dispatcher.db.engine import engine_scope
from dispatcher.db.models import (
    Backend,
    BackendNetwork,
    Flavor,
    Network,
    NetworkInterface,
    VirtualMachine,
)
from dispatcher.rapi import RapiClient
from tests.support import Env

PASSWORD = "Vm-r00t-Pa55word-xyz"
NODE = "node1.example.org"
Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class FakeCluster:
    """A scripted Ganeti: writes get increasing job ids, reads come from the dicts below,
    ``routes`` override any (method, path) once or for good."""

    version: str = "3.0.2"
    nodes: list[dict[str, Any]] = field(
        default_factory=lambda: [{"name": NODE, "vm_capable": True, "mfree": 1000}]
    )
    groups: list[str] = field(default_factory=lambda: ["default"])
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[int, dict[str, Any]] = field(default_factory=dict)
    routes: dict[tuple[str, str], Reply] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    next_job: int = 100

    def __call__(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        content = request.read()
        if path != "/2/info":
            self.seen.append(
                Seen(
                    method,
                    path,
                    parse_qs(request.url.query.decode("ascii")),
                    json.loads(content) if content else None,
                )
            )
        if (method, path) in self.routes:
            reply = self.routes[(method, path)]
            if isinstance(reply, Exception):
                raise reply
            return reply(request) if callable(reply) else reply
        return self._default(method, path)

    def _default(self, method: str, path: str) -> httpx.Response:
        parts = path.strip("/").split("/")
        if method != "GET":
            self.next_job += 1
            return httpx.Response(200, json=self.next_job)
        if path == "/2/info":
            return ok(
                {
                    "software_version": self.version,
                    "name": "c1",
                    "nicparams": {"default": {"mode": "bridged", "link": "br0"}},
                }
            )
        if path == "/2/nodes":
            return ok(self.nodes)
        if path == "/2/groups":
            return ok([{"name": g, "uri": f"/2/groups/{g}"} for g in self.groups])
        if path == "/2/instances":
            return ok(list(self.instances.values()))
        if path == "/2/networks":
            return ok(list(self.networks.values()))
        if len(parts) == 3 and parts[1] == "instances" and parts[2] in self.instances:
            return ok(self.instances[parts[2]])
        if len(parts) == 3 and parts[1] == "networks" and parts[2] in self.networks:
            return ok(self.networks[parts[2]])
        if len(parts) == 3 and parts[1] == "jobs":
            job = self.jobs.get(int(parts[2]))
            return ok(job if job else {"id": int(parts[2]), "status": None})
        return httpx.Response(404, json={"code": 404, "message": "Not Found"})

    def writes(self) -> list[Seen]:
        return [s for s in self.seen if s.method != "GET"]


def ok(value: Any) -> httpx.Response:
    return httpx.Response(200, json=value)


def error(status: int, message: str = "boom") -> httpx.Response:
    return httpx.Response(status, json={"code": status, "message": message, "explain": ""})


def pool_for(*clusters: FakeCluster) -> ClientPool:
    """Backend i (in id order of first use) is served by clusters[i % len]."""
    by_backend: dict[int, FakeCluster] = {}

    def make(backend: Backend) -> RapiClient:
        fake = by_backend.setdefault(backend.id, clusters[len(by_backend) % len(clusters)])
        return RapiClient.from_backend(
            backend, transport=httpx.MockTransport(fake), backoff=0, timeout=5
        )

    return ClientPool(make)


@pytest.fixture
async def engine(env: Env) -> AsyncIterator[AsyncEngine]:
    async with engine_scope(env.settings(), pool_size=2) as eng:
        yield eng


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(engine, expire_on_commit=False) as s:
        yield s


async def add_backend(s: AsyncSession, name: str = "c1", **kw: Any) -> Backend:
    values: dict[str, Any] = {
        "clustername": name,
        "host": "127.0.0.1",
        "port": 5080,
        "username": "u",
        "password": "rapi-pw",
        "insecure": True,
        "offline": False,
        "drained": False,
        "mfree": 0,
        "mtotal": 0,
        "dfree": 0,
        "dtotal": 0,
        "pinst_cnt": 0,
        "ctotal": 0,
    }
    values.update(kw)
    b = Backend(**values)
    s.add(b)
    await s.commit()
    return b


async def add_flavor(s: AsyncSession, template: str = "file", disk: int = 2) -> Flavor:
    f = Flavor(cpu=2, ram=512, disk=disk, disk_template=template, deleted=False)
    s.add(f)
    await s.commit()
    return f


async def add_network(s: AsyncSession, public: bool = False, **kw: Any) -> Network:
    values: dict[str, Any] = {
        "name": "n",
        "subnet": "10.77.5.0/24",
        "gateway": None,
        "public": public,
        "mode": "bridged",
        "link": None,
        "dhcp": False,
        "mac_prefix": None,
        "state": "ACTIVE",
        "deleted": False,
        "action": "CREATE",
    }
    values.update(kw)
    n = Network(**values)
    s.add(n)
    await s.commit()
    return n


async def add_vm(s: AsyncSession, backend: Backend, flavor: Flavor, **kw: Any) -> VirtualMachine:
    values: dict[str, Any] = {
        "name": "vm",
        "backend_id": backend.id,
        "flavor_id": flavor.id,
        "imageid": "img",
        "operstate": "STARTED",
        "action": "CREATE",
        "deleted": False,
        "suspended": False,
        "buildpercentage": 0,
        "backendjobid": 7,
        "backendopcode": "OP_INSTANCE_CREATE",
        "backendjobstatus": "success",
        "backendlogmsg": "x",
    }
    values.update(kw)
    vm = VirtualMachine(**values)
    s.add(vm)
    await s.commit()
    return vm


async def add_nic(s: AsyncSession, vm: VirtualMachine, net: Network, **kw: Any) -> None:
    values: dict[str, Any] = {
        "index": 0,
        "mac": "m",
        "ipv4": "",
        "ipv6": "",
        "firewall_profile": "",
    }
    values.update(kw)
    s.add(NetworkInterface(machine_id=vm.id, network_id=net.id, **values))
    await s.commit()


async def count(s: AsyncSession, model: Any) -> int:
    n = await s.scalar(select(func.count()).select_from(model))
    await s.commit()
    return int(n or 0)


async def fresh(s: AsyncSession, vm_id: int) -> VirtualMachine:
    vm = await s.get(VirtualMachine, vm_id, populate_existing=True)
    assert vm is not None
    await s.commit()
    return vm


def instance_json(name: str, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "os": "snf-image+default",
        "pnode": NODE,
        "oper_state": True,
        "admin_state": "up",
        "network_port": 11000,
        "hvparams": {},
        "tags": [],
        "nic.macs": ["aa:00:00:00:00:01"],
        "nic.ips": ["10.77.5.2"],
        "nic.networks.names": [None],
    }
    doc.update(kw)
    return doc


# -- start_action (reference §e.5) -------------------------------------------------------


def _vm(**kw: Any) -> VirtualMachine:
    values: dict[str, Any] = {
        "id": 5,
        "operstate": "STARTED",
        "deleted": False,
        "suspended": False,
        "action": None,
        "backendjobid": 9,
        "backendopcode": "OP_X",
        "backendjobstatus": "success",
        "backendlogmsg": "m",
    }
    values.update(kw)
    return VirtualMachine(**values)


def test_start_action_rules() -> None:
    with pytest.raises(InvalidActionError):
        srv.start_action(_vm(), "EXPLODE")
    with pytest.raises(DeletedError):
        srv.start_action(_vm(deleted=True), "DESTROY")
    for action in ("START", "STOP", "REBOOT", "SUSPEND", "CREATE"):
        with pytest.raises(BuildingError):
            srv.start_action(_vm(operstate="BUILD"), action)
    vm = _vm(operstate="BUILD")
    srv.start_action(vm, "DESTROY")
    assert (vm.action, vm.deleted, vm.operstate) == ("DESTROY", False, "BUILD")
    assert (vm.backendjobid, vm.backendopcode, vm.backendjobstatus, vm.backendlogmsg) == (
        None,
        None,
        None,
        None,
    )
    vm = _vm()
    srv.start_action(vm, "SUSPEND")
    assert vm.suspended is True
    srv.start_action(vm, "START")
    assert vm.suspended is False and vm.action == "START"


# -- the CreateInstance body ---------------------------------------------------------------


def _flavor(template: str = "file", disk: int = 2) -> Flavor:
    return Flavor(id=1, cpu=2, ram=512, disk=disk, disk_template=template, deleted=False)


def _body(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "instance": "snf-7",
        "flavor": _flavor(),
        "nics": [{"network": "snf-net-3", "ip": "pool"}],
        "image_id": "img-1",
        "image_format": "diskdump",
        "password": PASSWORD,
        "version": (3, 0, 2),
        "kwargs": {"os": "snf-image+default"},
    }
    args.update(kw)
    return srv.create_instance_body(**args)


def test_create_body_from_the_flavor_and_image() -> None:
    body = _body(
        image_properties={"OSFAMILY": "linux"},
        personality=[{"path": "/root/.ssh/authorized_keys", "contents": "a2V5"}],
    )
    assert body["mode"] == "create" and body["name"] == "snf-7"
    assert body["disk_template"] == "file" and body["disks"] == [{"size": 2048}]
    assert body["nics"] == [{"network": "snf-net-3", "ip": "pool"}]
    assert body["beparams"] == {"vcpus": 2, "maxmem": 512, "minmem": 512, "auto_balance": True}
    assert body["osparams"]["img_id"] == "img-1"
    assert body["osparams"]["img_passwd"] == PASSWORD
    assert body["osparams"]["img_format"] == "diskdump"
    assert json.loads(body["osparams"]["img_properties"]) == {"OSFAMILY": "linux"}
    assert json.loads(body["osparams"]["img_personality"])[0]["path"].endswith("authorized_keys")
    assert body["name_check"] is False and body["ip_check"] is False
    assert body["os"] == "snf-image+default"
    assert "pnode" not in body and "__version__" not in body  # the client adds the version


def test_create_body_diskless_and_old_ganeti_memory() -> None:
    body = _body(flavor=_flavor("diskless", 0), version=(2, 5, 2))
    assert body["disks"] == []
    assert body["beparams"] == {"vcpus": 2, "memory": 512, "auto_balance": True}
    assert "img_personality" not in body["osparams"]


def test_create_body_kwargs_merge_and_are_never_mutated() -> None:
    kwargs = {
        "os": "noop",
        "hvparams": {"serial_console": False},
        "beparams": {"auto_balance": False, "memory": 64, "spindle_use": 2},
        "osparams": {"config_url": "https://x"},
        "name_check": True,
        "wait_for_sync": False,
        "instance_name": "not-ours",
        "disks": [{"size": 1}],
    }
    before = copy.deepcopy(kwargs)
    body = _body(kwargs=kwargs, pnode=NODE)
    assert kwargs == before
    body["hvparams"]["serial_console"] = True
    assert kwargs == before
    assert body["name_check"] is True and body["ip_check"] is False  # kwargs over defaults
    assert body["wait_for_sync"] is False and body["hvparams"] == {"serial_console": True}
    assert body["beparams"] == {  # ours over the kwargs', the legacy alias dropped
        "auto_balance": True,
        "spindle_use": 2,
        "vcpus": 2,
        "maxmem": 512,
        "minmem": 512,
    }
    assert body["osparams"]["config_url"] == "https://x" and body["osparams"]["img_id"] == "img-1"
    assert body["disks"] == [{"size": 2048}] and "instance_name" not in body
    assert body["pnode"] == NODE


def test_create_body_pnode_only_without_placement_in_kwargs() -> None:
    assert _body(kwargs={"pnode": "other"}, pnode=NODE)["pnode"] == "other"
    assert "pnode" not in _body(kwargs={"iallocator": "hail"}, pnode=NODE)


# -- create ---------------------------------------------------------------------------------


async def test_create_sends_the_body_and_records_the_row(session: AsyncSession) -> None:
    b = await add_backend(session)
    f = await add_flavor(session)
    n = await add_network(session)
    fake = FakeCluster()
    kwargs = {"os": "noop", "hvparams": {"x": 1}}
    before = copy.deepcopy(kwargs)
    async with pool_for(fake) as pool:
        result = await srv.create_server(
            session,
            pool,
            srv.ServerSpec("web", f.id, "img-1", password=PASSWORD, network_ids=(n.id,)),
            prefix="snf",
            createinstance_kwargs=kwargs,
        )
    assert kwargs == before
    assert [(s.method, s.path) for s in fake.seen] == [
        ("GET", "/2/nodes"),
        ("POST", "/2/instances"),
    ]
    body = fake.seen[-1].body
    vm = await fresh(session, result.vm.id)
    assert body["__version__"] == 1 and body["name"] == f"snf-{vm.id}"
    assert body["pnode"] == NODE and body["os"] == "noop" and body["hvparams"] == {"x": 1}
    assert body["nics"] == [{"network": f"snf-net-{n.id}", "ip": "pool"}]
    assert body["osparams"]["img_passwd"] == PASSWORD
    assert (vm.operstate, vm.action, vm.deleted, vm.backend_id) == ("BUILD", "CREATE", False, b.id)
    assert vm.backendjobid == result.job_id == 101
    assert vm.imageid == "img-1" and vm.name == "web"


async def test_create_pnode_only_on_a_one_node_cluster(session: AsyncSession) -> None:
    await add_backend(session)
    f = await add_flavor(session)
    fake = FakeCluster(
        nodes=[
            {"name": "a", "vm_capable": True},
            {"name": "b", "vm_capable": True},
            {"name": "m", "vm_capable": False},
        ]
    )
    async with pool_for(fake) as pool:
        await srv.create_server(
            session,
            pool,
            srv.ServerSpec("a", f.id, "i", network_ids=()),
            prefix="snf",
            createinstance_kwargs={},
        )
        assert "pnode" not in fake.seen[-1].body
        fake.nodes = [{"name": "a", "vm_capable": True}, {"name": "m", "vm_capable": False}]
        await srv.create_server(
            session,
            pool,
            srv.ServerSpec("b", f.id, "i", network_ids=()),
            prefix="snf",
            createinstance_kwargs={},
        )
        assert fake.seen[-1].body["pnode"] == "a"
        fake.seen.clear()
        await srv.create_server(
            session,
            pool,
            srv.ServerSpec("c", f.id, "i", network_ids=()),
            prefix="snf",
            createinstance_kwargs={"iallocator": "hail"},
        )
        assert [s.path for s in fake.seen] == ["/2/instances"]  # no node listing needed
        assert fake.seen[-1].body["iallocator"] == "hail" and "pnode" not in fake.seen[-1].body


async def test_create_defaults_to_the_public_network_and_random_password(
    session: AsyncSession,
) -> None:
    await add_backend(session)
    f = await add_flavor(session)
    await add_network(session, public=False)
    pub = await add_network(session, public=True, name="public")
    fake = FakeCluster()
    async with pool_for(fake) as pool:
        await srv.create_server(
            session, pool, srv.ServerSpec("a", f.id, "i"), prefix="snf", createinstance_kwargs={}
        )
    body = fake.seen[-1].body
    assert body["nics"] == [{"network": f"snf-net-{pub.id}", "ip": "pool"}]
    assert len(body["osparams"]["img_passwd"]) >= 20


@pytest.mark.parametrize(
    "failure",
    [error(500, "internal"), error(401, "Unauthorized"), httpx.ReadTimeout("slow")],
    ids=["500", "401", "timeout"],
)
async def test_create_refused_leaves_no_row(
    session: AsyncSession, failure: Reply, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await add_backend(session)
    f = await add_flavor(session)
    n = await add_network(session)
    fake = FakeCluster(routes={("POST", "/2/instances"): failure})
    async with pool_for(fake) as pool:
        with pytest.raises(ClusterError) as err:
            await srv.create_server(
                session,
                pool,
                srv.ServerSpec("web", f.id, "img", password=PASSWORD, network_ids=(n.id,)),
                prefix="snf",
                createinstance_kwargs={},
            )
    assert await count(session, VirtualMachine) == 0
    assert "\n" not in err.value.message and "c1" in err.value.message
    if isinstance(failure, Exception):  # no answer: the job may exist after all
        assert "reconcile servers --fix" in err.value.message
    assert PASSWORD not in err.value.message and PASSWORD not in caplog.text


async def test_create_echoed_password_is_scrubbed_from_the_error(session: AsyncSession) -> None:
    await add_backend(session)
    f = await add_flavor(session)
    fake = FakeCluster(routes={("POST", "/2/instances"): error(400, f"bad osparams {PASSWORD}")})
    async with pool_for(fake) as pool:
        with pytest.raises(ClusterError) as err:
            await srv.create_server(
                session,
                pool,
                srv.ServerSpec("w", f.id, "i", password=PASSWORD, network_ids=()),
                prefix="snf",
                createinstance_kwargs={},
            )
    assert PASSWORD not in str(err.value) and "***" in str(err.value)


async def test_create_refuses_offline_drained_and_missing(session: AsyncSession) -> None:
    off = await add_backend(session, "off", offline=True)
    drained = await add_backend(session, "dr", drained=True)
    f = await add_flavor(session)
    fake = FakeCluster()
    async with pool_for(fake) as pool:
        for backend, exc in (
            (off, BackendUnavailableError),
            (drained, BackendUnavailableError),
            (None, BackendUnavailableError),
        ):
            with pytest.raises(exc):
                await srv.create_server(
                    session,
                    pool,
                    srv.ServerSpec("w", f.id, "i", backend_id=backend.id if backend else None),
                    prefix="snf",
                    createinstance_kwargs={},
                )
        with pytest.raises(NotFoundError):
            await srv.create_server(
                session, pool, srv.ServerSpec("w", 999, "i"), prefix="snf", createinstance_kwargs={}
            )
        with pytest.raises(NotFoundError):
            await srv.create_server(
                session,
                pool,
                srv.ServerSpec("w", f.id, "i", network_ids=(999,)),
                prefix="snf",
                createinstance_kwargs={},
            )
    assert fake.seen == [] and await count(session, VirtualMachine) == 0


async def test_create_picks_the_online_backend_with_most_free_memory(
    session: AsyncSession,
) -> None:
    await add_backend(session, "small", mfree=100)
    big = await add_backend(session, "big", mfree=9000)
    await add_backend(session, "off", mfree=99999, offline=True)
    f = await add_flavor(session)
    async with pool_for(FakeCluster()) as pool:
        result = await srv.create_server(
            session, pool, srv.ServerSpec("w", f.id, "i"), prefix="snf", createinstance_kwargs={}
        )
    assert result.backend.id == big.id


# -- power actions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("act", "kw", "action", "method", "suffix", "query"),
    [
        (srv.start_server, {}, "START", "PUT", "/startup", {}),
        (srv.stop_server, {}, "STOP", "PUT", "/shutdown", {}),
        (srv.reboot_server, {}, "REBOOT", "POST", "/reboot", {"type": ["soft"]}),
        (srv.reboot_server, {"hard": True}, "REBOOT", "POST", "/reboot", {"type": ["hard"]}),
        (srv.destroy_server, {}, "DESTROY", "DELETE", "", {}),
    ],
)
async def test_power_actions(
    session: AsyncSession,
    act: Any,
    kw: dict[str, Any],
    action: str,
    method: str,
    suffix: str,
    query: dict[str, list[str]],
) -> None:
    b = await add_backend(session)
    f = await add_flavor(session)
    vm = await add_vm(session, b, f, suspended=True)
    fake = FakeCluster()
    async with pool_for(fake) as pool:
        result = await act(session, pool, vm.id, prefix="snf", **kw)
    [seen] = fake.seen
    assert (seen.method, seen.path, seen.query) == (
        method,
        f"/2/instances/snf-{vm.id}{suffix}",
        query,
    )
    row = await fresh(session, vm.id)
    assert row.action == action and result.job_id == 101
    assert (row.backendjobid, row.backendopcode, row.backendjobstatus, row.backendlogmsg) == (
        None,
        None,
        None,
        None,
    )
    assert row.operstate == "STARTED" and row.deleted is False  # state comes from events only
    assert row.suspended is (action != "START")


@pytest.mark.parametrize(
    "failure", [error(500), error(401), httpx.ReadTimeout("slow")], ids=["500", "401", "timeout"]
)
async def test_power_action_refused_changes_nothing(session: AsyncSession, failure: Reply) -> None:
    b = await add_backend(session)
    f = await add_flavor(session)
    vm_id = (await add_vm(session, b, f)).id  # a failed action rolls back: objects expire
    fake = FakeCluster(routes={("PUT", f"/2/instances/snf-{vm_id}/shutdown"): failure})
    async with pool_for(fake) as pool:
        with pytest.raises(ClusterError) as err:
            await srv.stop_server(session, pool, vm_id, prefix="snf")
    assert "stopping server" in err.value.message
    row = await fresh(session, vm_id)
    assert (row.action, row.backendjobid, row.backendlogmsg) == ("CREATE", 7, "x")


async def test_building_deleted_offline_servers_are_refused(session: AsyncSession) -> None:
    b = await add_backend(session)
    off = await add_backend(session, "off", offline=True)
    f = await add_flavor(session)
    building = (await add_vm(session, b, f, operstate="BUILD")).id
    deleted = (await add_vm(session, b, f, deleted=True, operstate="DESTROYED")).id
    remote = (await add_vm(session, off, f)).id
    fake = FakeCluster()
    async with pool_for(fake) as pool:
        for act in (srv.start_server, srv.stop_server, srv.reboot_server):
            with pytest.raises(BuildingError):
                await act(session, pool, building, prefix="snf")
            with pytest.raises(DeletedError):
                await act(session, pool, deleted, prefix="snf")
            with pytest.raises(BackendUnavailableError, match="offline"):
                await act(session, pool, remote, prefix="snf")
        with pytest.raises(NotFoundError):
            await srv.start_server(session, pool, 999, prefix="snf")
        for op in (
            srv.server_console(session, pool, building, prefix="snf"),
            srv.set_firewall_profile(session, pool, building, "ENABLED", prefix="snf"),
            srv.disconnect_server(session, pool, building, 0, prefix="snf"),
        ):
            with pytest.raises(BuildingError):
                await op
        assert fake.seen == []
        result = await srv.destroy_server(session, pool, building, prefix="snf")
    assert fake.seen[-1].method == "DELETE" and result.vm.action == "DESTROY"
    row = await fresh(session, building)
    assert (row.operstate, row.deleted) == ("BUILD", False)


# -- console, firewall, NICs -------------------------------------------------------------------


async def test_console(session: AsyncSession) -> None:
    b = await add_backend(session)
    f = await add_flavor(session)
    vm = await add_vm(session, b, f)
    fake = FakeCluster(instances={f"snf-{vm.id}": instance_json(f"snf-{vm.id}")})
    async with pool_for(fake) as pool:
        doc = await srv.server_console(session, pool, vm.id, prefix="snf")
        assert doc == {"kind": "vnc", "host": NODE, "port": 11000}
        fake.instances[f"snf-{vm.id}"]["oper_state"] = False
        with pytest.raises(Exception, match="not running"):
            await srv.server_console(session, pool, vm.id, prefix="snf")
    assert fake.writes() == []


async def test_firewall_replaces_the_nics_tag_then_noop_modify(session: AsyncSession) -> None:
    b = await add_backend(session)
    f = await add_flavor(session)
    vm = await add_vm(session, b, f)
    name = f"snf-{vm.id}"
    tags = [
        "synnefo:network:0:unprotected",
        "synnefo:network:0:limited",
        "synnefo:network:1:protected",
        "owner:alice",
    ]
    fake = FakeCluster(
        instances={name: instance_json(name, tags=tags, **{"nic.macs": ["m0", "m1"]})}
    )
    async with pool_for(fake) as pool:
        result = await srv.set_firewall_profile(session, pool, vm.id, "enabled", prefix="snf")
        w = fake.writes()
        assert [(s.method, s.path) for s in w] == [
            ("DELETE", f"/2/instances/{name}/tags"),
            ("PUT", f"/2/instances/{name}/tags"),
            ("PUT", f"/2/instances/{name}/modify"),
        ]
        assert sorted(w[0].query["tag"]) == [
            "synnefo:network:0:limited",
            "synnefo:network:0:unprotected",
        ]
        assert w[1].query["tag"] == ["synnefo:network:0:protected"]
        assert w[2].body == {"os_name": "snf-image+default"}
        assert result.job_id == 103 and result.job_ids == [101, 102, 103]
        fake.seen.clear()
        await srv.set_firewall_profile(session, pool, vm.id, "PROTECTED", prefix="snf", nic_index=1)
        w = fake.writes()
        assert w[0].query["tag"] == ["synnefo:network:1:protected"]
        assert w[1].query["tag"] == ["synnefo:network:1:limited"]
        with pytest.raises(InvalidInputError):
            await srv.set_firewall_profile(session, pool, vm.id, "OPEN", prefix="snf")
        with pytest.raises(InvalidInputError, match="no NIC 2"):
            await srv.set_firewall_profile(
                session, pool, vm.id, "ENABLED", prefix="snf", nic_index=2
            )
    row = await fresh(session, vm.id)
    assert row.action == "CREATE"  # not an action: nothing recorded


@pytest.mark.parametrize(
    ("version", "hotplug"), [("3.0.2", {"hotplug_if_possible": True}), ("3.1.0", {"hotplug": True})]
)
async def test_connect_and_disconnect(
    session: AsyncSession, version: str, hotplug: dict[str, bool]
) -> None:
    b = await add_backend(session)
    f = await add_flavor(session)
    n = await add_network(session)
    gone = await add_network(session, deleted=True)
    vm = await add_vm(session, b, f)
    name = f"snf-{vm.id}"
    fake = FakeCluster(
        version=version, instances={name: instance_json(name, **{"nic.macs": ["m0", "m1"]})}
    )
    async with pool_for(fake) as pool:
        await srv.connect_server(session, pool, vm.id, n.id, prefix="snf")
        assert fake.seen[-1].body == {
            "nics": [["add", -1, {"network": f"snf-net-{n.id}", "ip": "pool"}]],
            **hotplug,
        }
        await srv.disconnect_server(session, pool, vm.id, 1, prefix="snf")
        assert fake.seen[-1].body == {"nics": [["remove", 1, {}]], **hotplug}
        writes = len(fake.writes())
        with pytest.raises(InvalidInputError):
            await srv.disconnect_server(session, pool, vm.id, 2, prefix="snf")
        with pytest.raises(DeletedError):
            await srv.connect_server(session, pool, vm.id, gone.id, prefix="snf")
        with pytest.raises(NotFoundError):
            await srv.connect_server(session, pool, vm.id, 999, prefix="snf")
        assert len(fake.writes()) == writes


async def test_disconnect_from_network_removes_highest_index_first() -> None:
    fake = FakeCluster(
        instances={
            "snf-1": instance_json(
                "snf-1",
                **{
                    "nic.macs": ["a", "b", "c", "d"],
                    "nic.networks.names": ["snf-net-2", "snf-net-9", None, "snf-net-9"],
                },
            )
        }
    )
    async with RapiClient("h", transport=httpx.MockTransport(fake)) as client:
        job = await srv.disconnect_from_network(client, "snf-1", "snf-net-9")
        assert job == 101
        assert fake.seen[-1].body["nics"] == [["remove", 3, {}], ["remove", 1, {}]]
        assert await srv.disconnect_from_network(client, "snf-1", "snf-net-7") is None


# -- networks ---------------------------------------------------------------------------------


async def test_network_create_on_every_online_backend(session: AsyncSession) -> None:
    b1 = await add_backend(session, "c1")
    b2 = await add_backend(session, "c2")
    await add_backend(session, "off", offline=True)
    one, two = FakeCluster(groups=["g1", "g2"]), FakeCluster(groups=["default"])
    spec = net_actions.NetworkSpec(
        "net",
        "10.77.6.0/24",
        gateway="10.77.6.1",
        public=True,
        mode="routed",
        link="rt1",
        dhcp=True,
        mac_prefix="AA:00:01",
    )
    async with pool_for(one, two) as pool:
        result = await net_actions.create_network(session, pool, spec, prefix="snf")
    net = result.network
    assert (net.state, net.action, net.deleted, net.mac_prefix) == (
        "PENDING",
        "CREATE",
        False,
        "aa:00:01",
    )
    name = f"snf-net-{net.id}"
    create, c1, c2 = one.writes()
    assert (create.method, create.path) == ("POST", "/2/networks")
    assert create.body == {
        "network_name": name,
        "network": "10.77.6.0/24",
        "gateway": "10.77.6.1",
        "mac_prefix": "aa:00:01",
        "tags": ["nfdhcpd"],
        "conflicts_check": True,
    }
    for seen, group in ((c1, "g1"), (c2, "g2")):
        assert (seen.method, seen.path) == ("PUT", f"/2/networks/{name}/connect")
        assert seen.body == {
            "group_name": group,
            "network_mode": "routed",
            "network_link": "rt1",
            "conflicts_check": True,
            "depends": [[101, ["success", "error", "canceled"]]],
        }
    assert [s.path for s in two.writes()] == ["/2/networks", f"/2/networks/{name}/connect"]
    bns = {
        bn.backend_id: bn.operstate
        for bn in await session.scalars(
            select(BackendNetwork).where(BackendNetwork.network_id == net.id)
        )
    }
    assert bns == {b1.id: "PENDING", b2.id: "PENDING"}
    assert [r.jobs for r in result.backends] == [
        {"create": [101], "connect": [102, 103]},
        {"create": [101], "connect": [102]},
    ]


async def test_network_create_default_link_and_private_conflicts(session: AsyncSession) -> None:
    await add_backend(session)
    fake = FakeCluster()
    async with pool_for(fake) as pool:
        await net_actions.create_network(
            session, pool, net_actions.NetworkSpec("n", "10.77.7.0/24"), prefix="snf"
        )
    create, connect = fake.writes()
    assert create.body["conflicts_check"] is False and "tags" not in create.body
    assert connect.body["network_link"] == "br0" and connect.body["network_mode"] == "bridged"


@pytest.mark.parametrize(
    "spec",
    [
        net_actions.NetworkSpec("n", "10.77.7.1/24"),
        net_actions.NetworkSpec("n", "2001:db8::/64"),
        net_actions.NetworkSpec("n", "10.0.0.0/8"),
        net_actions.NetworkSpec("n", "10.77.7.0/24", gateway="10.77.8.1"),
        net_actions.NetworkSpec("n", "10.77.7.0/24", mode="vlan"),
        net_actions.NetworkSpec("n", "10.77.7.0/24", mac_prefix="aa:00"),
    ],
)
async def test_network_create_bad_input(
    session: AsyncSession, spec: net_actions.NetworkSpec
) -> None:
    await add_backend(session)
    fake = FakeCluster()
    async with pool_for(fake) as pool:
        with pytest.raises(InvalidInputError):
            await net_actions.create_network(session, pool, spec, prefix="snf")
    assert fake.seen == [] and await count(session, Network) == 0


@pytest.mark.parametrize("where", ["read", "submit"])
async def test_network_create_refused_leaves_no_rows(session: AsyncSession, where: str) -> None:
    await add_backend(session)
    route = ("GET", "/2/groups") if where == "read" else ("POST", "/2/networks")
    fake = FakeCluster(routes={route: error(500)})
    async with pool_for(fake) as pool:
        with pytest.raises(ClusterError):
            await net_actions.create_network(
                session, pool, net_actions.NetworkSpec("n", "10.77.7.0/24"), prefix="snf"
            )
    assert await count(session, Network) == 0 and await count(session, BackendNetwork) == 0


async def test_network_create_partial_failure_keeps_rows(session: AsyncSession) -> None:
    await add_backend(session, "c1")
    await add_backend(session, "c2")
    bad = FakeCluster(routes={("POST", "/2/networks"): error(500)})
    async with pool_for(FakeCluster(), bad) as pool:
        result = await net_actions.create_network(
            session, pool, net_actions.NetworkSpec("n", "10.77.7.0/24"), prefix="snf"
        )
    assert [r.error is None for r in result.backends] == [True, False]
    assert "c2" in result.failure_message()
    assert await count(session, Network) == 1


async def test_network_remove(session: AsyncSession) -> None:
    b = await add_backend(session)
    net = await add_network(session)
    session.add(
        BackendNetwork(network_id=net.id, backend_id=b.id, operstate="ACTIVE", deleted=False)
    )
    await session.commit()
    name = f"snf-net-{net.id}"
    fake = FakeCluster(
        networks={
            name: {
                "name": name,
                "uuid": "u-1",
                "inst_list": ["snf-1", "snf-2"],
                "group_list": [["g1", "bridged", "br0", ""], ["g2", "bridged", "br0", ""]],
            }
        },
        instances={
            "snf-1": instance_json(
                "snf-1", **{"nic.macs": ["a", "b"], "nic.networks.names": [name, name]}
            ),
            "snf-2": instance_json("snf-2", **{"nic.macs": ["a"], "nic.networks.names": [None]}),
        },
    )
    async with pool_for(fake) as pool:
        result = await net_actions.remove_network(session, pool, net.id, prefix="snf")
    nics, d1, d2, delete = fake.writes()
    assert nics.path == "/2/instances/snf-1/modify"
    assert nics.body["nics"] == [["remove", 1, {}], ["remove", 0, {}]]
    any_end = ["success", "error", "canceled"]
    assert d1.body == {"group_name": "g1", "depends": [[101, any_end]]}
    assert d2.body == {"group_name": "g2", "depends": [[101, any_end]]}
    assert (delete.method, delete.path) == ("DELETE", f"/2/networks/{name}")
    assert delete.body == {"depends": [[102, any_end], [103, any_end]]}
    assert result.backends[0].jobs == {
        "remove_nics": [101],
        "disconnect": [102, 103],
        "delete": [104],
    }
    row = await session.get(Network, net.id, populate_existing=True)
    assert row is not None and (row.action, row.deleted, row.state) == ("DESTROY", False, "ACTIVE")


async def test_network_in_use_is_not_removed(session: AsyncSession) -> None:
    b = await add_backend(session)
    f = await add_flavor(session)
    net = await add_network(session)
    session.add(
        BackendNetwork(network_id=net.id, backend_id=b.id, operstate="ACTIVE", deleted=False)
    )
    live = await add_vm(session, b, f)
    gone = await add_vm(session, b, f, deleted=True, operstate="DESTROYED")
    for vm in (live, gone):
        await add_nic(session, vm, net)
    net_id, live_id = net.id, live.id
    name = f"snf-net-{net_id}"
    fake = FakeCluster(
        networks={name: {"name": name, "inst_list": [], "group_list": [["g1", "b", "l", ""]]}}
    )
    async with pool_for(fake) as pool:
        with pytest.raises(InUseError, match=f"in use by server\\(s\\) {live_id}:") as caught:
            await net_actions.remove_network(session, pool, net_id, prefix="snf")
    assert not isinstance(caught.value, RequestError)  # the CLI exits 1, not 2
    assert fake.writes() == []
    row = await session.get(Network, net_id, populate_existing=True)
    assert row is not None and (row.action, row.deleted) == ("CREATE", False)
    # once the server is gone, the network can go
    server = await session.get(VirtualMachine, live_id)
    assert server is not None
    server.deleted = True
    await session.commit()
    async with pool_for(fake) as pool:
        result = await net_actions.remove_network(session, pool, net_id, prefix="snf")
    assert result.backends[0].jobs["delete"]


async def test_network_remove_refused_changes_nothing(session: AsyncSession) -> None:
    b = await add_backend(session)
    net = await add_network(session)
    session.add(
        BackendNetwork(network_id=net.id, backend_id=b.id, operstate="ACTIVE", deleted=False)
    )
    await session.commit()
    net_id = net.id
    name = f"snf-net-{net_id}"
    fake = FakeCluster(
        networks={name: {"name": name, "inst_list": [], "group_list": [["g1", "b", "l", ""]]}},
        routes={("PUT", f"/2/networks/{name}/disconnect"): error(401, "Unauthorized")},
    )
    async with pool_for(fake) as pool:
        with pytest.raises(ClusterError, match="Unauthorized"):
            await net_actions.remove_network(session, pool, net_id, prefix="snf")
    row = await session.get(Network, net_id, populate_existing=True)
    assert row is not None and row.action == "CREATE"


# -- resources --------------------------------------------------------------------------------


def test_sum_resources_counts_usable_nodes_and_nulls_as_zero() -> None:
    nodes: list[dict[str, Any]] = [
        {
            "mfree": 100,
            "mtotal": 200,
            "dfree": 10,
            "dtotal": 20,
            "pinst_cnt": 1,
            "ctotal": 4,
            "vm_capable": True,
            "drained": False,
            "offline": False,
        },
        {
            "mfree": None,
            "mtotal": 300,
            "dfree": None,
            "dtotal": None,
            "pinst_cnt": 2,
            "ctotal": None,
            "vm_capable": True,
        },
        {"mfree": 1000, "mtotal": 1000, "vm_capable": True, "drained": True},
        {"mfree": 1000, "mtotal": 1000, "vm_capable": True, "offline": True},
        {"mfree": 1000, "mtotal": 1000, "vm_capable": False},
    ]
    assert sum_resources(nodes) == {
        "mfree": 100,
        "mtotal": 500,
        "dfree": 10,
        "dtotal": 20,
        "pinst_cnt": 3,
        "ctotal": 4,
    }


async def test_update_resources(session: AsyncSession) -> None:
    b = await add_backend(session)
    off = await add_backend(session, "off", offline=True)
    fake = FakeCluster(
        nodes=[
            {
                "name": "n",
                "mfree": 5,
                "mtotal": 9,
                "dfree": 3,
                "dtotal": 4,
                "pinst_cnt": 1,
                "ctotal": 2,
                "vm_capable": True,
            }
        ]
    )
    async with pool_for(fake) as pool:
        result = await update_resources(session, pool)
        assert [x.id for x in result.updated] == [b.id]
        with pytest.raises(BackendUnavailableError):
            await update_resources(session, pool, off.id)
    row = await session.get(Backend, b.id, populate_existing=True)
    assert row is not None
    assert (row.mfree, row.mtotal, row.dfree, row.dtotal, row.pinst_cnt, row.ctotal) == (
        5,
        9,
        3,
        4,
        1,
        2,
    )
    assert fake.seen[0].query == {"bulk": ["1"]}


# -- the CLI (in process, RAPI served by the fake) --------------------------------------------


@dataclass
class Cli:
    env: Env
    capsys: pytest.CaptureFixture[str]

    async def __call__(self, *argv: str) -> tuple[int, str, str]:
        args: argparse.Namespace = build_parser().parse_args(list(argv))
        code = 0
        try:
            code = await args.handler(args, self.env.settings())
        except UsageError as exc:
            print(f"dispatcher: {exc}", file=__import__("sys").stderr)
            code = 2
        except CommandError as exc:
            print(f"dispatcher: {exc}", file=__import__("sys").stderr)
            code = 1
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeCluster], None]:
    def install(fake: FakeCluster) -> None:
        def factory(settings: Any) -> clients_mod.ClientFactory:
            return lambda b: RapiClient.from_backend(
                b, transport=httpx.MockTransport(fake), backoff=0, timeout=5
            )

        monkeypatch.setattr(clients_mod, "default_client_factory", factory)

    return install


async def test_cli_create_and_actions(
    env: Env,
    session: AsyncSession,
    serve: Callable[[FakeCluster], None],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    caplog.set_level(logging.DEBUG)
    b = await add_backend(session)
    f = await add_flavor(session)
    n = await add_network(session)
    fake = FakeCluster()
    serve(fake)
    cli = Cli(env, capsys)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    code, out, err = await cli(
        "server",
        "create",
        "web",
        "--flavor",
        str(f.id),
        "--image",
        "img-1",
        "--password-file",
        str(pw),
        "--network",
        str(n.id),
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["operstate"], doc["action"], doc["backend_id"]) == ("BUILD", "CREATE", b.id)
    assert doc["backendjobid"] == 101 and doc["instance"] == f"{env.prefix}-{doc['id']}"
    assert fake.seen[-1].body["osparams"]["img_passwd"] == PASSWORD
    assert PASSWORD not in out + err + caplog.text
    code, out, err = await cli("server", "create", "web2", "--flavor", str(f.id), "--image", "i")
    assert code == 0 and out.strip().isdigit()
    vm_id = doc["id"]
    code, out, err = await cli("server", "start", str(vm_id))
    assert (code, err) == (
        1,
        f"dispatcher: server {vm_id} is still building (operstate BUILD): only remove is allowed\n",
    )
    code, out, _ = await cli("server", "remove", str(vm_id), "--json")
    assert code == 0 and json.loads(out)["action"] == "DESTROY" and json.loads(out)["job_id"]
    code, _, err = await cli("server", "start", "999")
    assert (code, err) == (2, "dispatcher: no server 999\n")
    code, _, err = await cli("server", "create", "x", "--flavor", "999", "--image", "i")
    assert (code, err) == (2, "dispatcher: no flavor 999\n")
    fake.routes[("POST", "/2/instances")] = error(500, f"no {PASSWORD}")
    code, out, err = await cli(
        "server", "create", "bad", "--flavor", str(f.id), "--image", "i", "--password-file", str(pw)
    )
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "failed" in err and PASSWORD not in err + caplog.text
    assert await count(session, VirtualMachine) == 2


async def test_cli_offline_backend_and_network_and_resources(
    env: Env,
    session: AsyncSession,
    serve: Callable[[FakeCluster], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    b = await add_backend(session, offline=True)
    f = await add_flavor(session)
    vm = await add_vm(session, b, f)
    fake = FakeCluster()
    serve(fake)
    cli = Cli(env, capsys)
    code, _, err = await cli("server", "stop", str(vm.id))
    assert code == 1 and "offline" in err
    code, _, err = await cli("backend", "update-resources", str(b.id))
    assert code == 1 and "offline" in err
    code, out, err = await cli("backend", "modify", str(b.id), "--online")
    assert code == 0, err
    code, out, err = await cli("backend", "update-resources", str(b.id), "--json")
    assert code == 0 and json.loads(out)["mfree"] == 1000
    code, out, err = await cli(
        "network", "create", "n1", "--subnet", "10.77.9.0/24", "--gateway", "10.77.9.1"
    )
    assert code == 0 and out.strip().isdigit(), err
    code, out, err = await cli("network", "create", "n1", "--subnet", "10.77.9.0/33")
    assert code == 2 and "--subnet" in err
    code, out, err = await cli("server", "firewall", str(vm.id), "OPEN")
    assert code == 2
    assert fake.writes()[-1].path.endswith("/connect")


# -- reconcile ----------------------------------------------------------------------------------


async def test_reconcile_servers_detects_and_fixes(
    env: Env, engine: AsyncEngine, session: AsyncSession
) -> None:
    b = await add_backend(session)
    f = await add_flavor(session)
    net = await add_network(session)
    p = env.prefix
    stale = await add_vm(session, b, f, operstate="STARTED")
    stopped = await add_vm(session, b, f, operstate="STARTED")
    build_ok = await add_vm(session, b, f, operstate="BUILD", backendjobid=50)
    build_bad = await add_vm(session, b, f, operstate="BUILD", backendjobid=51)
    building = await add_vm(session, b, f, operstate="BUILD", backendjobid=52)
    failed = await add_vm(session, b, f, operstate="ERROR", action="CREATE")
    nics = await add_vm(session, b, f, operstate="STARTED")
    await add_nic(session, nics, net, mac="m0", ipv4="10.77.5.9")
    fake = FakeCluster(
        instances={
            f"{p}-{stopped.id}": instance_json(
                f"{p}-{stopped.id}", oper_state=False, **{"nic.macs": []}
            ),
            f"{p}-{build_ok.id}": instance_json(f"{p}-{build_ok.id}", **{"nic.macs": []}),
            f"{p}-{building.id}": instance_json(f"{p}-{building.id}"),
            f"{p}-{nics.id}": instance_json(
                f"{p}-{nics.id}",
                tags=["synnefo:network:0:protected"],
                **{
                    "nic.macs": ["m0"],
                    "nic.ips": ["10.77.5.3"],
                    "nic.networks.names": [f"{p}-net-{net.id}"],
                },
            ),
            f"{p}-9999": instance_json(f"{p}-9999"),
            "foreign-1": instance_json("foreign-1"),
        },
        jobs={
            50: {"id": 50, "status": "success", "end_ts": [1, 0]},
            51: {"id": 51, "status": "error"},
            52: {"id": 52, "status": "running"},
        },
    )
    async with pool_for(fake) as pool:
        report = await reconcile_servers(engine, pool, prefix=p, fix=False)
    kinds = {(fi.kind, fi.id) for fi in report.findings}
    assert kinds == {
        ("stale", stale.id),
        ("unsynced_operstate", stopped.id),
        ("unsynced_operstate", build_ok.id),
        ("build_errors", build_bad.id),
        ("orphans", 9999),
        ("unsynced_nics", nics.id),
    }
    assert failed.id not in {fi.id for fi in report.findings}
    assert fake.writes() == []
    view = report.view()
    assert set(view) >= {"stale", "orphans", "unsynced_operstate", "unsynced_nics", "errors"}

    fake.jobs[200] = {"id": 200, "status": "success"}
    fake.routes[("GET", "/2/jobs/200/wait")] = ok({"job_info": ["success"], "log_entries": []})
    fake.routes[("DELETE", f"/2/instances/{p}-9999")] = ok(200)
    async with pool_for(fake) as pool:
        report = await reconcile_servers(engine, pool, prefix=p, fix=True)
    assert all(fi.fixed for fi in report.findings if fi.kind != "orphans"), report.view()
    assert [fi.fixed for fi in report.findings if fi.kind == "orphans"] == [True]
    rows = {
        vm.id: vm
        for vm in await session.scalars(
            select(VirtualMachine).execution_options(populate_existing=True)
        )
    }
    await session.commit()
    assert rows[stale.id].deleted and rows[stale.id].operstate == "DESTROYED"
    assert rows[stale.id].backendlogmsg == SIM_LOGMSG and rows[stale.id].backendjobid == 0
    assert rows[stopped.id].operstate == "STOPPED"
    assert rows[build_ok.id].operstate == "STARTED"
    assert rows[build_bad.id].operstate == "ERROR"
    assert rows[building.id].operstate == "BUILD"
    nic = (
        await session.scalars(
            select(NetworkInterface)
            .where(NetworkInterface.machine_id == nics.id)
            .execution_options(populate_existing=True)
        )
    ).one()
    assert (nic.ipv4, nic.firewall_profile) == ("10.77.5.3", "ENABLED")
    async with pool_for(fake) as pool:
        fake.instances.pop(f"{p}-9999")
        again = await reconcile_servers(engine, pool, prefix=p, fix=False)
    assert again.findings == [], again.view()


async def test_reconcile_networks(env: Env, engine: AsyncEngine, session: AsyncSession) -> None:
    b = await add_backend(session)
    p = env.prefix
    missing = await add_network(session, state="PENDING")
    hanging = await add_network(session, state="PENDING")
    pending = await add_network(session, state="PENDING")
    gone = await add_network(session, action="DESTROY")
    for net in (hanging, pending, gone):
        session.add(
            BackendNetwork(network_id=net.id, backend_id=b.id, operstate="PENDING", deleted=False)
        )
    await session.commit()
    fake = FakeCluster(
        groups=["g1", "g2"],
        networks={
            f"{p}-net-{hanging.id}": {
                "name": f"{p}-net-{hanging.id}",
                "group_list": [["g1", "bridged", "br0", ""]],
            },
            f"{p}-net-{pending.id}": {
                "name": f"{p}-net-{pending.id}",
                "group_list": [["g1", "b", "l", ""], ["g2", "b", "l", ""]],
            },
            f"{p}-net-4242": {"name": f"{p}-net-4242", "group_list": [], "inst_list": []},
        },
    )
    async with pool_for(fake) as pool:
        report = await reconcile_networks(engine, pool, prefix=p, fix=False)
    found = sorted((fi.kind, fi.id) for fi in report.findings)
    assert found == sorted(
        [
            ("missing", missing.id),
            ("missing", missing.id),
            ("hanging", hanging.id),
            ("not_active", pending.id),
            ("stale", gone.id),
            ("orphans", 4242),
        ]
    )
    assert fake.writes() == []
    wait = ok({"job_info": ["success"], "log_entries": []})
    for job in range(101, 110):
        fake.jobs[job] = {"id": job, "status": "success"}
        fake.routes[("GET", f"/2/jobs/{job}/wait")] = wait
    async with pool_for(fake) as pool:
        report = await reconcile_networks(engine, pool, prefix=p, fix=True)
    assert all(fi.fixed for fi in report.findings), report.view()
    writes = [(s.method, s.path) for s in fake.writes()]
    assert ("POST", "/2/networks") in writes
    assert ("PUT", f"/2/networks/{p}-net-{hanging.id}/connect") in writes
    assert ("DELETE", f"/2/networks/{p}-net-4242") in writes
    states = {
        n.id: (n.state, n.deleted)
        for n in await session.scalars(select(Network).execution_options(populate_existing=True))
    }
    await session.commit()
    assert states[pending.id] == ("ACTIVE", False)
    assert states[gone.id] == ("DELETED", True)
    assert (
        await session.scalar(
            select(func.count())
            .select_from(BackendNetwork)
            .where(BackendNetwork.network_id == missing.id)
        )
    ) == 1
