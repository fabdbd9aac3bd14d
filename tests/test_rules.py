"""CONTRACT §5.3 (state rules) and §5.4 (what is not applied) at the pure-logic level, plus the
names of §1 and the tie-breaking order of §5.2. Table-driven: each row is a given state or
context, a message (always built from its wire form through ``parse``), and what must follow.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from typing import Any

import pytest

from dispatcher.core.messages import (
    InvalidMessage,
    Message,
    NetStatus,
    NetworkStatus,
    VmMessage,
    parse,
)
from dispatcher.core.names import (
    instance_name,
    network_id_from_name,
    network_name,
    vm_id_from_instance,
)
from dispatcher.core.network_state import BnState, apply_network, network_state
from dispatcher.core.ordering import sort_key
from dispatcher.core.vm_state import NicState, Step, VmContext, VmState, apply_vm, build_nics

P = "snf"
VM = 42
INST = f"{P}-{VM}"
PUB, PRIV, OTHER_PRIV = 1, 2, 7
NETWORKS = {PUB: True, PRIV: False, OTHER_PRIV: False}
CTX = VmContext(P, "CREATE", NETWORKS)
T = [1_795_000_000, 250_000]
T_US = T[0] * 1_000_000 + T[1]
STATUSES = ("queued", "waiting", "canceling", "running", "canceled", "success", "error")
VM_OPCODES = (
    "OP_INSTANCE_CREATE",
    "OP_INSTANCE_STARTUP",
    "OP_INSTANCE_REBOOT",
    "OP_INSTANCE_SHUTDOWN",
    "OP_INSTANCE_REMOVE",
    "OP_INSTANCE_SET_PARAMS",
    "OP_INSTANCE_QUERY_DATA",
    "OP_FOO",
)

# --------------------------------------------------------------------------- builders


def wire(body: dict[str, Any]) -> Message:
    return parse(json.dumps(body).encode())


def vm_msg(body: dict[str, Any]) -> VmMessage:
    msg = wire(body)
    assert not isinstance(msg, NetworkStatus)
    return msg


def op_body(
    operation: str,
    status: str,
    *,
    job: int = 100,
    logmsg: str | None = None,
    t: list[int] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": "ganeti-op-status",
        "instance": INST,
        "operation": operation,
        "jobId": job,
        "status": status,
        "logmsg": logmsg,
        "event_time": t or T,
        **extra,
    }


def op(operation: str, status: str, **kw: Any) -> VmMessage:
    return vm_msg(op_body(operation, status, **kw))


def net_body(nics: list[dict[str, Any]], t: list[int] | None = None) -> dict[str, Any]:
    return {"type": "ganeti-net-status", "instance": INST, "nics": nics, "event_time": t or T}


def net(nics: list[dict[str, Any]], t: list[int] | None = None) -> VmMessage:
    return vm_msg(net_body(nics, t))


def progress(value: float, kind: str = "ganeti-create-progress", **extra: Any) -> VmMessage:
    field = "rprogress" if kind == "ganeti-create-progress" else "progress"
    return vm_msg({"type": kind, "instance": INST, field: value, "event_time": T, **extra})


def image(kind: str, **extra: Any) -> VmMessage:
    return vm_msg({"type": kind, "instance": INST, "event_time": T, **extra})


def network_body(
    operation: str, status: str, *, job: int = 500, logmsg: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "ganeti-network-status",
        "network": f"{P}-net-{PRIV}",
        "operation": operation,
        "jobId": job,
        "status": status,
        "logmsg": logmsg,
        "event_time": T,
        "cluster": "ganeti1.example.org",
        **extra,
    }


def network_msg(operation: str, status: str, **kw: Any) -> NetworkStatus:
    msg = wire(network_body(operation, status, **kw))
    assert isinstance(msg, NetworkStatus)
    return msg


def nic(net_id: int, **extra: Any) -> dict[str, Any]:
    return {"network": f"{P}-net-{net_id}", **extra}


NIC_PUB = NicState(0, PUB, "aa:00:00:00:00:01", "192.0.2.10", "", "DISABLED")
NIC_PRIV = NicState(1, PRIV, "aa:00:00:00:00:02", "", "", "")
FRESH = VmState()
BUILDING = VmState(operstate="BUILD", backendjobid=9, backendopcode="OP_INSTANCE_CREATE",
                   backendjobstatus="running", buildpercentage=30)  # fmt: skip
STARTED = VmState(
    operstate="STARTED",
    backendjobid=10,
    backendopcode="OP_INSTANCE_STARTUP",
    backendjobstatus="success",
    backendlogmsg="old",
    buildpercentage=100,
    backendtime_us=T_US - 1_000_000,
    nics=(NIC_PUB, NIC_PRIV),
)
STOPPED = replace(STARTED, operstate="STOPPED", backendopcode="OP_INSTANCE_SHUTDOWN")
ERRORED = replace(BUILDING, operstate="ERROR", backendjobstatus="error")
REMOVED = replace(STARTED, operstate="DESTROYED", deleted=True, nics=())


def step(state: VmState, msg: VmMessage, ctx: VmContext = CTX) -> Step:
    return apply_vm(state, msg, ctx)


# --------------------------------------------------------------------------- job fields


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("operation", VM_OPCODES)
@pytest.mark.parametrize("given", [FRESH, STARTED, ERRORED], ids=["fresh", "started", "error"])
def test_job_fields_follow_every_op_status(given: VmState, operation: str, status: str) -> None:
    msg = op(operation, status, job=777, logmsg=f"{operation} is {status}")
    out = step(given, msg)
    assert out.applied
    assert out.state.backendjobid == 777
    assert out.state.backendopcode == operation
    assert out.state.backendjobstatus == status
    assert out.state.backendlogmsg == f"{operation} is {status}"
    assert out.state.backendtime_us == T_US


def test_null_logmsg_replaces_an_earlier_one() -> None:
    out = step(STARTED, op("OP_INSTANCE_REBOOT", "queued", logmsg=None))
    assert out.state.backendlogmsg is None
    assert out.state.backendjobstatus == "queued"


# --------------------------------------------------------------------------- operstate

SUCCESS_OPERSTATE = [
    # (given operstate, opcode, expected operstate)
    ("BUILD", "OP_INSTANCE_CREATE", "STARTED"),
    ("STOPPED", "OP_INSTANCE_STARTUP", "STARTED"),
    ("STARTED", "OP_INSTANCE_STARTUP", "STARTED"),
    ("STOPPED", "OP_INSTANCE_REBOOT", "STARTED"),
    ("STARTED", "OP_INSTANCE_REBOOT", "STARTED"),
    ("STARTED", "OP_INSTANCE_SHUTDOWN", "STOPPED"),
    ("ERROR", "OP_INSTANCE_SHUTDOWN", "STOPPED"),
    ("STARTED", "OP_INSTANCE_REMOVE", "DESTROYED"),
    ("STOPPED", "OP_INSTANCE_REMOVE", "DESTROYED"),
    ("BUILD", "OP_INSTANCE_REMOVE", "DESTROYED"),
    # any other opcode leaves it
    ("STARTED", "OP_INSTANCE_SET_PARAMS", "STARTED"),
    ("STOPPED", "OP_INSTANCE_SET_PARAMS", "STOPPED"),
    ("STARTED", "OP_INSTANCE_QUERY_DATA", "STARTED"),
    ("STOPPED", "OP_INSTANCE_QUERY_DATA", "STOPPED"),
    ("BUILD", "OP_INSTANCE_QUERY_DATA", "BUILD"),
    ("STARTED", "OP_FOO", "STARTED"),
    ("STOPPED", "OP_FOO", "STOPPED"),
    ("ERROR", "OP_FOO", "ERROR"),
    ("STOPPED", "OP_INSTANCE_MIGRATE", "STOPPED"),
]


@pytest.mark.parametrize(("given", "operation", "expected"), SUCCESS_OPERSTATE)
def test_success_sets_operstate_by_opcode(given: str, operation: str, expected: str) -> None:
    out = step(replace(STARTED, operstate=given), op(operation, "success"))
    assert out.state.operstate == expected


NOT_SUCCESS = [s for s in STATUSES if s != "success"]


@pytest.mark.parametrize("status", NOT_SUCCESS)
@pytest.mark.parametrize(
    "operation",
    [
        "OP_INSTANCE_STARTUP",
        "OP_INSTANCE_REBOOT",
        "OP_INSTANCE_SHUTDOWN",
        "OP_INSTANCE_SET_PARAMS",
        "OP_INSTANCE_QUERY_DATA",
        "OP_FOO",
    ],
)
@pytest.mark.parametrize("given", ["STARTED", "STOPPED", "BUILD"])
def test_other_statuses_leave_operstate(given: str, operation: str, status: str) -> None:
    out = step(replace(STARTED, operstate=given), op(operation, status))
    assert out.state.operstate == given
    assert not out.state.deleted


CREATE_STATUS = [
    # (given operstate, status, expected operstate)
    ("BUILD", "error", "ERROR"),
    ("BUILD", "canceled", "ERROR"),
    ("STARTED", "error", "ERROR"),
    ("BUILD", "queued", "BUILD"),
    ("BUILD", "waiting", "BUILD"),
    ("BUILD", "running", "BUILD"),
    ("BUILD", "canceling", "BUILD"),
    ("BUILD", "success", "STARTED"),
]


@pytest.mark.parametrize(("given", "status", "expected"), CREATE_STATUS)
def test_create_error_or_canceled_sets_error(given: str, status: str, expected: str) -> None:
    out = step(replace(BUILDING, operstate=given), op("OP_INSTANCE_CREATE", status))
    assert out.state.operstate == expected
    assert not out.state.deleted


# --------------------------------------------------------------------------- removal

REMOVAL = [
    # (given operstate, VM action, REMOVE status, removed?)
    ("STARTED", None, "success", True),
    ("STOPPED", "STOP", "success", True),
    ("BUILD", "CREATE", "success", True),
    ("ERROR", "CREATE", "success", True),
    ("STARTED", "DESTROY", "success", True),
    ("ERROR", None, "error", True),
    ("ERROR", "CREATE", "error", True),
    ("STARTED", "DESTROY", "error", True),
    ("STOPPED", "DESTROY", "error", True),
    ("BUILD", "DESTROY", "error", True),
    ("STARTED", None, "error", False),
    ("STARTED", "START", "error", False),
    ("STOPPED", "STOP", "error", False),
    ("BUILD", "CREATE", "error", False),
    ("ERROR", "DESTROY", "canceled", False),
    ("ERROR", "DESTROY", "queued", False),
    ("ERROR", "DESTROY", "running", False),
    ("STARTED", "DESTROY", "canceling", False),
    ("STARTED", "DESTROY", "waiting", False),
]


@pytest.mark.parametrize(("given", "action", "status", "removed"), REMOVAL)
def test_removal(given: str, action: str | None, status: str, removed: bool) -> None:
    state = replace(STARTED, operstate=given)
    out = step(state, op("OP_INSTANCE_REMOVE", status, job=55), replace(CTX, action=action))
    assert out.applied
    assert out.state.backendjobid == 55
    assert out.state.backendjobstatus == status
    if removed:
        assert out.state.deleted
        assert out.state.operstate == "DESTROYED"
        assert out.state.nics == ()
    else:
        assert not out.state.deleted
        assert out.state.operstate == given
        assert out.state.nics == state.nics


@pytest.mark.parametrize("field", ["nics", "instance_nics"])
def test_removal_wins_over_a_nic_list_in_the_same_message(field: str) -> None:
    msg = op("OP_INSTANCE_REMOVE", "success", **{field: [nic(PUB, mac="aa:00:00:00:00:09")]})
    out = step(STARTED, msg)
    assert out.state.deleted
    assert out.state.nics == ()


LATER_MESSAGES = [
    op("OP_INSTANCE_CREATE", "success", t=[T[0] + 5, 0]),
    op("OP_INSTANCE_STARTUP", "success", t=[T[0] + 5, 0], instance_nics=[nic(PUB)]),
    op("OP_INSTANCE_SHUTDOWN", "running", t=[T[0] + 5, 0]),
    op("OP_INSTANCE_REMOVE", "success", t=[T[0] + 5, 0]),
    op("OP_FOO", "error", t=[T[0] + 5, 0]),
    net([nic(PUB, mac="aa:00:00:00:00:05")], t=[T[0] + 5, 0]),
    net([nic(99)], t=[T[0] + 5, 0]),
    progress(77),
    progress(-3),
    progress(88, "image-copy-progress"),
    image("image-info", messages=["late"]),
    image("image-warning", messages="late"),
    image("image-error", messages=["late"], stderr="boom"),
    image("image-helper", subtype="task-start", task="late"),
]


@pytest.mark.parametrize("msg", LATER_MESSAGES, ids=lambda m: m.type)
def test_a_removed_vm_ignores_every_later_message(msg: VmMessage) -> None:
    for action in (None, "DESTROY"):
        out = step(REMOVED, msg, replace(CTX, action=action))
        assert out.state == REMOVED
        assert not out.applied
        assert out.diagnostics == ()


# --------------------------------------------------------------------------- NIC lists

NEW_NICS = [
    nic(PRIV, mac="aa:00:00:00:00:11", ip="10.0.0.5", firewall="protected"),
    nic(PUB, mac="aa:00:00:00:00:12", ip="192.0.2.99", ipv6="2001:db8::1"),
]
NEW_STATE = (
    NicState(0, PRIV, "aa:00:00:00:00:11", "10.0.0.5", "", "ENABLED"),
    NicState(1, PUB, "aa:00:00:00:00:12", "192.0.2.99", "2001:db8::1", "DISABLED"),
)


@pytest.mark.parametrize("field", ["nics", "instance_nics"])
@pytest.mark.parametrize(
    ("operation", "status", "operstate"),
    [
        ("OP_INSTANCE_CREATE", "success", "STARTED"),
        ("OP_INSTANCE_SET_PARAMS", "success", "STARTED"),
        ("OP_INSTANCE_SET_PARAMS", "error", "STARTED"),
        ("OP_INSTANCE_SET_PARAMS", "canceled", "STARTED"),
        ("OP_INSTANCE_STARTUP", "success", "STARTED"),
        ("OP_INSTANCE_SHUTDOWN", "success", "STOPPED"),
        ("OP_INSTANCE_REMOVE", "error", "STARTED"),
    ],
)
def test_op_status_nic_list_replaces_nics(
    field: str, operation: str, status: str, operstate: str
) -> None:
    out = step(STARTED, op(operation, status, **{field: NEW_NICS}))
    assert out.applied
    assert out.state.nics == NEW_STATE
    assert out.state.operstate == operstate
    assert out.state.backendopcode == operation
    assert out.diagnostics == ()


@pytest.mark.parametrize("field", ["nics", "instance_nics"])
def test_op_status_empty_nic_list_removes_all_nics(field: str) -> None:
    out = step(STARTED, op("OP_INSTANCE_SET_PARAMS", "success", **{field: []}))
    assert out.state.nics == ()


def test_op_status_without_nic_list_keeps_nics() -> None:
    out = step(STARTED, op("OP_INSTANCE_REBOOT", "success"))
    assert out.state.nics == STARTED.nics


NET_STATUS = [
    # (nics in the message, expected NIC set)
    ([], ()),
    (
        [nic(PUB, mac="m0", ip="192.0.2.1")],
        (NicState(0, PUB, "m0", "192.0.2.1", "", "DISABLED"),),
    ),
    (
        [nic(PRIV), nic(PUB), nic(OTHER_PRIV, ip=None, mac="m2")],
        (
            NicState(0, PRIV, "", "", "", ""),
            NicState(1, PUB, "", "", "", "DISABLED"),
            NicState(2, OTHER_PRIV, "m2", "", "", ""),
        ),
    ),
    (
        # the same network twice: two NICs, index = position
        [nic(PRIV, mac="a", ip=""), nic(PRIV, mac="b", ipv6="fe80::1", link="br9", mode="routed")],
        (NicState(0, PRIV, "a", "", "", ""), NicState(1, PRIV, "b", "", "fe80::1", "")),
    ),
    (
        NEW_NICS,
        NEW_STATE,
    ),
]


@pytest.mark.parametrize(("nics", "expected"), NET_STATUS)
@pytest.mark.parametrize("given", [FRESH, STARTED, STOPPED], ids=["fresh", "started", "stopped"])
def test_net_status_sets_the_nic_set(
    given: VmState, nics: list[dict[str, Any]], expected: tuple[NicState, ...]
) -> None:
    out = step(given, net(nics))
    assert out.applied
    assert out.state.nics == expected
    assert out.state.backendtime_us == T_US
    # a NIC report touches nothing else
    assert replace(out.state, nics=given.nics, backendtime_us=given.backendtime_us) == given


FIREWALL = [
    # (firewall field, network, expected profile); None = key absent
    ("protected", PUB, "ENABLED"),
    ("protected", PRIV, "ENABLED"),
    ("unprotected", PUB, "DISABLED"),
    ("unprotected", PRIV, "DISABLED"),
    ("limited", PUB, "PROTECTED"),
    ("limited", PRIV, "PROTECTED"),
    (None, PUB, "DISABLED"),
    (None, PRIV, ""),
    ("null", PUB, "DISABLED"),
    ("null", PRIV, ""),
    ("", PUB, "DISABLED"),
    ("", PRIV, ""),
    ("ENABLED", PUB, "DISABLED"),
    ("ENABLED", PRIV, ""),
    ("Protected", PRIV, ""),
    ("PROTECTED", PUB, "DISABLED"),
    ("bogus", PRIV, ""),
]


@pytest.mark.parametrize(("firewall", "net_id", "expected"), FIREWALL)
def test_firewall_profile(firewall: str | None, net_id: int, expected: str) -> None:
    extra: dict[str, Any] = {}
    if firewall == "null":
        extra["firewall"] = None
    elif firewall is not None:
        extra["firewall"] = firewall
    for msg in (net([nic(net_id, **extra)]), op("OP_FOO", "success", nics=[nic(net_id, **extra)])):
        out = step(FRESH, msg)
        assert out.state.nics == (NicState(0, net_id, "", "", "", expected),)


UNKNOWN_NETWORK = [
    # NIC lists that name a network that is unknown or not ours
    [nic(99)],
    [nic(PUB), nic(99)],
    [nic(PUB), {"network": "other-net-2"}],
    [{"network": f"{P}-net-0{PRIV}"}],
    [{"network": f"{P}-net-x"}],
    [{"network": f"{P}-{PRIV}"}],
    [{"network": "snf_public"}],
    [{"network": ""}],
]


@pytest.mark.parametrize("nics", UNKNOWN_NETWORK)
def test_net_status_with_unknown_network_is_not_applied(nics: list[dict[str, Any]]) -> None:
    out = step(STARTED, net(nics))
    assert out.state == STARTED  # not even backendtime moves
    assert not out.applied
    assert len(out.diagnostics) == 1
    diag = out.diagnostics[0]
    bad = next(n["network"] for n in nics if network_id_from_name(P, n["network"]) not in NETWORKS)
    assert repr(bad) in diag.message
    assert diag.level in ("WARNING", "ERROR")
    assert diag.source_time_us == T_US


@pytest.mark.parametrize("field", ["nics", "instance_nics"])
@pytest.mark.parametrize("nics", UNKNOWN_NETWORK)
def test_op_status_with_unknown_network_applies_all_but_the_nics(
    field: str, nics: list[dict[str, Any]]
) -> None:
    out = step(STOPPED, op("OP_INSTANCE_STARTUP", "success", job=900, **{field: nics}))
    assert out.applied
    assert out.state.nics == STOPPED.nics
    assert out.state.operstate == "STARTED"
    assert out.state.backendjobid == 900
    assert out.state.backendjobstatus == "success"
    assert out.state.backendtime_us == T_US
    assert len(out.diagnostics) == 1
    assert out.diagnostics[0].level in ("WARNING", "ERROR")


def test_create_error_with_unknown_network_still_sets_error() -> None:
    out = step(BUILDING, op("OP_INSTANCE_CREATE", "error", nics=[nic(99)]))
    assert out.state.operstate == "ERROR"
    assert out.state.nics == ()
    assert len(out.diagnostics) == 1


def test_build_nics_reports_the_unknown_network() -> None:
    msg = net([nic(PUB), nic(1234)])
    assert isinstance(msg, NetStatus)
    result = build_nics(msg.nics, CTX)
    assert isinstance(result, str)
    assert f"{P}-net-1234" in result


def test_network_resolution_uses_the_prefix() -> None:
    ctx = VmContext("cloud", None, NETWORKS)
    ours = step(FRESH, vm_msg(net_body([{"network": f"cloud-net-{PRIV}"}])), ctx)
    assert ours.state.nics == (NicState(0, PRIV, "", "", "", ""),)
    foreign = step(FRESH, vm_msg(net_body([{"network": f"snf-net-{PRIV}"}])), ctx)
    assert not foreign.applied
    assert foreign.state.nics == ()


# --------------------------------------------------------------------------- progress

PROGRESS = [
    # (value, expected buildpercentage)
    (0, 0),
    (0.0, 0),
    (0.99, 0),
    (1, 1),
    (7, 7),
    (42.9, 42),
    (45.67, 45),
    (99.999, 99),
    (100, 100),
    (100.0, 100),
    (100.5, 100),
    (101, 100),
    (250.75, 100),
    (10**9, 100),
]


@pytest.mark.parametrize("kind", ["ganeti-create-progress", "image-copy-progress"])
@pytest.mark.parametrize(("value", "expected"), PROGRESS)
def test_progress_integer_part_capped(kind: str, value: float, expected: int) -> None:
    out = step(BUILDING, progress(value, kind))
    assert out.applied
    assert out.state.buildpercentage == expected
    assert out.state.backendtime_us == T_US
    assert out.state.operstate == "BUILD"
    assert out.diagnostics == ()


def test_progress_may_go_down() -> None:
    out = step(replace(BUILDING, buildpercentage=80), progress(20.5))
    assert out.state.buildpercentage == 20


def test_wprogress_is_ignored() -> None:
    out = step(BUILDING, progress(12.5, wprogress=99.0))
    assert out.state.buildpercentage == 12


@pytest.mark.parametrize("kind", ["ganeti-create-progress", "image-copy-progress"])
@pytest.mark.parametrize("value", [-1, -0.5, -100, -1e9])
def test_negative_progress_is_a_diagnostic(kind: str, value: float) -> None:
    out = step(BUILDING, progress(value, kind))
    assert not out.applied
    assert out.state == BUILDING
    assert len(out.diagnostics) == 1
    assert out.diagnostics[0].source_time_us == T_US
    assert out.diagnostics[0].level in ("WARNING", "ERROR")
    assert str(value) in out.diagnostics[0].message or "negative" in out.diagnostics[0].message


@pytest.mark.parametrize("kind", ["ganeti-create-progress", "image-copy-progress"])
@pytest.mark.parametrize("given", ["BUILD", "STARTED", "STOPPED", "ERROR"])
@pytest.mark.parametrize("value", [0, 50, 100, 150])
def test_progress_never_changes_operstate(kind: str, given: str, value: float) -> None:
    state = replace(BUILDING, operstate=given)
    out = step(state, progress(value, kind))
    assert out.state.operstate == given
    assert not out.state.deleted
    assert out.state.nics == state.nics
    assert out.state.backendjobstatus == state.backendjobstatus


# --------------------------------------------------------------------------- diagnostics

IMAGE_DIAGNOSTICS = [
    # (type, fields, level, source, message, details)
    ("image-info", {"messages": ["Configuring", "image"]}, "DEBUG", "image-info",
     "Configuring image", None),
    ("image-info", {"messages": "single string"}, "DEBUG", "image-info", "single string", None),
    ("image-info", {}, "DEBUG", "image-info", "Image info", None),
    ("image-info", {"messages": []}, "DEBUG", "image-info", "Image info", None),
    ("image-info", {"messages": None}, "DEBUG", "image-info", "Image info", None),
    ("image-warning", {"messages": ["disk", "slow"]}, "WARNING", "image-warning", "disk slow",
     None),
    ("image-warning", {"messages": ""}, "WARNING", "image-warning", "Image warning", None),
    ("image-error", {"messages": ["failed"], "stderr": "trace\nback"}, "ERROR", "image-error",
     "failed", "trace\nback"),
    ("image-error", {"stderr": "only stderr"}, "ERROR", "image-error", "Image error",
     "only stderr"),
    ("image-helper", {"subtype": "warning", "messages": ["w"]}, "WARNING", "image-helper", "w",
     None),
    ("image-helper", {"subtype": "error", "messages": ["e"], "stderr": "x"}, "ERROR",
     "image-helper", "e", "x"),
    ("image-helper", {"subtype": "info", "messages": ["i", "j"]}, "INFO", "image-helper", "i j",
     None),
    ("image-helper", {"subtype": "task-start", "task": "FixPartitionTable"}, "DEBUG",
     "image-helper-task-start", "FixPartitionTable", None),
    ("image-helper", {"subtype": "task-end", "task": "FilesystemResizeUnmounted"}, "DEBUG",
     "image-helper-task-end", "FilesystemResizeUnmounted", None),
    ("image-helper", {"subtype": "task-start"}, "DEBUG", "image-helper-task-start",
     "Image helper task start", None),
    ("image-helper", {"subtype": "task-end", "messages": []}, "DEBUG", "image-helper-task-end",
     "Image helper task end", None),
    ("image-helper", {"messages": ["plain"]}, "DEBUG", "image-helper", "plain", None),
    ("image-helper", {}, "DEBUG", "image-helper", "Image helper", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "fields", "level", "source", "message", "details"), IMAGE_DIAGNOSTICS
)
def test_image_diagnostics(
    kind: str,
    fields: dict[str, Any],
    level: str,
    source: str,
    message: str,
    details: str | None,
) -> None:
    out = step(BUILDING, image(kind, **fields))
    assert len(out.diagnostics) == 1
    diag = out.diagnostics[0]
    assert (diag.level, diag.source, diag.message, diag.details) == (
        level,
        source,
        message,
        details,
    )
    assert diag.source_time_us == T_US
    # a diagnostic never touches the VM's own state
    st = out.state
    assert (st.operstate, st.buildpercentage, st.nics, st.backendjobstatus) == (
        BUILDING.operstate,
        BUILDING.buildpercentage,
        BUILDING.nics,
        BUILDING.backendjobstatus,
    )


def test_distinct_diagnostics_have_distinct_digests() -> None:
    a = step(BUILDING, image("image-info", messages=["a"])).diagnostics[0]
    b = step(BUILDING, image("image-info", messages=["b"])).diagnostics[0]
    a2 = step(STARTED, image("image-info", messages=["a"])).diagnostics[0]
    assert a.digest != b.digest
    assert a.digest == a2.digest  # one message, one diagnostic, whatever the state


# --------------------------------------------------------------------------- backend networks

BN_PENDING = BnState()
BN_ACTIVE = BnState(operstate="ACTIVE", backendjobid=1, backendopcode="OP_NETWORK_CONNECT",
                    backendjobstatus="success")  # fmt: skip
BN_ERROR = BnState(operstate="ERROR", backendjobid=1, backendopcode="OP_NETWORK_ADD",
                   backendjobstatus="error")  # fmt: skip
BN_DELETED = BnState(operstate="DELETED", deleted=True, backendjobid=1,
                     backendopcode="OP_NETWORK_REMOVE", backendjobstatus="success")  # fmt: skip

BACKEND_NETWORK = [
    # (given, network action, opcode, status, expected operstate, expected deleted)
    (BN_PENDING, "CREATE", "OP_NETWORK_ADD", "success", "PENDING", False),
    (BN_ERROR, "CREATE", "OP_NETWORK_ADD", "success", "PENDING", False),
    (BN_PENDING, "CREATE", "OP_NETWORK_CONNECT", "success", "ACTIVE", False),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_DISCONNECT", "success", "PENDING", False),
    (BN_PENDING, "DESTROY", "OP_NETWORK_REMOVE", "success", "DELETED", True),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_REMOVE", "success", "DELETED", True),
    (BN_PENDING, None, "OP_NETWORK_ADD", "error", "ERROR", False),
    (BN_PENDING, "CREATE", "OP_NETWORK_ADD", "canceled", "ERROR", False),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_ADD", "error", "ERROR", False),
    (BN_PENDING, "CREATE", "OP_NETWORK_ADD", "canceling", "PENDING", False),
    (BN_PENDING, "CREATE", "OP_NETWORK_ADD", "running", "PENDING", False),
    (BN_ERROR, "CREATE", "OP_NETWORK_REMOVE", "error", "DELETED", True),
    (BN_ERROR, None, "OP_NETWORK_REMOVE", "error", "DELETED", True),
    (BN_ACTIVE, "DESTROY", "OP_NETWORK_REMOVE", "error", "DELETED", True),
    (BN_PENDING, "DESTROY", "OP_NETWORK_REMOVE", "error", "DELETED", True),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_REMOVE", "error", "ACTIVE", False),
    (BN_PENDING, None, "OP_NETWORK_REMOVE", "error", "PENDING", False),
    (BN_ERROR, "DESTROY", "OP_NETWORK_REMOVE", "canceled", "ERROR", False),
    (BN_ERROR, "DESTROY", "OP_NETWORK_REMOVE", "running", "ERROR", False),
    (BN_ACTIVE, "DESTROY", "OP_NETWORK_REMOVE", "queued", "ACTIVE", False),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_CONNECT", "error", "ACTIVE", False),
    (BN_PENDING, "CREATE", "OP_NETWORK_CONNECT", "running", "PENDING", False),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_DISCONNECT", "error", "ACTIVE", False),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_DISCONNECT", "canceled", "ACTIVE", False),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_SET_PARAMS", "success", "ACTIVE", False),
    (BN_PENDING, "CREATE", "OP_NETWORK_SET_PARAMS", "error", "PENDING", False),
    (BN_ACTIVE, "CREATE", "OP_NETWORK_QUERY_DATA", "success", "ACTIVE", False),
    (BN_ERROR, "CREATE", "OP_NETWORK_QUERY_DATA", "success", "ERROR", False),
    (BN_ACTIVE, "DESTROY", "OP_NETWORK_FOO", "success", "ACTIVE", False),
    (BN_ERROR, "DESTROY", "OP_NETWORK_FOO", "error", "ERROR", False),
    # deleted, then made again under the same name: later messages still apply
    (BN_DELETED, "DESTROY", "OP_NETWORK_ADD", "success", "PENDING", False),
    (BN_DELETED, "CREATE", "OP_NETWORK_CONNECT", "success", "ACTIVE", False),
    (BN_DELETED, "DESTROY", "OP_NETWORK_CONNECT", "running", "DELETED", True),
    (BN_DELETED, "DESTROY", "OP_NETWORK_REMOVE", "error", "DELETED", True),
    (BN_DELETED, "CREATE", "OP_NETWORK_DISCONNECT", "error", "DELETED", True),
]


@pytest.mark.parametrize(
    ("given", "action", "operation", "status", "operstate", "deleted"), BACKEND_NETWORK
)
def test_backend_network_rules(
    given: BnState,
    action: str | None,
    operation: str,
    status: str,
    operstate: str,
    deleted: bool,
) -> None:
    msg = network_msg(operation, status, job=4321, logmsg=f"{operation}/{status}")
    state, applied = apply_network(given, msg, action)
    assert applied
    assert (state.operstate, state.deleted) == (operstate, deleted)
    # job fields as for VMs, whatever the status
    assert state.backendjobid == 4321
    assert state.backendopcode == operation
    assert state.backendjobstatus == status
    assert state.backendlogmsg == f"{operation}/{status}"
    assert state.backendtime_us == T_US


def test_a_new_backend_network_starts_pending() -> None:
    assert BnState().operstate == "PENDING"
    assert not BnState().deleted


NETWORK_STATE = [
    # (backend network states on online backends, network state, network deleted)
    ([], "PENDING", False),
    (["ACTIVE"], "ACTIVE", False),
    (["PENDING"], "PENDING", False),
    (["ERROR"], "ERROR", False),
    (["DELETED"], "DELETED", True),
    (["ACTIVE", "ACTIVE", "ACTIVE"], "ACTIVE", False),
    (["ERROR", "ERROR"], "ERROR", False),
    (["DELETED", "DELETED"], "DELETED", True),
    (["ACTIVE", "PENDING"], "PENDING", False),
    (["ACTIVE", "ERROR"], "PENDING", False),
    (["DELETED", "ACTIVE"], "PENDING", False),
    (["ACTIVE", "DELETED", "DELETED"], "PENDING", False),
    (["DELETED", "ERROR"], "PENDING", False),
]


@pytest.mark.parametrize(("states", "state", "deleted"), NETWORK_STATE)
def test_network_state_from_backend_networks(states: list[str], state: str, deleted: bool) -> None:
    assert network_state(states) == (state, deleted)
    assert network_state(reversed(states)) == (state, deleted)


# --------------------------------------------------------------------------- §5.4: parse

OP = op_body("OP_INSTANCE_STARTUP", "success", cluster="c1")
NETS = net_body([nic(PUB, mac="aa", ip="1.2.3.4")])
PROG = {"type": "ganeti-create-progress", "instance": INST, "rprogress": 5.5, "event_time": T}
COPY = {"type": "image-copy-progress", "instance": INST, "progress": 5, "event_time": T}
INFO = {"type": "image-info", "instance": INST, "messages": ["m"], "event_time": T}
NETW = network_body("OP_NETWORK_ADD", "queued")
VALID = {
    "ganeti-op-status": OP,
    "ganeti-net-status": NETS,
    "ganeti-create-progress": PROG,
    "image-copy-progress": COPY,
    "image-info": INFO,
    "image-warning": {**INFO, "type": "image-warning"},
    "image-error": {**INFO, "type": "image-error"},
    "image-helper": {**INFO, "type": "image-helper", "subtype": "info"},
    "ganeti-network-status": NETW,
}


@pytest.mark.parametrize("body", list(VALID.values()), ids=list(VALID))
def test_valid_bodies_parse(body: dict[str, Any]) -> None:
    msg = wire(body)
    assert msg.type == body["type"]
    assert msg.event_time_us == T_US


def without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


REQUIRED = {
    "ganeti-op-status": ["type", "instance", "operation", "jobId", "status", "logmsg",
                         "event_time"],
    "ganeti-net-status": ["type", "instance", "event_time", "nics"],
    "ganeti-create-progress": ["type", "instance", "event_time", "rprogress"],
    "image-copy-progress": ["type", "instance", "event_time", "progress"],
    "image-info": ["type", "instance", "event_time"],
    "image-warning": ["type", "instance", "event_time"],
    "image-error": ["type", "instance", "event_time"],
    "image-helper": ["type", "instance", "event_time"],
    "ganeti-network-status": ["type", "network", "operation", "jobId", "status", "logmsg",
                              "event_time", "cluster"],
}  # fmt: skip
MISSING = [(kind, key) for kind, keys in REQUIRED.items() for key in keys]


def rejected(body: bytes | dict[str, Any]) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidMessage) as info:
        parse(raw)
    reason = info.value.reason
    assert reason == str(info.value)
    assert reason
    assert "\n" not in reason
    assert len(reason) <= 500
    return reason


@pytest.mark.parametrize(("kind", "key"), MISSING)
def test_missing_required_field(kind: str, key: str) -> None:
    reason = rejected(without(VALID[kind], key))
    if key == "type":
        assert "type" in reason
    else:
        assert key in reason
        assert kind in reason


@pytest.mark.parametrize("kind", ["ganeti-op-status", "ganeti-net-status"])
def test_nic_without_network_is_rejected(kind: str) -> None:
    body = {**VALID[kind], "nics": [{"mac": "aa:00:00:00:00:01"}]}
    assert "network" in rejected(body)


WRONG_TYPE = [
    # (type, field, bad value, word the reason names)
    ("ganeti-op-status", "jobId", "17", "jobId"),
    ("ganeti-op-status", "jobId", True, "jobId"),
    ("ganeti-op-status", "jobId", 17.0, "jobId"),
    ("ganeti-op-status", "jobId", None, "jobId"),
    ("ganeti-op-status", "instance", 42, "instance"),
    ("ganeti-op-status", "instance", None, "instance"),
    ("ganeti-op-status", "operation", 3, "operation"),
    ("ganeti-op-status", "operation", None, "operation"),
    ("ganeti-op-status", "status", "done", "status"),
    ("ganeti-op-status", "status", "SUCCESS", "status"),
    ("ganeti-op-status", "status", "cancelled", "status"),
    ("ganeti-op-status", "status", 1, "status"),
    ("ganeti-op-status", "status", None, "status"),
    ("ganeti-op-status", "logmsg", 5, "logmsg"),
    ("ganeti-op-status", "logmsg", ["a"], "logmsg"),
    ("ganeti-op-status", "cluster", 1, "cluster"),
    ("ganeti-op-status", "nics", {"network": "snf-net-1"}, "nics"),
    ("ganeti-op-status", "instance_nics", "snf-net-1", "instance_nics"),
    ("ganeti-op-status", "nics", [{"network": 1}], "network"),
    ("ganeti-op-status", "nics", [{"network": "snf-net-1", "ip": 10}], "ip"),
    ("ganeti-op-status", "nics", [{"network": "snf-net-1", "mac": False}], "mac"),
    ("ganeti-op-status", "nics", ["snf-net-1"], "nics"),
    ("ganeti-net-status", "nics", None, "nics"),
    ("ganeti-net-status", "nics", "snf-net-1", "nics"),
    ("ganeti-net-status", "nics", [{"network": "snf-net-1", "firewall": 1}], "firewall"),
    ("ganeti-net-status", "instance", ["snf-42"], "instance"),
    ("ganeti-create-progress", "rprogress", "45.6", "rprogress"),
    ("ganeti-create-progress", "rprogress", "45", "rprogress"),
    ("ganeti-create-progress", "rprogress", True, "rprogress"),
    ("ganeti-create-progress", "rprogress", None, "rprogress"),
    ("ganeti-create-progress", "rprogress", [45], "rprogress"),
    ("image-copy-progress", "progress", "50", "progress"),
    ("image-copy-progress", "progress", False, "progress"),
    ("image-info", "messages", 5, "messages"),
    ("image-info", "messages", [1, 2], "messages"),
    ("image-error", "stderr", 1, "stderr"),
    ("image-helper", "subtype", 1, "subtype"),
    ("image-helper", "task", ["t"], "task"),
    ("ganeti-network-status", "jobId", "9", "jobId"),
    ("ganeti-network-status", "jobId", False, "jobId"),
    ("ganeti-network-status", "status", "finished", "status"),
    ("ganeti-network-status", "cluster", None, "cluster"),
    ("ganeti-network-status", "cluster", 3, "cluster"),
    ("ganeti-network-status", "network", 7, "network"),
    ("ganeti-network-status", "logmsg", {}, "logmsg"),
    ("ganeti-network-status", "add_reserved_ips", "10.0.0.1", "add_reserved_ips"),
]


@pytest.mark.parametrize(("kind", "field", "value", "word"), WRONG_TYPE)
def test_wrong_type(kind: str, field: str, value: Any, word: str) -> None:
    reason = rejected({**VALID[kind], field: value})
    assert word in reason
    assert kind in reason


BAD_EVENT_TIME: list[Any] = [
    [-1, 0],
    [-1_795_000_000, 5],
    [T[0], -1],
    [T[0], 1_000_000],
    [T[0], 10**7],
    [T[0]],
    [],
    [T[0], 0, 0],
    [float(T[0]), 0],
    [T[0], 0.0],
    [T[0] + 0.5, 0],
    [str(T[0]), "0"],
    [True, 0],
    [T[0], False],
    [None, 0],
    T[0],
    float(T[0]),
    "2026-01-01T00:00:00Z",
    {"seconds": T[0], "microseconds": 0},
    None,
]


@pytest.mark.parametrize("kind", list(VALID))
@pytest.mark.parametrize("event_time", BAD_EVENT_TIME, ids=repr)
def test_bad_event_time(kind: str, event_time: Any) -> None:
    assert "event_time" in rejected({**VALID[kind], "event_time": event_time})


@pytest.mark.parametrize("event_time", [[0, 0], [0, 999_999], [T[0], 0], [T[0], 999_999]])
def test_event_time_bounds_are_inclusive(event_time: list[int]) -> None:
    msg = wire({**OP, "event_time": event_time})
    assert msg.event_time_us == event_time[0] * 1_000_000 + event_time[1]


NOT_A_MESSAGE = [
    # (body, word the reason contains)
    (b"", "JSON"),
    (b"not json", "JSON"),
    (b"{", "JSON"),
    (b'{"type": "ganeti-op-status",}', "JSON"),
    (b"[]", "object"),
    (b'[{"type": "ganeti-op-status"}]', "object"),
    (b'"ganeti-op-status"', "object"),
    (b"42", "object"),
    (b"null", "object"),
    (b"true", "object"),
    (b"{}", "type"),
    (b'{"type": "ganeti-cluster-status", "cluster": "c"}', "type"),
    (b'{"type": "eventd-heartbeat", "cluster": "c"}', "type"),
    (b'{"type": "reconcile", "vmid": 1}', "type"),
    (b'{"type": 7}', "type"),
    (b'{"type": null}', "type"),
    (b'{"type": "GANETI-OP-STATUS"}', "type"),
]


@pytest.mark.parametrize(("body", "word"), NOT_A_MESSAGE)
def test_not_a_message(body: bytes, word: str) -> None:
    assert word in rejected(body)


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe\x00",
        b'{"type": "ganeti-op-status", "instance": "snf-\xff"}',
        json.dumps(OP).encode().replace(b"OP_INSTANCE_STARTUP", b"OP_\xc3\x28"),
        json.dumps(OP).encode("utf-16"),
        b"\x80" + json.dumps(OP).encode(),
    ],
)
def test_non_utf8_bytes_are_rejected(body: bytes) -> None:
    rejected(body)


MIB = 1024 * 1024


def padded(body: dict[str, Any], size: int) -> bytes:
    base = json.dumps({**body, "pad": ""}).encode()
    out = json.dumps({**body, "pad": "x" * (size - len(base))}).encode()
    assert len(out) == size
    return out


@pytest.mark.parametrize("kind", list(VALID))
def test_body_over_one_mib_is_rejected(kind: str) -> None:
    reason = rejected(padded(VALID[kind], MIB + 1))
    assert str(MIB) in reason or "MiB" in reason or "limit" in reason
    rejected(padded(VALID[kind], 5 * MIB))


@pytest.mark.parametrize("kind", list(VALID))
def test_body_of_exactly_one_mib_is_accepted(kind: str) -> None:
    assert parse(padded(VALID[kind], MIB)).type == kind


EXTRAS = {
    "message": "copy of logmsg",
    "job_fields": {"nics": [], "beparams": {"vcpus": 2}},
    "tags": ["a", "b"],
    "result": [True, ["x"]],
    "instance_disks": [{"name": "d", "size": 1024}],
    "unknown": None,
    "wprogress": 12,
}


@pytest.mark.parametrize("kind", list(VALID))
def test_extra_fields_are_ignored_and_do_not_change_the_digest(kind: str) -> None:
    plain = wire(VALID[kind])
    extra = wire({**VALID[kind], **EXTRAS})
    assert extra == plain
    assert extra.digest() == plain.digest()
    assert sort_key(extra, extra.digest()) == sort_key(plain, plain.digest())
    dumped = extra.model_dump()
    assert not set(EXTRAS) & set(dumped)


@pytest.mark.parametrize("kind", ["ganeti-op-status", "ganeti-net-status"])
def test_extra_fields_inside_a_nic_are_ignored(kind: str) -> None:
    body = {**VALID[kind], "nics": [nic(PUB, mac="aa")]}
    odd = {**VALID[kind], "nics": [nic(PUB, mac="aa", uuid="u-1", vlan=3)]}
    assert wire(odd).digest() == wire(body).digest()


def test_digest_tells_different_messages_apart() -> None:
    a = wire(OP)
    for change in (
        {"jobId": 101},
        {"status": "error"},
        {"logmsg": "x"},
        {"event_time": [T[0], T[1] + 1]},
        {"instance": f"{P}-43"},
        {"operation": "OP_INSTANCE_REBOOT"},
        {"nics": [nic(PUB)]},
    ):
        assert wire({**OP, **change}).digest() != a.digest(), change


def test_key_order_and_whitespace_do_not_change_the_digest() -> None:
    a = wire(OP)
    b = parse(json.dumps(dict(reversed(list(OP.items()))), indent=4).encode())
    assert a.digest() == b.digest()


# --------------------------------------------------------------------------- §1: names

NAMES = [
    # (prefix, name, vm id, network id); None = not ours
    ("snf", "snf-42", 42, None),
    ("snf", "snf-1", 1, None),
    ("snf", "snf-2147483647", 2147483647, None),
    ("snf", "snf-net-7", None, 7),
    ("snf", "snf-net-123456", None, 123456),
    ("cloud", "cloud-5", 5, None),
    ("cloud", "cloud-net-5", None, 5),
    ("my-cloud", "my-cloud-9", 9, None),
    ("my-cloud", "my-cloud-net-9", None, 9),
    # foreign prefixes
    ("snf", "cloud-42", None, None),
    ("snf", "snfx-42", None, None),
    ("snf", "xsnf-42", None, None),
    ("snf", "SNF-42", None, None),
    ("cloud", "snf-42", None, None),
    ("cloud", "snf-net-42", None, None),
    ("snf", "cloud-net-42", None, None),
    # not a number
    ("snf", "snf-", None, None),
    ("snf", "snf-net-", None, None),
    ("snf", "snf-abc", None, None),
    ("snf", "snf-42a", None, None),
    ("snf", "snf-4 2", None, None),
    ("snf", "snf- 42", None, None),
    ("snf", "snf-42 ", None, None),
    ("snf", "snf-+42", None, None),
    ("snf", "snf--42", None, None),
    ("snf", "snf-4.2", None, None),
    ("snf", "snf-1e3", None, None),
    ("snf", "snf-0x2a", None, None),
    ("snf", "snf-\u0664\u0662", None, None),  # Arabic-Indic digits
    ("snf", "snf-\uff14\uff12", None, None),  # full-width digits
    ("snf", "snf-net-x", None, None),
    ("snf", "snf-net-7-1", None, None),
    ("snf", "snf-net-net-7", None, None),
    ("snf", "snf-42-1", None, None),
    # leading zeros
    ("snf", "snf-042", None, None),
    ("snf", "snf-00", None, None),
    ("snf", "snf-0", None, None),
    ("snf", "snf-net-07", None, None),
    ("snf", "snf-net-0", None, None),
    # past any id, and far past what int() parses by default (4,300 digits)
    ("snf", "snf-" + "1" * 11, None, None),
    ("snf", "snf-" + "9" * 5000, None, None),
    ("snf", "snf-net-" + "9" * 5000, None, None),
    # no prefix at all
    ("snf", "42", None, None),
    ("snf", "", None, None),
    ("snf", "snf_public", None, None),
]


@pytest.mark.parametrize(("prefix", "name", "vm_id", "net_id"), NAMES)
def test_names(prefix: str, name: str, vm_id: int | None, net_id: int | None) -> None:
    assert vm_id_from_instance(prefix, name) == vm_id
    assert network_id_from_name(prefix, name) == net_id


@pytest.mark.parametrize("ident", [1, 9, 10, 42, 1000, 99999, 2**31 - 1])
@pytest.mark.parametrize("prefix", ["snf", "cloud", "a-b"])
def test_names_round_trip(prefix: str, ident: int) -> None:
    assert instance_name(prefix, ident) == f"{prefix}-{ident}"
    assert network_name(prefix, ident) == f"{prefix}-net-{ident}"
    assert vm_id_from_instance(prefix, instance_name(prefix, ident)) == ident
    assert network_id_from_name(prefix, network_name(prefix, ident)) == ident
    assert vm_id_from_instance(prefix, network_name(prefix, ident)) is None
    assert network_id_from_name(prefix, instance_name(prefix, ident)) is None


# --------------------------------------------------------------------------- §5.2: order

ORDER = ["queued", "waiting", "canceling", "running", "canceled", "error", "success"]


def key(msg: Message) -> bytes:
    return sort_key(msg, msg.digest())


@pytest.mark.parametrize("make", [op_body, network_body], ids=["op", "network"])
def test_ties_broken_by_status_order(make: Any) -> None:
    msgs = [wire(make("OP_X", s, job=5)) for s in reversed(ORDER)]
    assert [m.status for m in sorted(msgs, key=key)] == ORDER  # type: ignore[union-attr]
    for lower, higher in itertools.pairwise(ORDER):
        assert key(wire(make("OP_X", lower, job=5))) < key(wire(make("OP_X", higher, job=5)))


@pytest.mark.parametrize("make", [op_body, network_body], ids=["op", "network"])
def test_ties_broken_by_job_id_before_status(make: Any) -> None:
    # at equal event_time, a higher jobId sorts later whatever the statuses
    for low_status in ORDER:
        for high_status in ORDER:
            low = wire(make("OP_X", low_status, job=9))
            high = wire(make("OP_X", high_status, job=10))
            assert key(low) < key(high), (low_status, high_status)
    assert key(wire(make("OP_X", "success", job=0))) < key(wire(make("OP_X", "queued", job=1)))
    big = 2**63 - 2
    assert key(wire(make("OP_X", "success", job=big))) < key(
        wire(make("OP_X", "queued", job=big + 1))
    )


@pytest.mark.parametrize("make", [op_body, network_body], ids=["op", "network"])
def test_event_time_comes_first(make: Any) -> None:
    early = wire({**make("OP_X", "success", job=10**12), "event_time": [T[0], 999_999]})
    late = wire({**make("OP_X", "queued", job=1), "event_time": [T[0] + 1, 0]})
    assert key(early) < key(late)
    one_us_early = wire({**make("OP_X", "success", job=10**12), "event_time": [T[0], 5]})
    one_us_late = wire({**make("OP_X", "queued", job=1), "event_time": [T[0], 6]})
    assert key(one_us_early) < key(one_us_late)


def test_distinct_messages_never_share_a_key() -> None:
    msgs = [
        wire(OP),
        wire({**OP, "logmsg": "other"}),
        wire({**OP, "nics": [nic(PUB)]}),
        wire(NETS),
        wire({**NETS, "nics": []}),
        wire(PROG),
        wire({**PROG, "rprogress": 6}),
        wire(COPY),
        wire(INFO),
        wire({**INFO, "type": "image-error"}),
    ]
    keys = {key(m) for m in msgs}
    assert len(keys) == len(msgs)
    # and one message always has one key
    assert key(wire(OP)) == key(wire({**OP, **EXTRAS}))
