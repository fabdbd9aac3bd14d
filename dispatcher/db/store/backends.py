"""When each cluster last had an event applied (``backends.last_event``)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from dispatcher.core.handling import Incoming, Outcome, Result
from dispatcher.core.messages import NetworkStatus
from dispatcher.core.names import vm_id_from_instance

_TOUCH_BACKENDS = """
UPDATE backends SET last_event = now()
WHERE (id IN (SELECT backend_id FROM virtual_machines WHERE id = ANY($1::int[]))
       OR clustername = ANY($2::text[]))
  AND (last_event IS NULL OR last_event < now())
"""


async def touch_backends(
    pg: asyncpg.Connection, prefix: str, items: Sequence[Incoming], results: list[Result | None]
) -> None:
    """Note when each cluster last had an event applied. Runs last in the transaction, after
    every VM and network row is locked, so the lock order stays VMs, networks, backends."""
    vm_ids: set[int] = set()
    clusters: set[str] = set()
    for inc, res in zip(items, results, strict=True):
        if res is None or res.outcome is not Outcome.APPLIED:
            continue
        if isinstance(inc.msg, NetworkStatus):
            clusters.add(inc.msg.cluster)
        elif (vm_id := vm_id_from_instance(prefix, inc.msg.instance)) is not None:
            vm_ids.add(vm_id)
    if vm_ids or clusters:
        await pg.execute(_TOUCH_BACKENDS, sorted(vm_ids), sorted(clusters))
