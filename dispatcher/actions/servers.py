"""Server actions over RAPI: create, start, stop, reboot, remove, console, firewall, NICs.

Bookkeeping only (CONTRACT §5): a server's state changes through events alone. An action
creates the row (create) or sets ``action`` (reference §e.5, :func:`start_action`), and
records the create job's id in ``backendjobid``.

Nothing is left half-written when Ganeti refuses:

* ``create`` commits the row first (so that the events of its job are never "unknown VM"),
  submits CreateInstance, and deletes the row again if the submission fails;
* start/stop/reboot/remove lock the row, submit the job, and set ``action`` in the same
  transaction, committed only once Ganeti has accepted the job;
* firewall/connect/disconnect change nothing in the database.

Every read needed to build a request (the cluster's version, its nodes, the instance) comes
before the one job-submitting call wherever possible, so that most failures happen before
anything was written or submitted.
"""

from __future__ import annotations

import copy
import json
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.actions.clients import ClientPool, call, ensure_online
from dispatcher.actions.errors import (
    ActionError,
    BackendUnavailableError,
    BuildingError,
    ClusterError,
    DeletedError,
    InvalidActionError,
    InvalidInputError,
    NotFoundError,
)
from dispatcher.core.names import instance_name, network_name
from dispatcher.core.vm_state import TAG_FROM_FIREWALL
from dispatcher.db.models import (
    Backend,
    Flavor,
    Network,
    NetworkInterface,
    VirtualMachine,
    VmDiagnostic,
    VmEvent,
)
from dispatcher.logs import register_secret
from dispatcher.rapi import RapiClient, RapiError, RebootType, SoftwareVersion

ACTIONS: Final = frozenset({"CREATE", "START", "STOP", "SUSPEND", "REBOOT", "DESTROY"})
FIREWALL_PROFILES: Final = tuple(TAG_FROM_FIREWALL)  # ENABLED, DISABLED, PROTECTED
FIREWALL_TAG: Final = "synnefo:network:{index}:{value}"
DEFAULT_IMAGE_FORMAT: Final = "diskdump"
# Ganeti 2.6 split ``memory`` into maxmem/minmem; the NIC ``network`` key came with 2.7.
MAXMEM_SINCE: Final[SoftwareVersion] = (2, 6, 0)
NIC_NETWORK_SINCE: Final[SoftwareVersion] = (2, 7, 0)
# Keys of the CreateInstance body that only the dispatcher decides.
_OWN_KEYS: Final = ("mode", "name", "disk_template", "disks", "nics", "beparams", "osparams")
# Defaults that DISPATCHER_CREATEINSTANCE_KWARGS may override (a cluster whose DNS resolves
# instance names may want the checks).
_DEFAULTS: Final[Mapping[str, Any]] = {"name_check": False, "ip_check": False}


@dataclass(slots=True)
class ActionResult:
    vm: VirtualMachine
    backend: Backend
    job_id: int
    job_ids: list[int] = field(default_factory=list)


# -- start_action (reference §e.5) ---------------------------------------------------------


def check_action(vm: VirtualMachine, action: str) -> None:
    """Raise unless ``action`` may start on ``vm``; changes nothing."""
    if action not in ACTIONS:
        raise InvalidActionError(f"unknown action {action!r}")
    if vm.deleted:
        raise DeletedError(f"server {vm.id} is deleted")
    if vm.operstate == "BUILD" and action != "DESTROY":
        raise BuildingError(
            f"server {vm.id} is still building (operstate BUILD): only remove is allowed"
        )


def start_action(vm: VirtualMachine, action: str) -> None:
    """Record that ``action`` started: set it, clear the job fields, (un)suspend."""
    check_action(vm, action)
    vm.action = action
    vm.backendjobid = None
    vm.backendopcode = None
    vm.backendjobstatus = None
    vm.backendlogmsg = None
    if action == "SUSPEND":
        vm.suspended = True
    elif action == "START":
        vm.suspended = False
    # DESTROY deliberately leaves ``deleted`` alone: only the remove event sets it.


def _check_usable(vm: VirtualMachine) -> None:
    """The rules of start_action for operations that are not ACTIONS (NICs, firewall)."""
    if vm.deleted:
        raise DeletedError(f"server {vm.id} is deleted")
    if vm.operstate == "BUILD":
        raise BuildingError(
            f"server {vm.id} is still building (operstate BUILD): only remove is allowed"
        )


# -- lookups --------------------------------------------------------------------------------


async def load_server(s: AsyncSession, vm_id: int, *, lock: bool = False) -> VirtualMachine:
    q = select(VirtualMachine).where(VirtualMachine.id == vm_id)
    if lock:
        q = q.with_for_update(of=VirtualMachine)
    vm = (await s.scalars(q)).first()
    if vm is None:
        raise NotFoundError(f"no server {vm_id}")
    return vm


async def server_backend(s: AsyncSession, vm: VirtualMachine) -> Backend:
    if vm.backend_id is None:
        raise ActionError(f"server {vm.id} is on no backend")
    backend = await s.get(Backend, vm.backend_id)
    if backend is None:  # pragma: no cover - the foreign key forbids it
        raise ActionError(f"server {vm.id}: backend {vm.backend_id} is gone")
    ensure_online(backend)
    return backend


async def choose_backend(s: AsyncSession, backend_id: int | None) -> Backend:
    """The named backend, or the online, undrained one with most free memory (then fewest
    servers). Offline or drained backends get no new servers."""
    if backend_id is not None:
        backend = await s.get(Backend, backend_id)
        if backend is None:
            raise NotFoundError(f"no backend {backend_id}")
        ensure_online(backend)
        if backend.drained:
            raise BackendUnavailableError(
                f"backend {backend.id} ({backend.clustername}) is drained: it takes no new servers"
            )
        return backend
    load = (
        select(func.count())
        .select_from(VirtualMachine)
        .where(VirtualMachine.backend_id == Backend.id, VirtualMachine.deleted.is_(False))
        .scalar_subquery()
    )
    q = (
        select(Backend)
        .where(Backend.offline.is_(False), Backend.drained.is_(False))
        .order_by(Backend.mfree.desc(), load, Backend.id)
        .limit(1)
    )
    backend = (await s.scalars(q)).first()
    if backend is None:
        raise BackendUnavailableError("no online, undrained backend to create the server on")
    return backend


async def _networks_for(s: AsyncSession, network_ids: Sequence[int]) -> list[Network]:
    nets = []
    for net_id in network_ids:
        net = await s.get(Network, net_id)
        if net is None:
            raise NotFoundError(f"no network {net_id}")
        if net.deleted:
            raise DeletedError(f"network {net_id} is deleted")
        if net.action == "DESTROY":
            raise DeletedError(f"network {net_id} is being removed")
        nets.append(net)
    return nets


async def default_networks(s: AsyncSession) -> list[Network]:
    """No network asked for: NIC 0 on the public network (the lowest-id live public one), as
    Synnefo did; none at all when there is no public network."""
    q = (
        select(Network)
        .where(
            Network.public.is_(True),
            Network.deleted.is_(False),
            Network.action.is_distinct_from("DESTROY"),
        )
        .order_by(Network.id)
        .limit(1)
    )
    return list(await s.scalars(q))


# -- create ---------------------------------------------------------------------------------


def _merge(base: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, dict) and isinstance(base.get(key), dict):
        base[key] = {**base[key], **value}
    else:
        base[key] = value


def create_instance_body(
    *,
    instance: str,
    flavor: Flavor,
    nics: Sequence[Mapping[str, Any]],
    image_id: str,
    image_format: str,
    password: str,
    version: SoftwareVersion,
    kwargs: Mapping[str, Any],
    image_properties: Mapping[str, Any] | None = None,
    personality: Sequence[Mapping[str, Any]] | None = None,
    pnode: str | None = None,
) -> dict[str, Any]:
    """The CreateInstance body (request version 1; the client adds ``__version__``).

    Precedence, lowest first: ``name_check``/``ip_check`` false; a deep copy of ``kwargs``
    (DISPATCHER_CREATEINSTANCE_KWARGS); what the dispatcher decides (mode, name, template,
    disks, NICs, beparams, osparams; the dict-valued ones are merged over the kwargs' dicts).
    ``pnode`` is used only if neither ``pnode`` nor ``iallocator`` is in the result.
    """
    body: dict[str, Any] = dict(_DEFAULTS)
    extra = copy.deepcopy(dict(kwargs))
    extra.pop("instance_name", None)  # the name is ours; both spellings would be a 400
    body.update(extra)
    beparams: dict[str, Any] = {"vcpus": flavor.cpu, "auto_balance": True}
    if version >= MAXMEM_SINCE:
        beparams.update(maxmem=flavor.ram, minmem=flavor.ram)
    else:
        beparams["memory"] = flavor.ram
    osparams: dict[str, Any] = {
        "img_id": image_id,
        "img_passwd": password,
        "img_format": image_format,
        "img_properties": json.dumps(dict(image_properties or {}), sort_keys=True),
    }
    if personality:
        osparams["img_personality"] = json.dumps([dict(p) for p in personality])
    own: dict[str, Any] = {
        "mode": "create",
        "name": instance,
        "disk_template": flavor.disk_template,
        "disks": [] if flavor.disk_template == "diskless" else [{"size": flavor.disk * 1024}],
        "nics": [dict(n) for n in nics],
        "beparams": beparams,
        "osparams": osparams,
    }
    for key in _OWN_KEYS:
        _merge(body, key, own[key])
    if version >= MAXMEM_SINCE and isinstance(body.get("beparams"), dict):
        # the legacy alias would override maxmem/minmem inside Ganeti
        body["beparams"].pop("memory", None)
    if pnode is not None and "pnode" not in body and "iallocator" not in body:
        body["pnode"] = pnode
    return body


async def single_vm_node(client: RapiClient) -> str | None:
    """The cluster's node when it has exactly one vm-capable node (Ganeti's allocator
    refuses every placement on a one-node cluster), else None."""
    nodes = await client.get_nodes(bulk=True)
    capable = [n for n in nodes if n.get("vm_capable", True) and isinstance(n.get("name"), str)]
    return str(capable[0]["name"]) if len(capable) == 1 else None


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    flavor_id: int
    image_id: str
    image_format: str = DEFAULT_IMAGE_FORMAT
    password: str | None = None
    backend_id: int | None = None
    network_ids: tuple[int, ...] | None = None  # None: the default (public) network
    image_properties: Mapping[str, Any] | None = None
    personality: Sequence[Mapping[str, Any]] | None = None

    def __repr__(self) -> str:  # never show the password
        return f"ServerSpec(name={self.name!r}, flavor_id={self.flavor_id}, ...)"


async def create_server(
    s: AsyncSession,
    clients: ClientPool,
    spec: ServerSpec,
    *,
    prefix: str,
    createinstance_kwargs: Mapping[str, Any],
) -> ActionResult:
    """Create the server row (BUILD, action CREATE) and submit CreateInstance.

    Without a password a random one is used (and never shown: give ``--password-file`` to
    log in with a password). On any failure to submit, the row is deleted again.
    """
    if not spec.name or len(spec.name) > 255:
        raise InvalidInputError("a server name is 1 to 255 characters")
    if not spec.image_id:
        raise InvalidInputError("an image id is required")
    password = spec.password or secrets.token_urlsafe(18)
    register_secret(password)
    flavor = await s.get(Flavor, spec.flavor_id)
    if flavor is None:
        raise NotFoundError(f"no flavor {spec.flavor_id}")
    if flavor.deleted:
        raise DeletedError(f"flavor {flavor.id} is deleted")
    if spec.network_ids is None:
        nets = await default_networks(s)
    else:
        nets = await _networks_for(s, spec.network_ids)
    backend = await choose_backend(s, spec.backend_id)
    client = clients.get(backend)
    version = await call(backend, "reading the Ganeti version", client.get_software_version())
    if nets and version < NIC_NETWORK_SINCE:
        raise ClusterError(f"{backend.clustername} runs Ganeti {version}: networks need 2.7")
    pnode = None
    kwargs = createinstance_kwargs
    if "pnode" not in kwargs and "iallocator" not in kwargs:
        pnode = await call(backend, "listing nodes", single_vm_node(client))

    vm = VirtualMachine(
        name=spec.name,
        backend_id=backend.id,
        flavor_id=flavor.id,
        imageid=spec.image_id,
        operstate="BUILD",
        action="CREATE",
        deleted=False,
        suspended=False,
        buildpercentage=0,
    )
    s.add(vm)
    await s.commit()
    body = create_instance_body(
        instance=instance_name(prefix, vm.id),
        flavor=flavor,
        nics=[{"network": network_name(prefix, n.id), "ip": "pool"} for n in nets],
        image_id=spec.image_id,
        image_format=spec.image_format,
        password=password,
        version=version,
        kwargs=kwargs,
        image_properties=spec.image_properties,
        personality=spec.personality,
        pnode=pnode,
    )
    try:
        job_id = await client.create_instance(body)
    except BaseException as exc:
        await _forget_server(s, vm)
        if isinstance(exc, RapiError):
            error = ClusterError.from_rapi(
                exc, backend.clustername, f"creating server {vm.id}", secrets=[password]
            )
            if exc.transient:
                error = ClusterError(
                    f"{error.message}; server {vm.id} was not kept: if its instance appears, "
                    "`dispatcher reconcile servers --fix` removes it",
                    cause=exc,
                )
            raise error from None
        raise
    vm.backendjobid = job_id
    await s.commit()
    await s.refresh(vm)
    return ActionResult(vm, backend, job_id, [job_id])


async def _forget_server(s: AsyncSession, vm: VirtualMachine) -> None:
    """Undo a create whose job was never accepted (with anything an event may have added)."""
    vm_id = vm.id
    await s.rollback()
    s.expunge(vm)
    for model in (VmEvent, VmDiagnostic, NetworkInterface):
        await s.execute(delete(model).where(model.machine_id == vm_id))
    await s.execute(delete(VirtualMachine).where(VirtualMachine.id == vm_id))
    await s.commit()


# -- power actions --------------------------------------------------------------------------

Submit = Callable[[RapiClient, str], Awaitable[int]]


async def _job_action(
    s: AsyncSession,
    clients: ClientPool,
    vm_id: int,
    action: str,
    doing: str,
    submit: Submit,
    *,
    prefix: str,
) -> ActionResult:
    """Lock the row, check the action, submit the job, then record the action and commit.

    The row lock keeps the pipeline from applying this job's events before ``action`` is
    set; on any failure the transaction is rolled back and nothing changed."""
    try:
        vm = await load_server(s, vm_id, lock=True)
        check_action(vm, action)
        backend = await server_backend(s, vm)
        client = clients.get(backend)
        job_id = await call(
            backend, f"{doing} server {vm.id}", submit(client, instance_name(prefix, vm.id))
        )
        start_action(vm, action)
        await s.commit()
    except BaseException:
        await s.rollback()
        raise
    await s.refresh(vm)
    return ActionResult(vm, backend, job_id, [job_id])


async def start_server(
    s: AsyncSession, clients: ClientPool, vm_id: int, *, prefix: str
) -> ActionResult:
    return await _job_action(
        s, clients, vm_id, "START", "starting", lambda c, n: c.startup_instance(n), prefix=prefix
    )


async def stop_server(
    s: AsyncSession, clients: ClientPool, vm_id: int, *, prefix: str
) -> ActionResult:
    return await _job_action(
        s, clients, vm_id, "STOP", "stopping", lambda c, n: c.shutdown_instance(n), prefix=prefix
    )


async def reboot_server(
    s: AsyncSession, clients: ClientPool, vm_id: int, *, prefix: str, hard: bool = False
) -> ActionResult:
    kind: RebootType = "hard" if hard else "soft"
    return await _job_action(
        s,
        clients,
        vm_id,
        "REBOOT",
        "rebooting",
        lambda c, n: c.reboot_instance(n, kind),
        prefix=prefix,
    )


async def destroy_server(
    s: AsyncSession, clients: ClientPool, vm_id: int, *, prefix: str
) -> ActionResult:
    return await _job_action(
        s, clients, vm_id, "DESTROY", "removing", lambda c, n: c.delete_instance(n), prefix=prefix
    )


# -- reads and modifications that are not ACTIONS ------------------------------------------


async def _usable_server(
    s: AsyncSession, clients: ClientPool, vm_id: int, prefix: str
) -> tuple[VirtualMachine, Backend, RapiClient, str]:
    vm = await load_server(s, vm_id)
    _check_usable(vm)
    backend = await server_backend(s, vm)
    await s.commit()  # hold no transaction open across the RAPI calls
    return vm, backend, clients.get(backend), instance_name(prefix, vm.id)


async def server_console(
    s: AsyncSession, clients: ClientPool, vm_id: int, *, prefix: str
) -> dict[str, Any]:
    """``{"kind": "vnc", "host": <primary node>, "port": <VNC port or null>}``."""
    vm, backend, client, name = await _usable_server(s, clients, vm_id, prefix)
    inst = await call(backend, f"reading server {vm.id}", client.get_instance(name))
    if (inst.get("hvparams") or {}).get("serial_console"):
        raise ActionError(f"server {vm.id} has a serial console: no VNC console to offer")
    if not inst.get("oper_state"):
        raise ActionError(f"server {vm.id} is not running on {backend.clustername}")
    return {"kind": "vnc", "host": inst.get("pnode"), "port": inst.get("network_port")}


def _nic_count(inst: Mapping[str, Any]) -> int:
    macs = inst.get("nic.macs")
    return len(macs) if isinstance(macs, list) else 0


def _check_nic_index(vm: VirtualMachine, inst: Mapping[str, Any], index: int) -> None:
    count = _nic_count(inst)
    if not 0 <= index < count:
        raise InvalidInputError(
            f"server {vm.id} has no NIC {index} (it has {count} NIC{'s' if count != 1 else ''})"
        )


def firewall_tag(index: int, profile: str) -> str:
    return FIREWALL_TAG.format(index=index, value=TAG_FROM_FIREWALL[profile])


async def set_firewall_profile(
    s: AsyncSession,
    clients: ClientPool,
    vm_id: int,
    profile: str,
    *,
    prefix: str,
    nic_index: int = 0,
) -> ActionResult:
    """Tag ``synnefo:network:<nic>:<value>`` after deleting that NIC's other firewall tags,
    then the no-op ``ModifyInstance(os_name=<its OS>)`` whose NIC report carries the new
    profile back. ``job_id`` is that modify job; ``job_ids`` every job, in order."""
    wanted = profile.upper()
    if wanted not in TAG_FROM_FIREWALL:
        raise InvalidInputError(
            f"unknown firewall profile {profile!r}: one of {', '.join(FIREWALL_PROFILES)}"
        )
    vm, backend, client, name = await _usable_server(s, clients, vm_id, prefix)
    inst = await call(backend, f"reading server {vm.id}", client.get_instance(name))
    _check_nic_index(vm, inst, nic_index)
    tag = firewall_tag(nic_index, wanted)
    mine = FIREWALL_TAG.format(index=nic_index, value="")
    tags = [t for t in inst.get("tags") or [] if isinstance(t, str)]
    stale = [t for t in tags if t.startswith(mine) and t != tag]
    jobs: list[int] = []
    doing = f"setting the firewall of server {vm.id}"
    if stale:
        jobs.append(await call(backend, doing, client.delete_instance_tags(name, stale)))
    if tag not in tags:
        jobs.append(await call(backend, doing, client.add_instance_tags(name, [tag])))
    jobs.append(await call(backend, doing, client.modify_instance(name, os_name=inst["os"])))
    return ActionResult(vm, backend, jobs[-1], jobs)


async def connect_server(
    s: AsyncSession, clients: ClientPool, vm_id: int, network_id: int, *, prefix: str
) -> ActionResult:
    """Add a NIC on the network with an address from its pool (hotplugged if possible)."""
    net = (await _networks_for(s, [network_id]))[0]
    vm, backend, client, name = await _usable_server(s, clients, vm_id, prefix)
    version = await call(backend, "reading the Ganeti version", client.get_software_version())
    if version < NIC_NETWORK_SINCE:
        raise ClusterError(f"{backend.clustername} runs Ganeti {version}: networks need 2.7")
    nic = {"network": network_name(prefix, net.id), "ip": "pool"}
    job_id = await call(
        backend,
        f"connecting server {vm.id} to network {net.id}",
        client.modify_instance(name, nics=[["add", -1, nic]], hotplug_if_possible=True),
    )
    return ActionResult(vm, backend, job_id, [job_id])


async def disconnect_server(
    s: AsyncSession, clients: ClientPool, vm_id: int, nic_index: int, *, prefix: str
) -> ActionResult:
    """Remove NIC ``nic_index`` (Ganeti's index, which is the server's NIC index)."""
    vm, backend, client, name = await _usable_server(s, clients, vm_id, prefix)
    inst = await call(backend, f"reading server {vm.id}", client.get_instance(name))
    _check_nic_index(vm, inst, nic_index)
    job_id = await call(
        backend,
        f"removing NIC {nic_index} of server {vm.id}",
        client.modify_instance(name, nics=[["remove", nic_index, {}]], hotplug_if_possible=True),
    )
    return ActionResult(vm, backend, job_id, [job_id])


def nic_indexes_on(inst: Mapping[str, Any], network: str, uuid: str | None = None) -> list[int]:
    """Indexes of the instance's NICs on ``network`` (by name; 2.7 reports UUIDs only)."""
    names = inst.get("nic.networks.names")
    if not isinstance(names, list):
        names = inst.get("nic.networks") or []
    return [i for i, n in enumerate(names) if n is not None and n in (network, uuid)]


async def disconnect_from_network(
    client: RapiClient,
    instance: str,
    network: str,
    *,
    uuid: str | None = None,
) -> int | None:
    """Remove every NIC of ``instance`` on ``network`` in one job, highest index first (so
    that the lower indexes stay valid); None when it has none. Raises RapiError."""
    inst = await client.get_instance(instance)
    indexes = sorted(nic_indexes_on(inst, network, uuid), reverse=True)
    if not indexes:
        return None
    return await client.modify_instance(
        instance, nics=[["remove", i, {}] for i in indexes], hotplug_if_possible=True
    )
