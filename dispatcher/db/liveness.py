"""Per backend: the newest heartbeat of its eventd, and how long each cluster has been silent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dispatcher.core.heartbeat import Heartbeat, silence
from dispatcher.db.models import Backend


async def record_heartbeat(engine: AsyncEngine, hb: Heartbeat) -> bool:
    """Keep the newest heartbeat of ``hb.cluster``; False if no backend has that name.

    The heartbeat's own time is kept (a heartbeat that waited in a broker outage must not
    look fresh), but never later than now (a master whose clock runs ahead)."""
    sent = datetime.fromtimestamp(hb.event_time_s, UTC)
    at = func.least(sent, func.now())
    async with engine.begin() as conn:
        known = await conn.scalar(select(Backend.id).where(Backend.clustername == hb.cluster))
        if known is None:
            return False
        await conn.execute(
            update(Backend)
            .where(
                Backend.clustername == hb.cluster,
                (Backend.last_heartbeat.is_(None)) | (Backend.last_heartbeat < at),
            )
            # a raw column write: the backend row's ``updated`` is about its configuration
            .values(last_heartbeat=at, updated=Backend.updated)
        )
    return True


@dataclass(frozen=True, slots=True)
class Liveness:
    backend_id: int
    clustername: str
    offline: bool
    last_heartbeat: datetime | None
    last_event: datetime | None
    silent_s: float


async def liveness(s: AsyncSession) -> list[Liveness]:
    now = await s.scalar(select(func.now()))
    assert now is not None
    return [
        Liveness(
            b.id,
            b.clustername,
            b.offline,
            b.last_heartbeat,
            b.last_event,
            silence(now, b.last_heartbeat, b.last_event, b.created),
        )
        for b in await s.scalars(select(Backend).order_by(Backend.id))
    ]
