"""Backend capacity from ``GET /2/nodes?bulk=1``: the sums over the nodes that can host new
instances (vm-capable, not drained, not offline; reference ganeti-rapi §4.1). A value a node
did not report (null) counts as 0."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.actions.clients import ClientPool, ensure_online
from dispatcher.actions.errors import ActionError, NotFoundError
from dispatcher.actions.inventory import backends_to_query, get_ganeti_nodes
from dispatcher.db.models import Backend

FIELDS: Final = ("mfree", "mtotal", "dfree", "dtotal", "pinst_cnt", "ctotal")


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value)


def usable(node: Mapping[str, Any]) -> bool:
    return (
        bool(node.get("vm_capable", True)) and not node.get("drained") and not node.get("offline")
    )


def sum_resources(nodes: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    totals = dict.fromkeys(FIELDS, 0)
    for node in nodes:
        if usable(node):
            for key in FIELDS:
                totals[key] += _int(node.get(key))
    return totals


@dataclass(slots=True)
class ResourceUpdate:
    updated: list[Backend]
    failed: list[tuple[Backend, ActionError]]


async def update_resources(
    s: AsyncSession, clients: ClientPool, backend_id: int | None = None
) -> ResourceUpdate:
    """Refresh one backend (refused when offline) or every online backend. Backends that
    could not be read keep their old values and are listed in ``failed``."""
    if backend_id is not None:
        backend = await s.get(Backend, backend_id)
        if backend is None:
            raise NotFoundError(f"no backend {backend_id}")
        ensure_online(backend)
        backends: Sequence[Backend] = [backend]
    else:
        backends = await backends_to_query(s)
    await s.commit()
    fetched = await get_ganeti_nodes(clients, backends)
    out = ResourceUpdate([], [])
    for item in fetched:
        if item.error is not None or item.value is None:
            out.failed.append((item.backend, item.error or ActionError("no answer")))
            continue
        totals = sum_resources(item.value)
        for key, value in totals.items():
            setattr(item.backend, key, value)
        item.backend.updated = func.now()
        out.updated.append(item.backend)
    await s.commit()
    for b in out.updated:
        await s.refresh(b)
    return out
