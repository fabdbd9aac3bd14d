"""The total order of CONTRACT §5.2 as one comparable byte string per message.

``event_time`` first, then ``jobId``, then status (queued < … < success); messages of equal
time without a job (NIC reports, progress) come first, by kind, and the content digest
breaks any remaining tie so that two distinct messages never compare equal. Bytes compare
the same way in Python and in PostgreSQL (``bytea``), so the database can keep histories
sorted and a row can remember the key of the newest event folded into it.
"""

from __future__ import annotations

import struct
from typing import Final

from dispatcher.core.kinds import RANK
from dispatcher.core.messages import STATUS_RANK, Message, NetworkStatus, OpStatus

_KEY: Final = struct.Struct(">QQBB")


def sort_key(msg: Message, digest: bytes) -> bytes:
    if isinstance(msg, OpStatus | NetworkStatus):
        job, status = msg.jobId + 1, STATUS_RANK[msg.status]
    else:
        job, status = 0, 0
    return _KEY.pack(msg.event_time_us, job, status, RANK[msg.type]) + digest
