"""A network's state on one backend as a pure function of its ``ganeti-network-status``
messages, and the network's own state from those of its backends (CONTRACT §5.3)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final

from dispatcher.core.messages import NetworkStatus

BN_STATE_FROM_OPCODE: Final[Mapping[str, str]] = {
    "OP_NETWORK_ADD": "PENDING",
    "OP_NETWORK_CONNECT": "ACTIVE",
    "OP_NETWORK_DISCONNECT": "PENDING",
    "OP_NETWORK_REMOVE": "DELETED",
}


@dataclass(frozen=True, slots=True)
class BnState:
    operstate: str = "PENDING"
    deleted: bool = False
    backendjobid: int | None = None
    backendopcode: str | None = None
    backendjobstatus: str | None = None
    backendlogmsg: str | None = None
    backendtime_us: int | None = None


def apply_network(
    state: BnState, msg: NetworkStatus, network_action: str | None
) -> tuple[BnState, bool]:
    """The backend network's state after ``msg``, and whether ``msg`` was applied.

    Unlike a removed VM, a deleted backend network still takes later messages (§5.3 makes no
    exception for it): a network made again under the same name, by ``reconcile --fix`` or
    by hand, is in the cluster again, and a later ADD/CONNECT success says so."""
    st = replace(
        state,
        backendjobid=msg.jobId,
        backendopcode=msg.operation,
        backendjobstatus=msg.status,
        backendlogmsg=msg.logmsg,
        backendtime_us=msg.event_time_us,
    )
    if msg.status == "success" and msg.operation in BN_STATE_FROM_OPCODE:
        st = replace(st, operstate=BN_STATE_FROM_OPCODE[msg.operation])
    if msg.operation == "OP_NETWORK_ADD" and msg.status in ("error", "canceled"):
        st = replace(st, operstate="ERROR")
    if (
        msg.operation == "OP_NETWORK_REMOVE"
        and msg.status == "error"
        and (state.operstate == "ERROR" or network_action == "DESTROY")
    ):
        st = replace(st, operstate="DELETED")
    return replace(st, deleted=st.operstate == "DELETED"), True


def fold_network(
    initial: BnState, history: Iterable[NetworkStatus], network_action: str | None
) -> tuple[BnState, list[bool]]:
    state, applied = initial, []
    for msg in history:
        state, ok = apply_network(state, msg, network_action)
        applied.append(ok)
    return state, applied


def network_state(backend_states: Iterable[str]) -> tuple[str, bool]:
    """(state, deleted) of a network from its backend networks on online backends."""
    states = list(backend_states)
    if not states:
        return "PENDING", False
    first = states[0]
    if all(s == first for s in states):
        return first, first == "DELETED"
    return "PENDING", False
