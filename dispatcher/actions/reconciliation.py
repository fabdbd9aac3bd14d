"""``dispatcher reconcile servers|networks [--fix]``: compare the database with what the
clusters hold (reference §g, HEAD rules, simplified) and, with ``--fix``, repair it.

Repairs of the database's *state* are simulated Ganeti events (``jobId`` 0, ``event_time``
now, ``logmsg`` :data:`SIM_LOGMSG`) applied through the pipeline's own
:class:`~dispatcher.db.store.EventStore`, so history, ordering and idempotence rules hold
exactly as for real events (a real event older than the simulated one still folds before
it). Repairs on the clusters are RAPI calls: removing orphan instances and networks,
creating or connecting networks that are missing or not connected to every node group.

Servers, per online backend (D = live servers of the backend, G = its instances ``P-<id>``):

=======================================  =============================================
situation                                finding / fix
=======================================  =============================================
in D only, BUILD, create job in progress nothing (still building)
in D only or both, BUILD, job failed     ``build_errors``: OP_INSTANCE_CREATE error
  or unknown to the cluster
in D only, ERROR and action not DESTROY  nothing (the user removes it)
in D only, otherwise                     ``stale``: OP_INSTANCE_REMOVE success
in G only                                ``orphans``: DeleteInstance
in both, operstate differs from Ganeti   ``unsynced_operstate``: OP_INSTANCE_CREATE
  (``oper_state``)                         success if BUILD, then STARTUP/SHUTDOWN success
in both, NICs differ (network, MAC, IPv4, ``unsynced_nics``: a ganeti-net-status with
  firewall)                                Ganeti's NICs
=======================================  =============================================

Networks, per live network and online backend (G = the backend's networks ``P-net-<id>``):
``missing`` (no backend-network row: created; absent from Ganeti: created and connected),
``stale`` (being destroyed and gone from Ganeti: OP_NETWORK_REMOVE success), ``hanging`` (not
connected to every node group: connected), ``not_active`` (all there but not ACTIVE in the
database: OP_NETWORK_CONNECT success), ``orphans`` (in G with no live network: removed).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dispatcher.actions.clients import ClientPool, call
from dispatcher.actions.errors import ActionError, ClusterError
from dispatcher.actions.inventory import backends_to_query, over_backends
from dispatcher.actions.jobs import wait_for_success
from dispatcher.actions.networks import (
    BackendJobs,
    connect_network_synced,
    create_network_synced,
    placement,
    submit_remove,
)
from dispatcher.core.handling import Incoming, Outcome
from dispatcher.core.messages import Nic, parse
from dispatcher.core.names import (
    instance_name,
    network_id_from_name,
    network_name,
    vm_id_from_instance,
)
from dispatcher.core.vm_state import NicState, VmContext, build_nics
from dispatcher.db.models import Backend, BackendNetwork, Network, VirtualMachine
from dispatcher.db.store import EventStore, refresh_network_states
from dispatcher.rapi import RapiClient, RapiError, RapiNotFound

SIM_LOGMSG: Final = "Reconciliation: simulated Ganeti event"
# a create whose job id is not recorded yet is given this long before it counts as failed
BUILD_GRACE_S: Final = 60.0
FIREWALL_TAG_HEAD: Final = "synnefo:network:"
SERVER_KINDS: Final = (
    "stale",
    "build_errors",
    "orphans",
    "unsynced_operstate",
    "unsynced_nics",
)
NETWORK_KINDS: Final = ("missing", "stale", "hanging", "not_active", "orphans")


@dataclass(slots=True)
class Finding:
    kind: str
    backend: Backend
    name: str  # the Ganeti name
    detail: str
    fix: str
    id: int | None = None
    fixed: bool | None = None  # None: not attempted
    error: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "backend_id": self.backend.id,
            "clustername": self.backend.clustername,
            "detail": self.detail,
            "fix": self.fix,
            "fixed": self.fixed,
            "error": self.error,
        }


@dataclass(slots=True)
class Report:
    target: str
    fix: bool
    kinds: Sequence[str]
    checked: list[Backend] = field(default_factory=list)
    errors: list[tuple[Backend, str]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(f.fixed is False for f in self.findings)

    def view(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "target": self.target,
            "fix": self.fix,
            "backends": [b.id for b in self.checked],
            "errors": [
                {"backend_id": b.id, "clustername": b.clustername, "error": e}
                for b, e in self.errors
            ],
        }
        for kind in self.kinds:
            doc[kind] = [f.view() for f in self.findings if f.kind == kind]
        return doc

    def rows(self) -> list[dict[str, Any]]:
        return [{"kind": f.kind, **f.view()} for f in self.findings]


class _Clock:
    """Distinct, increasing event times from one ``now`` (several simulated events for one
    target must not tie)."""

    def __init__(self) -> None:
        self._us = time.time_ns() // 1000

    def next(self) -> list[int]:
        self._us += 1
        return [self._us // 1_000_000, self._us % 1_000_000]

    @property
    def now_s(self) -> float:
        return self._us / 1e6


def _op_status(instance: str, opcode: str, status: str, cluster: str, t: list[int]) -> bytes:
    return json.dumps(
        {
            "type": "ganeti-op-status",
            "instance": instance,
            "operation": opcode,
            "jobId": 0,
            "status": status,
            "logmsg": SIM_LOGMSG,
            "event_time": t,
            "cluster": cluster,
        }
    ).encode()


def _net_status(instance: str, nics: Sequence[Nic], t: list[int]) -> bytes:
    return json.dumps(
        {
            "type": "ganeti-net-status",
            "instance": instance,
            "nics": [n.model_dump(exclude_none=True) for n in nics],
            "event_time": t,
        }
    ).encode()


def _network_status(network: str, opcode: str, cluster: str, t: list[int]) -> bytes:
    return json.dumps(
        {
            "type": "ganeti-network-status",
            "network": network,
            "operation": opcode,
            "jobId": 0,
            "status": "success",
            "logmsg": SIM_LOGMSG,
            "event_time": t,
            "cluster": cluster,
        }
    ).encode()


async def _simulate(
    engine: AsyncEngine, prefix: str, finding: Finding, bodies: list[bytes]
) -> None:
    # the store keeps its connection between batches: give it back after this one
    store = EventStore(engine, prefix, from_eventd=False)
    try:
        results = await store.apply([Incoming.of(parse(b)) for b in bodies])
    except Exception as exc:  # noqa: BLE001 - reported per finding, the run goes on
        finding.fixed, finding.error = False, f"{type(exc).__name__}: {exc}"
        return
    finally:
        await store.close()
    bad = [r for r in results if r.outcome is not Outcome.APPLIED]
    finding.fixed = not bad
    if bad:
        finding.error = "; ".join(f"{r.outcome.value}: {r.reason}" for r in bad)


# -- servers ----------------------------------------------------------------------------------


def ganeti_nics(inst: Mapping[str, Any]) -> list[Nic] | str:
    """The instance's NICs as message NICs (firewall from its ``synnefo:network:<i>:*``
    tags), or why they cannot be expressed (a NIC on no network)."""
    macs = inst.get("nic.macs") or []
    ips = inst.get("nic.ips") or []
    nets = inst.get("nic.networks.names")
    if not isinstance(nets, list):
        nets = inst.get("nic.networks") or []
    firewall: dict[int, str] = {}
    for tag in inst.get("tags") or []:
        parts = tag.split(":") if isinstance(tag, str) else []
        if len(parts) == 4 and tag.startswith(FIREWALL_TAG_HEAD) and parts[2].isdigit():
            firewall[int(parts[2])] = parts[3]
    out = []
    for i, mac in enumerate(macs):
        net = nets[i] if i < len(nets) else None
        if not isinstance(net, str):
            return f"NIC {i} is on no network"
        ip = ips[i] if i < len(ips) and isinstance(ips[i], str) else None
        out.append(Nic(network=net, mac=mac, ip=ip, firewall=firewall.get(i)))
    return out


def _nic_key(n: NicState) -> tuple[int, int, str, str, str]:
    return (n.index, n.network_id, n.mac, n.ipv4, n.firewall_profile)


@dataclass(slots=True)
class _Vm:
    id: int
    operstate: str
    action: str | None
    backendjobid: int | None
    created_s: float
    nics: tuple[NicState, ...]


def snapshot(vm: VirtualMachine) -> _Vm:
    return _Vm(
        vm.id,
        vm.operstate,
        vm.action,
        vm.backendjobid,
        vm.created.timestamp(),
        tuple(
            NicState(n.index, n.network_id, n.mac, n.ipv4, n.ipv6, n.firewall_profile)
            for n in sorted(vm.nics, key=lambda n: n.index)
        ),
    )


async def _build_status(client: RapiClient, vm: _Vm, now_s: float) -> tuple[str, float | None]:
    """HEAD's get_build_status: RUNNING, ERROR or FINALIZED (with the job's end time)."""
    if vm.backendjobid is None:
        return ("RUNNING" if now_s - vm.created_s < BUILD_GRACE_S else "ERROR"), None
    try:
        job = await client.get_job_status(vm.backendjobid)
    except RapiNotFound:
        return "ERROR", None
    status = job.get("status")
    if status == "error":
        return "ERROR", None
    if status not in ("success", "canceled"):
        return "RUNNING", None
    end = job.get("end_ts")
    end_s = end[0] + end[1] / 1e6 if isinstance(end, list) and len(end) == 2 else None
    return "FINALIZED", end_s


async def reconcile_servers(
    engine: AsyncEngine, clients: ClientPool, *, prefix: str, fix: bool
) -> Report:
    report = Report("servers", fix, SERVER_KINDS)
    clock = _Clock()
    async with AsyncSession(engine, expire_on_commit=False) as s:
        backends = await backends_to_query(s)
        vms: dict[int, dict[int, _Vm]] = defaultdict(dict)
        q = select(VirtualMachine).where(
            VirtualMachine.deleted.is_(False),
            VirtualMachine.backend_id.in_([b.id for b in backends]),
        )
        for vm in await s.scalars(q):
            assert vm.backend_id is not None
            vms[vm.backend_id][vm.id] = snapshot(vm)
        networks = {n.id: n.public for n in await s.scalars(select(Network))}
        await s.commit()
    fetched = await over_backends(
        clients, backends, "listing instances", lambda c: c.get_instances(bulk=True)
    )
    for item in fetched:
        if item.error is not None or item.value is None:
            report.errors.append((item.backend, str(item.error)))
            continue
        report.checked.append(item.backend)
        check = _ServerPass(report, engine, clients, item.backend, prefix, networks, clock)
        try:
            await check.run(vms[item.backend.id], item.value)
        except ActionError as exc:
            report.errors.append((item.backend, exc.message))
    return report


async def reconcile_one_server(
    engine: AsyncEngine,
    clients: ClientPool,
    vm: VirtualMachine,
    backend: Backend,
    instance: Mapping[str, Any] | None,
    *,
    prefix: str,
) -> Report:
    """Compare one server with ``instance`` (the cluster's view of it in the bulk listing's
    shape, ``None`` when the cluster does not know it) and repair the database, by the same
    rules and simulated events as ``reconcile servers --fix``."""
    report = Report("servers", True, SERVER_KINDS, checked=[backend])
    async with AsyncSession(engine) as s:
        networks = {n.id: n.public for n in await s.scalars(select(Network))}
    check = _ServerPass(report, engine, clients, backend, prefix, networks, _Clock())
    try:
        await check.server(snapshot(vm), dict(instance) if instance is not None else None)
    except ActionError as exc:
        report.errors.append((backend, exc.message))
    return report


class _Pass:
    """One backend's share of a reconciliation run."""

    def __init__(
        self,
        report: Report,
        engine: AsyncEngine,
        clients: ClientPool,
        backend: Backend,
        prefix: str,
        clock: _Clock,
    ) -> None:
        self.report, self.engine, self.backend = report, engine, backend
        self.client = clients.get(backend)
        self.prefix, self.clock, self.fix = prefix, clock, report.fix
        self.cluster = backend.clustername

    def add(self, kind: str, target_id: int | None, name: str, detail: str, fix: str) -> Finding:
        finding = Finding(kind, self.backend, name, detail, fix, id=target_id)
        self.report.findings.append(finding)
        return finding

    async def simulate(self, finding: Finding, bodies: list[bytes]) -> None:
        if self.fix and bodies:
            await _simulate(self.engine, self.prefix, finding, bodies)

    async def repair(self, finding: Finding, work: Callable[[], Awaitable[None]]) -> None:
        if not self.fix:
            return
        try:
            await work()
            finding.fixed = True
        except RapiError as exc:
            finding.fixed = False
            finding.error = ClusterError.from_rapi(exc, self.cluster, "repairing").message
        except ActionError as exc:
            finding.fixed, finding.error = False, exc.message


class _ServerPass(_Pass):
    def __init__(
        self,
        report: Report,
        engine: AsyncEngine,
        clients: ClientPool,
        backend: Backend,
        prefix: str,
        networks: Mapping[int, bool],
        clock: _Clock,
    ) -> None:
        super().__init__(report, engine, clients, backend, prefix, clock)
        self.networks = networks

    async def run(self, db: Mapping[int, _Vm], instances: Sequence[dict[str, Any]]) -> None:
        ganeti: dict[int, dict[str, Any]] = {}
        for inst in instances:
            name = inst.get("name")
            vm_id = vm_id_from_instance(self.prefix, name) if isinstance(name, str) else None
            if vm_id is not None:
                ganeti[vm_id] = inst
        for vm_id in sorted(set(db) | set(ganeti)):
            vm = db.get(vm_id)
            if vm is None:
                name = instance_name(self.prefix, vm_id)
                f = self.add("orphans", vm_id, name, "instance with no live server", "remove it")
                await self.repair(f, partial(self._delete, name))
            else:
                await self.server(vm, ganeti.get(vm_id))

    async def _delete(self, name: str) -> None:
        job = await self.client.delete_instance(name)
        await wait_for_success(self.client, self.backend, job)

    def _op(self, vm: _Vm, opcode: str, status: str = "success") -> bytes:
        name = instance_name(self.prefix, vm.id)
        return _op_status(name, opcode, status, self.cluster, self.clock.next())

    async def server(self, vm: _Vm, inst: dict[str, Any] | None) -> None:
        name = instance_name(self.prefix, vm.id)
        if vm.operstate == "BUILD":
            status, end_s = await call(
                self.backend,
                f"reading the create job of server {vm.id}",
                _build_status(self.client, vm, self.clock.now_s),
            )
            finished_after = inst is not None and end_s is not None and end_s >= self.clock.now_s
            if status == "RUNNING" or finished_after:
                return
            if status == "ERROR":
                detail = f"create job {vm.backendjobid} failed or unknown to the cluster"
                f = self.add(
                    "build_errors", vm.id, name, detail, "simulate OP_INSTANCE_CREATE error"
                )
                await self.simulate(f, [self._op(vm, "OP_INSTANCE_CREATE", "error")])
                return
        if inst is None:
            if vm.operstate == "ERROR" and vm.action != "DESTROY":
                return  # a failed build: the user removes it
            f = self.add(
                "stale",
                vm.id,
                name,
                f"no instance (operstate {vm.operstate})",
                "simulate OP_INSTANCE_REMOVE success",
            )
            await self.simulate(f, [self._op(vm, "OP_INSTANCE_REMOVE")])
            return
        await self._operstate(vm, inst)
        await self._nics(vm, inst)

    async def _operstate(self, vm: _Vm, inst: Mapping[str, Any]) -> None:
        up = inst.get("oper_state")
        if not isinstance(up, bool):
            return  # the node did not answer
        state = "STARTED" if up else "STOPPED"
        if vm.operstate == state:
            return
        opcodes = ["OP_INSTANCE_CREATE"] if vm.operstate == "BUILD" else []
        opcodes.append("OP_INSTANCE_STARTUP" if up else "OP_INSTANCE_SHUTDOWN")
        f = self.add(
            "unsynced_operstate",
            vm.id,
            instance_name(self.prefix, vm.id),
            f"database {vm.operstate}, Ganeti {state}",
            f"simulate {' then '.join(opcodes)} success",
        )
        await self.simulate(f, [self._op(vm, op) for op in opcodes])

    async def _nics(self, vm: _Vm, inst: Mapping[str, Any]) -> None:
        name = instance_name(self.prefix, vm.id)
        nics = ganeti_nics(inst)
        expected = (
            build_nics(nics, VmContext(self.prefix, vm.action, self.networks))
            if not isinstance(nics, str)
            else nics
        )
        if isinstance(expected, str) or isinstance(nics, str):
            self.add("unsynced_nics", vm.id, name, str(expected), "none possible")
            return
        if [_nic_key(n) for n in expected] == [_nic_key(n) for n in vm.nics]:
            return
        have = _nics_text(vm.nics)
        f = self.add(
            "unsynced_nics",
            vm.id,
            name,
            f"database [{have}], Ganeti [{_nics_text(expected)}]",
            "simulate ganeti-net-status with Ganeti's NICs",
        )
        # keep an IPv6 address the database knows for the same NIC (Ganeti does not report it)
        ipv6 = {(n.index, n.mac): n.ipv6 for n in vm.nics if n.ipv6}
        nics = [
            n.model_copy(update={"ipv6": ipv6.get((i, n.mac or ""))}) for i, n in enumerate(nics)
        ]
        await self.simulate(f, [_net_status(name, nics, self.clock.next())])


def _nics_text(nics: Sequence[NicState]) -> str:
    return ", ".join(f"{n.index}:net{n.network_id}/{n.ipv4 or '-'}" for n in nics) or "none"


# -- networks ---------------------------------------------------------------------------------


async def reconcile_networks(
    engine: AsyncEngine, clients: ClientPool, *, prefix: str, fix: bool
) -> Report:
    report = Report("networks", fix, NETWORK_KINDS)
    clock = _Clock()
    async with AsyncSession(engine, expire_on_commit=False) as s:
        backends = await backends_to_query(s)
        nets = list(await s.scalars(select(Network).where(Network.deleted.is_(False))))
        bns = {(bn.network_id, bn.backend_id): bn for bn in await s.scalars(select(BackendNetwork))}
        await s.commit()

    async def listing(c: RapiClient) -> tuple[list[dict[str, Any]], list[str]]:
        return await c.get_networks(bulk=True), await c.get_groups()

    fetched = await over_backends(clients, backends, "listing networks and groups", listing)
    for item in fetched:
        if item.error is not None or item.value is None:
            report.errors.append((item.backend, str(item.error)))
            continue
        report.checked.append(item.backend)
        check = _NetworkPass(report, engine, clients, item.backend, prefix, clock)
        try:
            await check.run(nets, bns, *item.value)
        except ActionError as exc:
            report.errors.append((item.backend, exc.message))
    return report


class _NetworkPass(_Pass):
    async def run(
        self,
        nets: Sequence[Network],
        bns: Mapping[tuple[int, int], BackendNetwork],
        ganeti_nets: Sequence[dict[str, Any]],
        groups: Sequence[str],
    ) -> None:
        in_ganeti = {g["name"]: g for g in ganeti_nets if isinstance(g.get("name"), str)}
        for net in nets:
            bn = bns.get((net.id, self.backend.id))
            if bn is not None and bn.deleted:
                continue
            info = in_ganeti.get(network_name(self.prefix, net.id))
            if net.action == "DESTROY":
                if info is None and bn is not None:
                    await self._gone(net)
                continue
            if bn is None:
                f = self.add(
                    "missing", net.id, self._name(net), "no backend-network row", "create it"
                )
                await self.repair(f, partial(_add_bn_row, self.engine, net.id, self.backend.id))
            if info is None:
                f = self.add(
                    "missing",
                    net.id,
                    self._name(net),
                    "not on the cluster",
                    "CreateNetwork, then ConnectNetwork to every group",
                )
                await self.repair(f, partial(self._create, net, groups))
            else:
                await self._present(net, bn, info, groups)
        live = {n.id for n in nets}
        for name, info in sorted(in_ganeti.items()):
            net_id = network_id_from_name(self.prefix, name)
            if net_id is not None and net_id not in live:
                f = self.add("orphans", net_id, name, "no live network of that id", "remove it")
                await self.repair(f, partial(self._remove, name, info))

    def _name(self, net: Network) -> str:
        return network_name(self.prefix, net.id)

    async def _gone(self, net: Network) -> None:
        name = self._name(net)
        f = self.add(
            "stale",
            net.id,
            name,
            "being destroyed and gone from the cluster",
            "simulate OP_NETWORK_REMOVE success",
        )
        body = _network_status(name, "OP_NETWORK_REMOVE", self.cluster, self.clock.next())
        await self.simulate(f, [body])

    async def _present(
        self,
        net: Network,
        bn: BackendNetwork | None,
        info: Mapping[str, Any],
        groups: Sequence[str],
    ) -> None:
        name = self._name(net)
        connected = {e[0] for e in info.get("group_list") or [] if isinstance(e, list) and e}
        absent = [g for g in groups if g not in connected]
        if absent:
            f = self.add(
                "hanging",
                net.id,
                name,
                f"not connected to group {', '.join(absent)}",
                "ConnectNetwork to those groups",
            )
            await self.repair(f, partial(self._connect, net, absent))
        elif bn is not None and bn.operstate != "ACTIVE":
            f = self.add(
                "not_active",
                net.id,
                name,
                f"connected to every group, database {bn.operstate}",
                "simulate OP_NETWORK_CONNECT success",
            )
            body = _network_status(name, "OP_NETWORK_CONNECT", self.cluster, self.clock.next())
            await self.simulate(f, [body])

    async def _create(self, net: Network, groups: Sequence[str]) -> None:
        where = await placement(self.client, self.backend, net.link)
        await create_network_synced(self.client, self.backend, net, where, prefix=self.prefix)
        for group in groups:
            await connect_network_synced(
                self.client, self.backend, net, where, group, prefix=self.prefix
            )

    async def _connect(self, net: Network, groups: Sequence[str]) -> None:
        where = await placement(self.client, self.backend, net.link)
        for group in groups:
            await connect_network_synced(
                self.client, self.backend, net, where, group, prefix=self.prefix
            )

    async def _remove(self, name: str, info: dict[str, Any]) -> None:
        jobs = BackendJobs(self.backend)
        await submit_remove(self.client, name, info, jobs)
        await wait_for_success(self.client, self.backend, jobs.jobs["delete"][0])


async def _add_bn_row(engine: AsyncEngine, net_id: int, backend_id: int) -> None:
    async with AsyncSession(engine, expire_on_commit=False) as s:
        s.add(
            BackendNetwork(
                network_id=net_id, backend_id=backend_id, operstate="PENDING", deleted=False
            )
        )
        await s.flush()
        conn = await s.connection()
        raw = await conn.get_raw_connection()
        await refresh_network_states(raw.driver_connection, [net_id])
        await s.commit()
