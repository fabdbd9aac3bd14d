"""A VM's state as a pure function of the messages applied to it (CONTRACT §5.3).

``apply_vm`` takes one message and returns the next state; ``fold`` applies a sorted
history. Nothing here does I/O: what the rules need from the database (the VM's ``action``,
which networks exist and which are public) comes in a ``VmContext``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

from dispatcher.core.messages import (
    CreateProgress,
    ImageCopyProgress,
    ImageDiagnostic,
    NetStatus,
    Nic,
    OpStatus,
    VmMessage,
)
from dispatcher.core.names import network_id_from_name

OPER_STATE_FROM_OPCODE: Final[Mapping[str, str]] = {
    "OP_INSTANCE_CREATE": "STARTED",
    "OP_INSTANCE_STARTUP": "STARTED",
    "OP_INSTANCE_REBOOT": "STARTED",
    "OP_INSTANCE_SHUTDOWN": "STOPPED",
    "OP_INSTANCE_REMOVE": "DESTROYED",
}
# the value in Ganeti's ``synnefo:network:<index>:<value>`` tag -> our profile
FIREWALL_FROM_TAG: Final[Mapping[str, str]] = {
    "protected": "ENABLED",
    "unprotected": "DISABLED",
    "limited": "PROTECTED",
}
TAG_FROM_FIREWALL: Final[Mapping[str, str]] = {v: k for k, v in FIREWALL_FROM_TAG.items()}
PUBLIC_DEFAULT_FIREWALL: Final = "DISABLED"


@dataclass(frozen=True, slots=True)
class NicState:
    index: int
    network_id: int
    mac: str = ""
    ipv4: str = ""
    ipv6: str = ""
    firewall_profile: str = ""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    digest: bytes
    level: str
    source: str
    source_time_us: int
    message: str
    details: str | None = None


@dataclass(frozen=True, slots=True)
class VmState:
    operstate: str = "BUILD"
    deleted: bool = False
    backendjobid: int | None = None
    backendopcode: str | None = None
    backendjobstatus: str | None = None
    backendlogmsg: str | None = None
    buildpercentage: int = 0
    backendtime_us: int | None = None
    nics: tuple[NicState, ...] = ()


@dataclass(frozen=True, slots=True)
class VmContext:
    prefix: str
    action: str | None = None
    # network id -> public, for every network row that exists
    networks: Mapping[int, bool] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Step:
    state: VmState
    applied: bool
    diagnostics: tuple[Diagnostic, ...] = ()


def _diag(
    msg: VmMessage, level: str, source: str, text: str, details: str | None = None
) -> Diagnostic:
    digest = hashlib.sha256(msg.digest() + source.encode() + text.encode()).digest()[:16]
    return Diagnostic(digest, level, source, msg.event_time_us, text, details)


def build_nics(nics: Iterable[Nic], ctx: VmContext) -> tuple[NicState, ...] | str:
    """The VM's NIC set from a message's list, or why the list cannot be applied."""
    out = []
    for index, nic in enumerate(nics):
        net_id = network_id_from_name(ctx.prefix, nic.network)
        if net_id is None or net_id not in ctx.networks:
            return f"NIC {index} names unknown network {nic.network!r}; NIC list not applied"
        profile = FIREWALL_FROM_TAG.get(nic.firewall or "", "")
        if not profile and ctx.networks[net_id]:
            profile = PUBLIC_DEFAULT_FIREWALL
        out.append(NicState(index, net_id, nic.mac or "", nic.ip or "", nic.ipv6 or "", profile))
    return tuple(out)


def _apply_op(state: VmState, msg: OpStatus, ctx: VmContext) -> Step:
    st = replace(
        state,
        backendjobid=msg.jobId,
        backendopcode=msg.operation,
        backendjobstatus=msg.status,
        backendlogmsg=msg.logmsg,
        backendtime_us=msg.event_time_us,
    )
    if msg.status == "success" and msg.operation in OPER_STATE_FROM_OPCODE:
        st = replace(st, operstate=OPER_STATE_FROM_OPCODE[msg.operation])
    if msg.operation == "OP_INSTANCE_CREATE" and msg.status in ("error", "canceled"):
        st = replace(st, operstate="ERROR")
    if msg.operation == "OP_INSTANCE_REMOVE" and (
        msg.status == "success"
        or (msg.status == "error" and (st.operstate == "ERROR" or ctx.action == "DESTROY"))
    ):
        return Step(replace(st, deleted=True, operstate="DESTROYED", nics=()), True)
    nic_list = msg.nic_list
    if nic_list is None:
        return Step(st, True)
    nics = build_nics(nic_list, ctx)
    if isinstance(nics, str):
        return Step(st, True, (_diag(msg, "ERROR", "dispatcher", nics),))
    return Step(replace(st, nics=nics), True)


def _apply_net(state: VmState, msg: NetStatus, ctx: VmContext) -> Step:
    nics = build_nics(msg.nics, ctx)
    if isinstance(nics, str):
        return Step(state, False, (_diag(msg, "ERROR", "dispatcher", nics),))
    return Step(replace(state, nics=nics, backendtime_us=msg.event_time_us), True)


def _apply_progress(state: VmState, msg: CreateProgress | ImageCopyProgress) -> Step:
    value = msg.rprogress if isinstance(msg, CreateProgress) else msg.progress
    if value < 0:
        text = f"negative build progress {value} not applied"
        return Step(state, False, (_diag(msg, "WARNING", msg.type, text),))
    pct = min(int(value), 100)
    return Step(replace(state, buildpercentage=pct, backendtime_us=msg.event_time_us), True)


# reference §e.3: image-info stays at the default DEBUG level
_LEVEL_BY_TYPE: Final = {"image-error": "ERROR", "image-warning": "WARNING"}
_HELPER_LEVELS: Final = {"warning": "WARNING", "error": "ERROR", "info": "INFO"}


def _apply_image_diag(state: VmState, msg: ImageDiagnostic) -> Step:
    level = _LEVEL_BY_TYPE.get(msg.type, "DEBUG")
    source: str = msg.type
    messages = msg.messages
    text = " ".join(messages) if isinstance(messages, list) else (messages or "")
    if msg.type == "image-helper":
        sub = msg.subtype or ""
        if sub in _HELPER_LEVELS:
            level = _HELPER_LEVELS[sub]
        elif sub in ("task-start", "task-end"):
            source = f"image-helper-{sub}"
            text = msg.task or text
    if not text:
        text = source.replace("-", " ").capitalize()
    diag = _diag(msg, level, source, text, msg.stderr)
    return Step(replace(state, backendtime_us=msg.event_time_us), True, (diag,))


def apply_vm(state: VmState, msg: VmMessage, ctx: VmContext) -> Step:
    """The state after ``msg``, given the state after every earlier message."""
    if state.deleted:
        return Step(state, False)
    if isinstance(msg, OpStatus):
        return _apply_op(state, msg, ctx)
    if isinstance(msg, NetStatus):
        return _apply_net(state, msg, ctx)
    if isinstance(msg, CreateProgress | ImageCopyProgress):
        return _apply_progress(state, msg)
    return _apply_image_diag(state, msg)


@dataclass(slots=True)
class Folded:
    state: VmState
    diagnostics: list[Diagnostic]
    applied: list[bool]


def fold(initial: VmState, history: Iterable[VmMessage], ctx: VmContext) -> Folded:
    """Apply ``history`` (already in CONTRACT §5.2 order) to ``initial``."""
    state = initial
    diags: list[Diagnostic] = []
    applied: list[bool] = []
    for msg in history:
        step = apply_vm(state, msg, ctx)
        state = step.state
        diags.extend(step.diagnostics)
        applied.append(step.applied)
    return Folded(state, diags, applied)
