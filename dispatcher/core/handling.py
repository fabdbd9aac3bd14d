"""The pipeline's shared vocabulary: a validated message on its way into the database
(``Incoming``), what became of a message (``Outcome``, ``Result``), and every
``x-dispatcher-*`` header the daemon writes on the messages it re-publishes (CONTRACT §5.4).

Pure data: the consumer, the processor, the store and the dead-letter tooling all import it,
and it imports only the core."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from dispatcher.core.messages import Message
from dispatcher.core.ordering import sort_key


class Outcome(StrEnum):
    """What became of one message. The store answers the first three; the processor adds
    the last two for messages that never reached it or failed in it."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"
    DEAD_LETTER = "dead_lettered"
    RETRY = "retried"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Incoming:
    msg: Message
    digest: bytes
    key: bytes

    @classmethod
    def of(cls, msg: Message) -> Incoming:
        digest = msg.digest()
        return cls(msg, digest, sort_key(msg, digest))


# on a retried message: how many attempts failed so far
RETRIES_HEADER: Final = "x-dispatcher-retries"
# on a dead letter (and a retried message): why it failed, one line
ERROR_HEADER: Final = "x-dispatcher-error"
# on a dead letter: the queue it was taken from, and when it failed
QUEUE_HEADER: Final = "x-dispatcher-queue"
FAILED_AT_HEADER: Final = "x-dispatcher-failed-at"
# where the producer published it, so that ``queue retry`` can publish it there again
ORIG_EXCHANGE_HEADER: Final = "x-dispatcher-original-exchange"
ORIG_KEY_HEADER: Final = "x-dispatcher-original-routing-key"
# on a letter ``queue retry`` sent back: how many times it was retried from a dead-letter queue
DL_RETRIES_HEADER: Final = "x-dispatcher-dl-retries"
