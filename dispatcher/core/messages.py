"""Wire models of the inbound messages (CONTRACT §4) and ``parse``: bytes in, a typed
message or an ``InvalidMessage`` with a one-line reason out. No I/O.

Strict on what the contract requires (a number sent as a string is the wrong type, ``bool``
is not an ``int``), tolerant of extra fields (they are dropped, so they never reach the
history or its deduplication digest).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic_core import from_json

from dispatcher.core.kinds import TYPES
from dispatcher.oneline import one_line

MAX_BODY: Final = 1024 * 1024

Status = Literal["queued", "waiting", "canceling", "running", "canceled", "success", "error"]
STATUSES: Final = ("queued", "waiting", "canceling", "running", "canceled", "error", "success")
# the tie-break order of CONTRACT §5.2
STATUS_RANK: Final = {s: i for i, s in enumerate(STATUSES)}
FINALIZED: Final = frozenset({"canceled", "success", "error"})

_INT64_MAX: Final = 2**63 - 1
_NUL: Final = b"\\u0000"


def _event_time(v: list[int]) -> list[int]:
    if len(v) != 2:
        raise ValueError("event_time must be [seconds, microseconds]")
    sec, usec = v
    if sec < 0 or not 0 <= usec <= 999_999 or sec > 10**11:
        raise ValueError("event_time out of range")
    return v


def _job_id(v: int) -> int:
    if not 0 <= v <= _INT64_MAX:
        raise ValueError("jobId out of range")
    return v


EventTime = Annotated[list[StrictInt], AfterValidator(_event_time)]
JobId = Annotated[StrictInt, AfterValidator(_job_id)]
Number = Annotated[StrictInt | StrictFloat, Field(allow_inf_nan=False)]
# unbounded: a name of any length is a valid string that is simply not ours (§5.4)
Name = StrictStr


class WireModel(BaseModel):
    """What every wire model shares: unknown fields ignored, strict types, immutable."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class Nic(WireModel):
    network: Name
    mac: StrictStr | None = None
    ip: StrictStr | None = None
    ipv6: StrictStr | None = None
    firewall: StrictStr | None = None
    link: StrictStr | None = None
    mode: StrictStr | None = None
    name: StrictStr | None = None


class _Event(WireModel):
    event_time: EventTime

    @property
    def event_time_us(self) -> int:
        return self.event_time[0] * 1_000_000 + self.event_time[1]

    def digest(self) -> bytes:
        """Identity of the message's content: two deliveries of one event share it."""
        return hashlib.sha256(self.model_dump_json().encode()).digest()[:16]


class OpStatus(_Event):
    type: Literal["ganeti-op-status"]
    instance: Name
    operation: StrictStr
    jobId: JobId
    status: Status
    logmsg: StrictStr | None
    cluster: StrictStr | None = None
    nics: list[Nic] | None = None
    instance_nics: list[Nic] | None = None

    @property
    def nic_list(self) -> list[Nic] | None:
        return self.nics if self.nics is not None else self.instance_nics


class NetStatus(_Event):
    type: Literal["ganeti-net-status"]
    instance: Name
    nics: list[Nic]


class CreateProgress(_Event):
    type: Literal["ganeti-create-progress"]
    instance: Name
    rprogress: Number


class ImageCopyProgress(_Event):
    type: Literal["image-copy-progress"]
    instance: Name
    progress: Number


class ImageDiagnostic(_Event):
    type: Literal["image-info", "image-warning", "image-error", "image-helper"]
    instance: Name
    messages: list[StrictStr] | StrictStr | None = None
    stderr: StrictStr | None = None
    subtype: StrictStr | None = None
    task: StrictStr | None = None


class NetworkStatus(_Event):
    type: Literal["ganeti-network-status"]
    network: Name
    operation: StrictStr
    jobId: JobId
    status: Status
    logmsg: StrictStr | None
    cluster: Name
    subnet: StrictStr | None = None
    gateway: StrictStr | None = None
    group_name: StrictStr | None = None
    add_reserved_ips: list[StrictStr] | None = None
    remove_reserved_ips: list[StrictStr] | None = None


VmMessage = OpStatus | NetStatus | CreateProgress | ImageCopyProgress | ImageDiagnostic
Message = VmMessage | NetworkStatus

_ADAPTER: Final[TypeAdapter[Message]] = TypeAdapter(Annotated[Message, Field(discriminator="type")])


def load_stored(body: str | dict[str, Any]) -> Message:
    """A message this code validated and stored itself (a history row), read back.

    The history queries read jsonb as text (``body::text``): one pass of the Rust JSON
    validator instead of json.loads (SQLAlchemy's jsonb codec) plus validate_python."""
    if isinstance(body, str):
        return _ADAPTER.validate_json(body)
    return _ADAPTER.validate_python(body)


class InvalidMessage(ValueError):
    """A message that can never be applied: it goes to the dead-letter queue."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse(body: bytes) -> Message:
    """Validate one message body, raising ``InvalidMessage`` with a one-line reason."""
    if len(body) > MAX_BODY:
        raise InvalidMessage(f"body of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")
    try:
        msg = _ADAPTER.validate_json(body)
        if _NUL in body:
            # valid, but PostgreSQL text and jsonb cannot hold U+0000: keep the message,
            # with U+FFFD (the replacement character) in its place
            msg = _ADAPTER.validate_json(_without_nul(body))
    except ValidationError as exc:
        raise InvalidMessage(_explain(body, exc)) from None
    except RecursionError:
        raise InvalidMessage("JSON nested too deeply") from None
    return msg


def _without_nul(body: bytes) -> bytes:
    # on the decoded document, not the bytes: an escaped backslash followed by the text
    # "u0000" is no NUL and stays as it is
    def clean(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("\x00", "\ufffd")
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {clean(k): clean(x) for k, x in v.items()}
        return v

    return json.dumps(clean(json.loads(body))).encode()


def _explain(body: bytes, exc: ValidationError) -> str:
    try:
        doc = from_json(body)
    except ValueError as bad:
        return f"not JSON: {one_line(str(bad))}"
    if not isinstance(doc, dict):
        return f"not a JSON object but {type(doc).__name__}"
    kind = doc.get("type")
    if kind not in TYPES:
        return f"unknown type {one_line(repr(kind))}"
    parts = []
    for err in exc.errors(include_url=False)[:3]:
        loc = ".".join(str(p) for p in err["loc"][1:]) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    return one_line(f"invalid {kind}: " + "; ".join(parts), 500)
