"""What the clusters hold: instances, nodes and jobs of every online backend, fetched
concurrently. One backend failing does not hide the others: each result carries either its
value or its error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.actions.clients import ClientPool, call
from dispatcher.actions.errors import ActionError
from dispatcher.db.models import Backend
from dispatcher.rapi import RapiClient

T = TypeVar("T")
JSONDict = dict[str, Any]


@dataclass(slots=True)
class Fetched(Generic[T]):
    backend: Backend
    value: T | None = None
    error: ActionError | None = None


async def backends_to_query(
    s: AsyncSession, backend_ids: Sequence[int] | None = None
) -> list[Backend]:
    """The online backends (all of them, or those among ``backend_ids``)."""
    q = select(Backend).where(Backend.offline.is_(False)).order_by(Backend.id)
    if backend_ids is not None:
        q = q.where(Backend.id.in_(list(backend_ids)))
    return list(await s.scalars(q))


async def over_backends(
    clients: ClientPool,
    backends: Sequence[Backend],
    doing: str,
    fetch: Callable[[RapiClient], Awaitable[T]],
) -> list[Fetched[T]]:
    async def one(backend: Backend) -> Fetched[T]:
        try:
            return Fetched(backend, await call(backend, doing, fetch(clients.get(backend))))
        except ActionError as exc:
            return Fetched(backend, error=exc)

    return list(await asyncio.gather(*(one(b) for b in backends)))


async def get_ganeti_instances(
    clients: ClientPool, backends: Sequence[Backend]
) -> list[Fetched[list[JSONDict]]]:
    return await over_backends(
        clients, backends, "listing instances", lambda c: c.get_instances(bulk=True)
    )


async def get_ganeti_nodes(
    clients: ClientPool, backends: Sequence[Backend]
) -> list[Fetched[list[JSONDict]]]:
    return await over_backends(clients, backends, "listing nodes", lambda c: c.get_nodes(bulk=True))


async def get_ganeti_jobs(
    clients: ClientPool, backends: Sequence[Backend]
) -> list[Fetched[list[JSONDict]]]:
    return await over_backends(clients, backends, "listing jobs", lambda c: c.get_jobs(bulk=True))


async def get_ganeti_networks(
    clients: ClientPool, backends: Sequence[Backend]
) -> list[Fetched[list[JSONDict]]]:
    return await over_backends(
        clients, backends, "listing networks", lambda c: c.get_networks(bulk=True)
    )
