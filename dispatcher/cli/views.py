"""The JSON shapes of CONTRACT §6 (``show --json`` / ``list --json``). Never a secret."""

from __future__ import annotations

from typing import Any

from dispatcher.core.names import instance_name, network_name
from dispatcher.core.times import iso
from dispatcher.db.models import (
    Backend,
    BackendNetwork,
    Flavor,
    Network,
    VirtualMachine,
    VmDiagnostic,
    VmEvent,
)


def server_view(vm: VirtualMachine, prefix: str) -> dict[str, Any]:
    return {
        "id": vm.id,
        "name": vm.name,
        "instance": instance_name(prefix, vm.id),
        "backend_id": vm.backend_id,
        "flavor_id": vm.flavor_id,
        "image": vm.imageid,
        "operstate": vm.operstate,
        "deleted": vm.deleted,
        "suspended": vm.suspended,
        "action": vm.action,
        "backendjobid": vm.backendjobid,
        "backendopcode": vm.backendopcode,
        "backendjobstatus": vm.backendjobstatus,
        "backendlogmsg": vm.backendlogmsg,
        "buildpercentage": vm.buildpercentage,
        "backendtime": iso(vm.backendtime),
        "created": iso(vm.created),
        "updated": iso(vm.updated),
        "nics": [
            {
                "index": n.index,
                "network_id": n.network_id,
                "mac": n.mac,
                "ipv4": n.ipv4,
                "ipv6": n.ipv6,
                "firewall_profile": n.firewall_profile,
            }
            for n in sorted(vm.nics, key=lambda n: n.index)
        ],
    }


def diagnostic_view(d: VmDiagnostic) -> dict[str, Any]:
    return {
        "level": d.level,
        "source": d.source,
        "source_date": iso(d.source_date),
        "message": d.message,
        "details": d.details,
    }


def _event_detail(body: dict[str, Any]) -> str | None:
    """The one field that says most about a message besides its opcode and status."""
    if body.get("logmsg"):
        return str(body["logmsg"])
    for key in ("rprogress", "progress"):
        if key in body:
            return f"{body[key]}%"
    if isinstance(body.get("nics"), list):
        return f"{len(body['nics'])} NIC(s)"
    messages = body.get("messages")
    if isinstance(messages, list):
        return " ".join(str(m) for m in messages) or None
    return str(messages) if messages else None


def event_view(e: VmEvent) -> dict[str, Any]:
    body = e.body
    return {
        "event_time": iso(e.event_time),
        "received": iso(e.received),
        "type": body.get("type"),
        "operation": body.get("operation"),
        "job_id": body.get("jobId"),
        "status": body.get("status"),
        "detail": _event_detail(body),
        "body": body,
    }


def backend_network_view(bn: BackendNetwork) -> dict[str, Any]:
    return {
        "backend_id": bn.backend_id,
        "operstate": bn.operstate,
        "deleted": bn.deleted,
        "backendjobid": bn.backendjobid,
        "backendopcode": bn.backendopcode,
        "backendjobstatus": bn.backendjobstatus,
        "backendlogmsg": bn.backendlogmsg,
        "backendtime": iso(bn.backendtime),
    }


def network_view(net: Network, prefix: str) -> dict[str, Any]:
    return {
        "id": net.id,
        "name": net.name,
        "instance": network_name(prefix, net.id),
        "subnet": net.subnet,
        "gateway": net.gateway,
        "public": net.public,
        "mode": net.mode,
        "link": net.link,
        "dhcp": net.dhcp,
        "mac_prefix": net.mac_prefix,
        "state": net.state,
        "deleted": net.deleted,
        "action": net.action,
        "created": iso(net.created),
        "updated": iso(net.updated),
        "backends": [
            backend_network_view(bn) for bn in sorted(net.backends, key=lambda b: b.backend_id)
        ],
    }


def backend_view(b: Backend) -> dict[str, Any]:
    return {
        "id": b.id,
        "clustername": b.clustername,
        "host": b.host,
        "port": b.port,
        "username": b.username,
        "offline": b.offline,
        "drained": b.drained,
        "mfree": b.mfree,
        "mtotal": b.mtotal,
        "dfree": b.dfree,
        "dtotal": b.dtotal,
        "pinst_cnt": b.pinst_cnt,
        "ctotal": b.ctotal,
        "tls": "insecure" if b.insecure else ("pinned" if b.ca_pem else "system"),
        "last_heartbeat": iso(b.last_heartbeat),
        "last_event": iso(b.last_event),
        "created": iso(b.created),
        "updated": iso(b.updated),
    }


def flavor_view(f: Flavor) -> dict[str, Any]:
    return {
        "id": f.id,
        "name": f.name,
        "cpu": f.cpu,
        "ram": f.ram,
        "disk": f.disk,
        "disk_template": f.disk_template,
        "deleted": f.deleted,
    }
