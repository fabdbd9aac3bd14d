"""Network actions over RAPI: create a network on every online backend, remove it.

Bookkeeping only (CONTRACT §5): ``network create`` writes the rows (the network ``PENDING``
with action ``CREATE``, a ``PENDING`` backend network per online backend) and commits them
before anything is submitted, so that the jobs' events always find them; if no backend
accepted a single job the rows are deleted again. ``network remove`` submits its jobs while
holding the network row and sets action ``DESTROY`` only once some backend accepted them.

On each backend, create is ``CreateNetwork`` then one ``ConnectNetwork`` per node group, each
depending on the create job; remove is one NIC-removal job per instance still on the network,
one ``DisconnectNetwork`` per connected group depending on those, then ``DeleteNetwork``
depending on the disconnects. Ganeti runs them in that order; nothing here waits, except the
``*_synced`` helpers (used by reconciliation).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.actions.clients import ClientPool, call
from dispatcher.actions.errors import (
    ClusterError,
    DeletedError,
    InUseError,
    InvalidInputError,
    NotFoundError,
)
from dispatcher.actions.jobs import wait_for_success
from dispatcher.actions.servers import disconnect_from_network
from dispatcher.core.names import network_name
from dispatcher.db.models import (
    Backend,
    BackendNetwork,
    Network,
    NetworkEvent,
    NetworkInterface,
    VirtualMachine,
)
from dispatcher.rapi import Depends, RapiClient, RapiError, RapiNotFound
from dispatcher.rapi.client import NETWORKS_SINCE

MODES: Final = ("bridged", "routed")
DHCP_TAG: Final = "nfdhcpd"
ANY_END: Final = ("success", "error", "canceled")
_MAC_PREFIX_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){2}\Z")


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    name: str
    subnet: str
    gateway: str | None = None
    public: bool = False
    mode: str = "bridged"
    link: str | None = None  # None: each backend's default NIC link (``nicparams``)
    dhcp: bool = False
    mac_prefix: str | None = None


def validate_spec(spec: NetworkSpec) -> NetworkSpec:
    """The spec with the subnet in canonical form; InvalidInputError for what Ganeti would
    refuse (an IPv4 network from /16 to /30, a gateway inside it, a 3-octet MAC prefix)."""
    if not spec.name or len(spec.name) > 255:
        raise InvalidInputError("a network name is 1 to 255 characters")
    try:
        subnet = ipaddress.ip_network(spec.subnet, strict=True)
    except ValueError as exc:
        raise InvalidInputError(f"--subnet: {exc}") from None
    if not isinstance(subnet, ipaddress.IPv4Network) or not 16 <= subnet.prefixlen <= 30:
        raise InvalidInputError("--subnet must be an IPv4 network from /16 to /30")
    if spec.gateway is not None:
        try:
            gateway = ipaddress.ip_address(spec.gateway)
        except ValueError as exc:
            raise InvalidInputError(f"--gateway: {exc}") from None
        if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
            raise InvalidInputError(f"--gateway {gateway} is not a host address of {subnet}")
    if spec.mode not in MODES:
        raise InvalidInputError(f"--mode must be one of {', '.join(MODES)}")
    if spec.link is not None and not spec.link:
        raise InvalidInputError("--link must not be empty")
    if spec.mac_prefix is not None and not _MAC_PREFIX_RE.match(spec.mac_prefix):
        raise InvalidInputError("--mac-prefix must be three octets, like aa:00:01")
    return NetworkSpec(
        name=spec.name,
        subnet=str(subnet),
        gateway=spec.gateway,
        public=spec.public,
        mode=spec.mode,
        link=spec.link,
        dhcp=spec.dhcp,
        mac_prefix=spec.mac_prefix.lower() if spec.mac_prefix else None,
    )


@dataclass(slots=True)
class BackendJobs:
    backend: Backend
    jobs: dict[str, list[int]] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None

    def add(self, kind: str, job_id: int) -> None:
        self.jobs.setdefault(kind, []).append(job_id)

    def view(self) -> dict[str, Any]:
        return {
            "backend_id": self.backend.id,
            "clustername": self.backend.clustername,
            "jobs": self.jobs,
            "error": self.error,
            "note": self.note,
        }


@dataclass(slots=True)
class NetworkResult:
    network: Network
    backends: list[BackendJobs]

    @property
    def failures(self) -> list[BackendJobs]:
        return [b for b in self.backends if b.error is not None]

    def failure_message(self) -> str:
        parts = [f"{b.backend.clustername}: {b.error}" for b in self.failures]
        return "; ".join(parts)


async def online_backends(s: AsyncSession) -> list[Backend]:
    q = select(Backend).where(Backend.offline.is_(False)).order_by(Backend.id)
    return list(await s.scalars(q))


async def load_network(s: AsyncSession, net_id: int, *, lock: bool = False) -> Network:
    q = select(Network).where(Network.id == net_id)
    if lock:
        q = q.with_for_update(of=Network)
    net = (await s.scalars(q)).first()
    if net is None:
        raise NotFoundError(f"no network {net_id}")
    return net


# -- per-backend building blocks --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placement:
    """What a backend needs to get a network: its node groups and the link to use."""

    groups: list[str]
    link: str


async def placement(client: RapiClient, backend: Backend, link: str | None) -> Placement:
    """Reads only: the Ganeti release (networks need 2.7), the node groups, and the cluster's
    default NIC link when no link was given."""
    version = await call(backend, "reading the Ganeti version", client.get_software_version())
    if version < NETWORKS_SINCE:
        raise ClusterError(
            f"{backend.clustername} runs Ganeti {'.'.join(map(str, version))}: networks need 2.7"
        )
    groups = await call(backend, "listing node groups", client.get_groups())
    if link is None:
        info = await call(backend, "reading the cluster", client.get_info())
        default = ((info.get("nicparams") or {}).get("default") or {}).get("link")
        if not isinstance(default, str) or not default:
            raise ClusterError(f"{backend.clustername} has no default NIC link: give --link")
        link = default
    return Placement(groups, link)


async def submit_create(
    client: RapiClient,
    net: Network,
    where: Placement,
    into: BackendJobs,
    *,
    prefix: str,
    groups: Sequence[str] | None = None,
    create: bool = True,
) -> None:
    """CreateNetwork (unless ``create`` is false), then ConnectNetwork for ``groups`` (default:
    every group) depending on it; the job ids go to ``into.jobs`` as they are accepted.
    Raises RapiError."""
    name = network_name(prefix, net.id)
    depends: Depends | None = None
    if create:
        job = await client.create_network(
            name,
            net.subnet,
            gateway=net.gateway,
            mac_prefix=net.mac_prefix,
            tags=[DHCP_TAG] if net.dhcp else None,
            conflicts_check=net.public,
        )
        into.add("create", job)
        depends = [(job, ANY_END)]
    for group in where.groups if groups is None else groups:
        job = await client.connect_network(
            name, group, net.mode, where.link, conflicts_check=net.public, depends=depends
        )
        into.add("connect", job)


async def create_network_synced(
    client: RapiClient, backend: Backend, net: Network, where: Placement, *, prefix: str
) -> dict[str, Any]:
    """CreateNetwork and wait for it; raises JobFailedError unless it succeeded."""
    jobs = BackendJobs(backend)
    await call(
        backend,
        f"creating network {net.id}",
        submit_create(client, net, where, jobs, prefix=prefix, groups=[]),
    )
    return await wait_for_success(client, backend, jobs.jobs["create"][0])


async def connect_network_synced(
    client: RapiClient,
    backend: Backend,
    net: Network,
    where: Placement,
    group: str,
    *,
    prefix: str,
) -> dict[str, Any]:
    """ConnectNetwork for one group and wait for it; raises JobFailedError on failure."""
    jobs = BackendJobs(backend)
    await call(
        backend,
        f"connecting network {net.id} to group {group}",
        submit_create(client, net, where, jobs, prefix=prefix, groups=[group], create=False),
    )
    return await wait_for_success(client, backend, jobs.jobs["connect"][0])


async def submit_remove(
    client: RapiClient, name: str, info: dict[str, Any], into: BackendJobs
) -> None:
    """NIC removals, disconnects (depending on them), delete (depending on the
    disconnects), recorded in ``into.jobs``. Raises RapiError."""
    nic_jobs: list[int] = []
    for inst in info.get("inst_list") or []:
        job = await disconnect_from_network(client, inst, name, uuid=info.get("uuid"))
        if job is not None:
            nic_jobs.append(job)
            into.add("remove_nics", job)
    disconnects: list[int] = []
    nic_depends: Depends | None = [(j, ANY_END) for j in nic_jobs] or None
    for entry in info.get("group_list") or []:
        group = entry[0] if isinstance(entry, list) and entry else entry
        if isinstance(group, str):
            job = await client.disconnect_network(name, group, depends=nic_depends)
            disconnects.append(job)
            into.add("disconnect", job)
    depends: Depends | None = [(j, ANY_END) for j in disconnects] or nic_depends
    into.add("delete", await client.delete_network(name, depends=depends))


# -- create / remove --------------------------------------------------------------------------


async def create_network(
    s: AsyncSession, clients: ClientPool, spec: NetworkSpec, *, prefix: str
) -> NetworkResult:
    """Create the rows, then the network on every online backend.

    Raises (and leaves nothing behind) when a backend cannot be read or no backend accepted
    any job. When some backends accepted and others failed, the rows stay and the result
    lists the failures (``dispatcher reconcile networks --fix`` completes them)."""
    spec = validate_spec(spec)
    backends = await online_backends(s)
    await s.commit()
    found = await asyncio.gather(
        *(placement(clients.get(b), b, spec.link) for b in backends), return_exceptions=True
    )
    placements: list[Placement] = []
    for item in found:
        if isinstance(item, BaseException):
            raise item
        placements.append(item)
    net = Network(
        name=spec.name,
        subnet=spec.subnet,
        gateway=spec.gateway,
        public=spec.public,
        mode=spec.mode,
        link=spec.link,
        dhcp=spec.dhcp,
        mac_prefix=spec.mac_prefix,
        state="PENDING",
        action="CREATE",
        deleted=False,
    )
    s.add(net)
    await s.flush()
    for b in backends:
        s.add(
            BackendNetwork(network_id=net.id, backend_id=b.id, operstate="PENDING", deleted=False)
        )
    await s.commit()
    results: list[BackendJobs] = []
    accepted = False
    for b, where in zip(backends, placements, strict=True):
        out = BackendJobs(b)
        results.append(out)
        try:
            await submit_create(clients.get(b), net, where, out, prefix=prefix)
        except RapiError as exc:
            error = ClusterError.from_rapi(exc, b.clustername, f"creating network {net.id}")
            out.error = error.message
        accepted = accepted or bool(out.jobs)
    if results and not accepted:
        await _forget_network(s, net)
        raise ClusterError("; ".join(r.error or "" for r in results))
    await s.refresh(net)
    return NetworkResult(net, results)


async def _forget_network(s: AsyncSession, net: Network) -> None:
    net_id = net.id
    await s.rollback()
    s.expunge(net)
    bn_ids = select(BackendNetwork.id).where(BackendNetwork.network_id == net_id)
    await s.execute(delete(NetworkEvent).where(NetworkEvent.backend_network_id.in_(bn_ids)))
    await s.execute(delete(BackendNetwork).where(BackendNetwork.network_id == net_id))
    await s.execute(delete(Network).where(Network.id == net_id))
    await s.commit()


async def remove_network(
    s: AsyncSession, clients: ClientPool, net_id: int, *, prefix: str
) -> NetworkResult:
    """Submit the removal on every online backend that has the network, then set action
    DESTROY (in the transaction that held the row). Raises, changing nothing, when no backend
    accepted any job; backends where Ganeti has no such network get a note instead of jobs.
    Offline backends are skipped (their backend networks no longer count, CONTRACT §5.3)."""
    try:
        net = await load_network(s, net_id, lock=True)
        if net.deleted:
            raise DeletedError(f"network {net.id} is deleted")
        # as Synnefo's API: a failed remove would still count as DELETED (§5.3, action
        # DESTROY) while the servers keep their NICs on the cluster
        users = list(
            await s.scalars(
                select(NetworkInterface.machine_id)
                .join(VirtualMachine, VirtualMachine.id == NetworkInterface.machine_id)
                .where(NetworkInterface.network_id == net.id, VirtualMachine.deleted.is_(False))
                .distinct()
                .order_by(NetworkInterface.machine_id)
            )
        )
        if users:
            raise InUseError(
                f"network {net.id} is in use by server(s) {', '.join(map(str, users))}:"
                " disconnect or remove them first"
            )
        rows = await s.execute(
            select(BackendNetwork, Backend)
            .join(Backend, Backend.id == BackendNetwork.backend_id)
            .where(BackendNetwork.network_id == net.id, BackendNetwork.deleted.is_(False))
            .order_by(Backend.id)
        )
        name = network_name(prefix, net.id)
        results: list[BackendJobs] = []
        for _bn, b in rows:
            out = BackendJobs(b)
            results.append(out)
            if b.offline:
                out.note = "backend offline: skipped"
                continue
            client = clients.get(b)
            try:
                await call(b, "checking the Ganeti version", _require_networks(client))
                try:
                    info = await client.get_network(name)
                except RapiNotFound:
                    out.note = "not on the cluster: nothing to remove there"
                    continue
                await submit_remove(client, name, info, out)
            except RapiError as exc:
                error = ClusterError.from_rapi(exc, b.clustername, f"removing network {net.id}")
                out.error = error.message
            except ClusterError as exc:
                out.error = exc.message
        accepted = any(r.jobs for r in results)
        if not accepted and any(r.error for r in results):
            raise ClusterError("; ".join(r.error for r in results if r.error))
        net.action = "DESTROY"
        await s.commit()
    except BaseException:
        await s.rollback()
        raise
    await s.refresh(net)
    return NetworkResult(net, results)


async def _require_networks(client: RapiClient) -> None:
    version = await client.get_software_version()
    if version < NETWORKS_SINCE:
        raise ClusterError(f"Ganeti {'.'.join(map(str, version))} has no networks (needs 2.7)")
