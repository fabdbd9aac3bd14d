"""eventd's heartbeat: an addition to CONTRACT §3 and §4, kept apart from its four message types.

eventd publishes ``{"type": "ganeti-eventd-heartbeat", "cluster": C, "node": N,
"event_time": [s, us], "interval": I}`` every I seconds to exchange ``ganeti`` with routing
key :data:`ROUTING_KEY`. The key names no deployment prefix (eventd serves every deployment
on its cluster), so each daemon binds its own queue ``P-heartbeat`` to it and records the
newest heartbeat of every cluster it has a backend for. The four event queues never see the
type; sent to one of them, it is dead-lettered as unknown like any other.

How long a cluster has been *silent* is the time since the newer of its last heartbeat and
its last applied event (:func:`silence`): a busy eventd is alive even if a heartbeat was lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal

from pydantic import Field, StrictInt, StrictStr, ValidationError

from dispatcher.core.messages import EventTime, InvalidMessage, WireModel

TYPE: Final = "ganeti-eventd-heartbeat"
ROUTING_KEY: Final = "ganeti.eventd.heartbeat"
# heartbeats are only worth their newest: a daemon that was away finds a short queue
QUEUE_MAX_LENGTH: Final = 1000
QUEUE_MESSAGE_TTL_MS: Final = 10 * 60 * 1000


def queue_name(prefix: str) -> str:
    return f"{prefix}-heartbeat"


class Heartbeat(WireModel):
    type: Literal["ganeti-eventd-heartbeat"]
    cluster: StrictStr
    node: StrictStr | None = None
    event_time: EventTime
    interval: StrictInt | None = Field(default=None, ge=0)

    @property
    def event_time_s(self) -> float:
        return self.event_time[0] + self.event_time[1] / 1e6


def parse_heartbeat(body: bytes) -> Heartbeat:
    try:
        return Heartbeat.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or "(body)"
        raise InvalidMessage(f"invalid heartbeat: {where}: {err['msg']}") from None


def heartbeat_body(cluster: str, node: str | None, now_us: int, interval: int) -> bytes:
    return (
        Heartbeat(
            type=TYPE,
            cluster=cluster,
            node=node,
            event_time=[now_us // 1_000_000, now_us % 1_000_000],
            interval=interval,
        )
        .model_dump_json(exclude_none=True)
        .encode()
    )


def silence(
    now: datetime, last_heartbeat: datetime | None, last_event: datetime | None, since: datetime
) -> float:
    """Seconds since the cluster's eventd was last heard of; ``since`` (the backend's creation)
    stands in when it never was."""
    heard = max((t for t in (last_heartbeat, last_event) if t is not None), default=since)
    return max(0.0, (now - heard).total_seconds())
