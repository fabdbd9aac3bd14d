"""The nine message types of CONTRACT §4, written once: the stream (queue, §3) each arrives
on and its rank among messages of equal time in the total order of §5.2. The topology, the
parser and the order key are all derived from this table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Kind:
    type: str
    stream: str
    # among equal event times: NIC reports first, then progress, then image diagnostics,
    # then the job status messages (their own job id and status order them further)
    rank: int


KINDS: Final = (
    Kind("ganeti-op-status", "op", 3),
    Kind("ganeti-net-status", "net", 0),
    Kind("ganeti-network-status", "network", 3),
    Kind("ganeti-create-progress", "progress", 1),
    Kind("image-copy-progress", "progress", 1),
    Kind("image-info", "progress", 2),
    Kind("image-warning", "progress", 2),
    Kind("image-error", "progress", 2),
    Kind("image-helper", "progress", 2),
)

TYPES: Final = tuple(k.type for k in KINDS)
RANK: Final = {k.type: k.rank for k in KINDS}
# stream -> the types accepted on its queue, in the order of the queues' declaration
STREAMS: Final[dict[str, frozenset[str]]] = {
    s: frozenset(k.type for k in KINDS if k.stream == s)
    for s in dict.fromkeys(k.stream for k in KINDS)
}
# a small integer per type, stored in the history rows: the position in the sorted names,
# so it never changes while no type is added before another in alphabetical order
CODE: Final = {name: i for i, name in enumerate(sorted(TYPES))}
