"""One server's state on demand (the seed's ``request_status_update`` and ``update_status``).

``refresh_server`` asks the cluster for the instance's *live* state (GetInstanceInfo with
``static=0``, a query job that contacts the node) and hands it to the reconciliation rules
for one server, so any repair is a simulated event applied through the history like every
other (never a direct write of the row). ``set_state`` is the administrator's override: a
synthetic ``ganeti-op-status`` (job 0, ``logmsg`` naming the reason) whose opcode the state
rules of CONTRACT §5.3 turn into the wanted state, so it shows in ``server events``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dispatcher.actions.clients import ClientPool, call
from dispatcher.actions.errors import ActionError, DeletedError, InvalidInputError
from dispatcher.actions.jobs import job_error, wait_for_job
from dispatcher.actions.reconciliation import Report, reconcile_one_server
from dispatcher.actions.servers import load_server, server_backend
from dispatcher.core.handling import Incoming, Outcome
from dispatcher.core.messages import parse
from dispatcher.core.names import instance_name
from dispatcher.db.models import Backend
from dispatcher.db.store import EventStore

ADMIN_LOGMSG: Final = "Admin set-state"
# the state -> the opcode (and status) whose event gives it under CONTRACT §5.3; BUILD has
# none: no event takes a server back into BUILD
STATE_EVENTS: Final[Mapping[str, tuple[str, str]]] = {
    "STARTED": ("OP_INSTANCE_STARTUP", "success"),
    "STOPPED": ("OP_INSTANCE_SHUTDOWN", "success"),
    "ERROR": ("OP_INSTANCE_CREATE", "error"),
    "DESTROYED": ("OP_INSTANCE_REMOVE", "success"),
}
INFO_TIMEOUT: Final = 120.0


def instance_from_info(name: str, opresult: Any) -> dict[str, Any] | None:
    """GetInstanceInfo's answer in the bulk listing's shape that reconcile reads (``oper_state``,
    ``nic.*``), or ``None`` when it holds nothing about ``name``.

    The info NICs are ``(name, uuid, ip, mac, mode, link, vlan, network uuid, network info)``.
    """
    result = opresult[0] if isinstance(opresult, list) and opresult else None
    info = result.get(name) if isinstance(result, dict) else None
    if not isinstance(info, dict):
        return None
    macs: list[Any] = []
    ips: list[Any] = []
    nets: list[Any] = []
    for nic in info.get("nics") or []:
        if not isinstance(nic, list) or len(nic) < 9:
            continue
        netinfo = nic[8] if isinstance(nic[8], dict) else {}
        ips.append(nic[2])
        macs.append(nic[3])
        nets.append(netinfo.get("name"))
    run_state = info.get("run_state")
    return {
        "name": name,
        # anything but up/down (a node that did not answer) leaves the state alone
        "oper_state": {"up": True, "down": False}.get(run_state) if run_state else None,
        "nic.macs": macs,
        "nic.ips": ips,
        "nic.networks.names": nets,
    }


def _unknown_instance(status: Mapping[str, Any]) -> bool:
    for result in status.get("opresult") or []:
        if (
            isinstance(result, list)
            and len(result) == 2
            and isinstance(result[1], list)
            and "unknown_entity" in result[1]
        ):
            return True
    return False


async def refresh_server(
    engine: AsyncEngine, clients: ClientPool, vm_id: int, *, prefix: str
) -> Report:
    async with AsyncSession(engine, expire_on_commit=False) as s:
        vm = await load_server(s, vm_id)
        if vm.deleted:
            raise DeletedError(f"server {vm.id} is deleted")
        backend = await server_backend(s, vm)
    client = clients.get(backend)
    name = instance_name(prefix, vm.id)
    doing = f"reading the live state of server {vm.id}"
    job_id = await call(backend, doing, client.get_instance_info(name, static=False))
    status = await wait_for_job(client, backend, job_id, timeout=INFO_TIMEOUT)
    instance: dict[str, Any] | None
    if status.get("status") == "success":
        instance = instance_from_info(name, status.get("opresult"))
        if instance is None:
            raise ActionError(f"job {job_id} on {backend.clustername}: no data for {name}")
        instance["tags"] = await call(backend, doing, client.get_instance_tags(name))
    elif _unknown_instance(status):
        instance = None
    else:
        raise ActionError(
            f"job {job_id} on {backend.clustername} ended {status.get('status')}: "
            f"{job_error(status)}"
        )
    return await reconcile_one_server(engine, clients, vm, backend, instance, prefix=prefix)


async def set_state(
    engine: AsyncEngine, vm_id: int, state: str, reason: str, *, prefix: str
) -> None:
    """Record the administrator's ``state`` as a synthetic event in the server's history."""
    if state not in STATE_EVENTS:
        raise InvalidInputError(
            f"state must be one of {', '.join(STATE_EVENTS)} (no event leads back to BUILD)"
        )
    if not reason.strip():
        raise InvalidInputError("--reason must not be empty")
    async with AsyncSession(engine) as s:
        vm = await load_server(s, vm_id)
        if vm.deleted:
            raise DeletedError(f"server {vm.id} is deleted")
        # an offline backend does not stop the administrator: nothing is asked of it
        backend = await s.get(Backend, vm.backend_id) if vm.backend_id is not None else None
    opcode, status = STATE_EVENTS[state]
    now_us = time.time_ns() // 1000
    body: dict[str, Any] = {
        "type": "ganeti-op-status",
        "instance": instance_name(prefix, vm_id),
        "operation": opcode,
        "jobId": 0,
        "status": status,
        "logmsg": f"{ADMIN_LOGMSG}: {' '.join(reason.split())}",
        "event_time": [now_us // 1_000_000, now_us % 1_000_000],
    }
    if backend is not None:
        body["cluster"] = backend.clustername
    store = EventStore(engine, prefix, from_eventd=False)
    try:
        (result,) = await store.apply([Incoming.of(parse(json.dumps(body).encode()))])
    finally:
        await store.close()
    if result.outcome is not Outcome.APPLIED:
        why = result.reason or result.outcome.value
        raise ActionError(f"server {vm_id}: set-state not applied ({why})")
