"""eventd: job files → messages (pure), the inotify watcher, dedupe, master check, catch-up,
deferral when the publisher is full, and the real broker (publisher confirms, failover,
reconnect after the broker went away, ``dispatcher eventd`` as a process)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from dispatcher.core.messages import NetworkStatus, OpStatus, parse
from dispatcher.eventd import inotify
from dispatcher.eventd.jobfile import (
    JobFileError,
    event_time,
    events_from_job,
    job_id_from_filename,
    job_status,
    load_job,
    logmsg,
    routing_prefix,
)
from dispatcher.eventd.master import MasterCheck, local_names, read_ssconf
from dispatcher.eventd.nics import firewall_by_nic, nics_from_instance
from dispatcher.eventd.publisher import Outgoing, Publisher
from dispatcher.eventd.service import Dedupe, EventdOptions, EventService, run_eventd
from tests.support import PYTHON, ROOT, async_wait_until, free_port, unique_prefix

CLUSTER = "cluster.gnt.test"
T0 = 1795894896  # the sandbox clock


# --------------------------------------------------------------------------- job files


def ts(offset: int, usec: int = 0) -> list[int]:
    return [T0 + offset, usec]


def op(
    op_id: str,
    status: str,
    *,
    start: list[int] | None = None,
    exec_: list[int] | None = None,
    end: list[int] | None = None,
    log: Sequence[str] = (),
    result: Any = None,
    opcode: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, Any]:
    """One op as Ganeti 3.0 writes it into queue/job-<id> (``opcode``/``params``: input)."""
    return {
        "input": {
            "OP_ID": op_id,
            "comment": None,
            "debug_level": 0,
            "depends": None,
            "priority": 0,
            "reason": [
                ["gnt:library:rlib2:instances", "", 1795894896855255296],
                ["gnt:opcode:" + op_id[3:].lower(), "job=22;index=0", 1795894896858548000],
            ],
            **(opcode or {}),
            **params,
        },
        "status": status,
        "result": result,
        "log": [[i + 1, ts(1, 419647 + i), "message", m] for i, m in enumerate(log)],
        "priority": 0,
        "start_timestamp": start,
        "exec_timestamp": exec_,
        "end_timestamp": end,
    }


def job(
    job_id: int,
    *ops: object,
    received: list[int] | None = None,
    start: list[int] | None = None,
    end: Sequence[object] | None = None,
) -> dict[str, Any]:
    """A job file's document; ``ops`` and ``end`` are loose because the tests of malformed
    files put in what Ganeti never writes (an op that is a string, a bad timestamp)."""
    doc: dict[str, Any] = {
        "id": job_id,
        "ops": list(ops),
        "received_timestamp": received if received is not None else ts(0, 858548),
        "start_timestamp": start,
        "end_timestamp": end,
    }
    if start is not None:
        doc["livelock"] = f"/var/run/ganeti/livelocks/job_{job_id:06d}_{T0}"
        doc["process_id"] = 15520
    return doc


def create_op(name: str, status: str, **kw: Any) -> dict[str, Any]:
    return op(
        "OP_INSTANCE_CREATE",
        status,
        opcode={
            "instance_name": name,
            "mode": "create",
            "disk_template": "diskless",
            "disks": [],
            "nics": [{}],
            "os_type": "noop",
            "hypervisor": "fake",
            "pnode": "node1.gnt.test",
            "beparams": {"memory": 128, "vcpus": 1},
            "ip_check": False,
            "name_check": False,
            "start": True,
        },
        **kw,
    )


def bodies(doc: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    events = events_from_job(doc, cluster=CLUSTER, **kw)
    for ev in events:  # every body is a valid CONTRACT §4 message
        parse(json.dumps(ev.body).encode())
    return [ev.body for ev in events]


def op_status(
    name: str, operation: str, job_id: int, status: str, when: list[int], logmsg: str | None = None
) -> dict[str, Any]:
    return {
        "type": "ganeti-op-status",
        "instance": name,
        "operation": operation,
        "jobId": job_id,
        "status": status,
        "logmsg": logmsg,
        "event_time": when,
        "cluster": CLUSTER,
    }


# --------------------------------------------------------------------------- pure: jobfile


def test_queued_create_uses_received_timestamp() -> None:
    doc = job(22, create_op("snf-42", "queued"))
    assert bodies(doc) == [
        op_status("snf-42", "OP_INSTANCE_CREATE", 22, "queued", ts(0, 858548)),
    ]


def test_waiting_running_success_timestamps_and_logmsg() -> None:
    waiting = job(
        23,
        op("OP_INSTANCE_SHUTDOWN", "waiting", start=ts(1, 5), instance_name="snf-7"),
        start=ts(1, 1),
    )
    assert bodies(waiting) == [op_status("snf-7", "OP_INSTANCE_SHUTDOWN", 23, "waiting", ts(1, 5))]

    running = job(
        23,
        op(
            "OP_INSTANCE_SHUTDOWN",
            "running",
            start=ts(1, 5),
            exec_=ts(2, 6),
            instance_name="snf-7",
            log=["* shutting down"],
        ),
        start=ts(1, 1),
    )
    assert bodies(running) == [
        op_status("snf-7", "OP_INSTANCE_SHUTDOWN", 23, "running", ts(2, 6), "* shutting down")
    ]

    done = job(
        23,
        op(
            "OP_INSTANCE_SHUTDOWN",
            "success",
            start=ts(1, 5),
            exec_=ts(2, 6),
            end=ts(3, 7),
            instance_name="snf-7",
            log=["* shutting down", "instance stopped"],
        ),
        start=ts(1, 1),
        end=ts(3, 9),
    )
    assert bodies(done) == [
        op_status("snf-7", "OP_INSTANCE_SHUTDOWN", 23, "success", ts(3, 7), "instance stopped")
    ]


def test_canceling_uses_op_start() -> None:
    doc = job(30, op("OP_INSTANCE_REBOOT", "canceling", start=ts(4, 4), instance_name="snf-1"))
    assert bodies(doc)[0]["event_time"] == ts(4, 4)


def test_error_without_op_end_falls_back_to_job_end() -> None:
    # the sandbox's ipolicy failure: prereq error, result [class, [message, code]]
    failing = create_op(
        "snf-9",
        "error",
        start=ts(1),
        log=[],
        result=["OpPrereqError", ["disk-size/0 value 64 is not in range", "wrong_input"]],
    )
    doc = job(34, failing, start=ts(1), end=ts(2, 222))
    assert bodies(doc) == [op_status("snf-9", "OP_INSTANCE_CREATE", 34, "error", ts(2, 222))]


def test_canceled_queued_job() -> None:
    doc = job(
        36,
        op(
            "OP_INSTANCE_STARTUP",
            "canceled",
            end=ts(5, 1),
            instance_name="snf-3",
            result="Job canceled by request",
        ),
        end=ts(5, 2),
    )
    assert bodies(doc)[0]["status"] == "canceled"
    assert bodies(doc)[0]["event_time"] == ts(5, 1)


def test_missing_timestamps_fall_back_to_file_time_or_skip() -> None:
    doc = job(40, op("OP_INSTANCE_STARTUP", "running", instance_name="snf-3"), received=[])
    # running without exec_timestamp and no job end: the caller's fallback (file mtime)
    assert bodies(doc, fallback_time=[T0 + 9, 999999])[0]["event_time"] == [T0 + 9, 999999]
    # and with nothing at all, the op is skipped rather than published with a bad time
    assert bodies(doc) == []
    # malformed timestamps count as missing
    bad = job(
        41,
        op("OP_INSTANCE_STARTUP", "success", end=[T0, 1_000_000], instance_name="snf-3"),
        end=["x", 1],
    )
    assert bodies(bad) == []
    assert event_time(bad["ops"][0], bad, [1, 2]) == [1, 2]


def test_instances_list_of_one_is_used_multi_instance_jobs_are_skipped() -> None:
    one = job(
        50, op("OP_INSTANCE_QUERY_DATA", "success", end=ts(1), instances=["snf-5"], static=True)
    )
    assert bodies(one)[0]["instance"] == "snf-5"
    two = job(51, op("OP_INSTANCE_QUERY_DATA", "success", end=ts(1), instances=["snf-5", "snf-6"]))
    assert bodies(two) == []
    none = job(52, op("OP_INSTANCE_QUERY_DATA", "success", end=ts(1), instances=[]))
    assert bodies(none) == []
    # multi-alloc lists opcodes, not names
    multi = job(
        53,
        op(
            "OP_INSTANCE_MULTI_ALLOC",
            "success",
            end=ts(1),
            instances=[{"OP_ID": "OP_INSTANCE_CREATE", "instance_name": "snf-8"}],
        ),
    )
    assert bodies(multi) == []


def test_non_instance_and_non_network_ops_are_ignored() -> None:
    doc = job(
        60,
        op("OP_CLUSTER_POST_INIT", "success", end=ts(1)),
        op("OP_TEST_DELAY", "success", end=ts(2), duration=1.0, on_nodes=["node1.gnt.test"]),
        op("OP_TAGS_SET", "success", end=ts(3), kind="instance", name="snf-1", tags=["a:b"]),
        op("OP_NODE_SET_PARAMS", "success", end=ts(4), node_name="node1.gnt.test"),
        op("OP_INSTANCE_REMOVE", "success", end=ts(5), instance_name="snf-1"),
        {"input": "garbage", "status": "success"},
        "not an op",
    )
    assert bodies(doc) == [op_status("snf-1", "OP_INSTANCE_REMOVE", 60, "success", ts(5))]
    assert [ev.op_index for ev in events_from_job(doc, cluster=CLUSTER)] == [4]


def test_network_ops() -> None:
    add = op(
        "OP_NETWORK_ADD",
        "success",
        end=ts(1),
        network_name="snf-net-7",
        network="10.77.5.0/24",
        gateway="10.77.5.1",
        network6=None,
        gateway6=None,
        mac_prefix=None,
        add_reserved_ips=None,
        tags=["kind:test"],
        conflicts_check=True,
    )
    connect = op(
        "OP_NETWORK_CONNECT",
        "running",
        exec_=ts(2),
        network_name="snf-net-7",
        group_name="default",
        network_mode="bridged",
        network_link="br0",
        network_vlan="",
        conflicts_check=True,
    )
    set_params = op(
        "OP_NETWORK_SET_PARAMS",
        "queued",
        network_name="snf-net-7",
        gateway=None,
        add_reserved_ips=["10.77.5.9"],
        remove_reserved_ips=["10.77.5.10"],
    )
    no_name = op("OP_NETWORK_REMOVE", "success", end=ts(3))
    common = {
        "type": "ganeti-network-status",
        "network": "snf-net-7",
        "logmsg": None,
        "cluster": CLUSTER,
    }
    assert bodies(job(29, add, connect, set_params, no_name)) == [
        {
            **common,
            "operation": "OP_NETWORK_ADD",
            "jobId": 29,
            "status": "success",
            "event_time": ts(1),
            "subnet": "10.77.5.0/24",
            "gateway": "10.77.5.1",
            "add_reserved_ips": None,
        },
        {
            **common,
            "operation": "OP_NETWORK_CONNECT",
            "jobId": 29,
            "status": "running",
            "event_time": ts(2),
            "group_name": "default",
        },
        {
            **common,
            "operation": "OP_NETWORK_SET_PARAMS",
            "jobId": 29,
            "status": "queued",
            "event_time": ts(0, 858548),
            "gateway": None,
            "add_reserved_ips": ["10.77.5.9"],
            "remove_reserved_ips": ["10.77.5.10"],
        },
    ]
    for body in bodies(job(29, add, connect, set_params)):
        assert isinstance(parse(json.dumps(body).encode()), NetworkStatus)


def test_multi_op_job_one_message_per_op_in_order() -> None:
    doc = job(
        70,
        op(
            "OP_INSTANCE_SHUTDOWN",
            "success",
            start=ts(1),
            exec_=ts(1),
            end=ts(2),
            instance_name="snf-1",
        ),
        op("OP_INSTANCE_STARTUP", "running", start=ts(2), exec_=ts(3), instance_name="snf-1"),
        op("OP_INSTANCE_REBOOT", "queued", instance_name="snf-1"),
        start=ts(1),
    )
    events = events_from_job(doc, cluster=CLUSTER)
    assert [(e.op_index, e.status, e.body["event_time"]) for e in events] == [
        (0, "success", ts(2)),
        (1, "running", ts(3)),
        (2, "queued", ts(0, 858548)),
    ]
    assert [e.key for e in events] == [(70, 0, "success"), (70, 1, "running"), (70, 2, "queued")]
    assert [e.wants_nics for e in events] == [False, False, False]


def test_nic_opcodes_want_nics_only_on_success() -> None:
    for operation in (
        "OP_INSTANCE_CREATE",
        "OP_INSTANCE_STARTUP",
        "OP_INSTANCE_REBOOT",
        "OP_INSTANCE_SET_PARAMS",
    ):
        ok = events_from_job(
            job(1, op(operation, "success", end=ts(1), instance_name="snf-1")), cluster=CLUSTER
        )
        assert ok[0].wants_nics, operation
        err = events_from_job(
            job(1, op(operation, "error", end=ts(1), instance_name="snf-1")), cluster=CLUSTER
        )
        assert not err[0].wants_nics
    other = events_from_job(
        job(1, op("OP_INSTANCE_SHUTDOWN", "success", end=ts(1), instance_name="snf-1")),
        cluster=CLUSTER,
    )
    assert not other[0].wants_nics


def test_logmsg_is_the_last_entry_message() -> None:
    assert logmsg({"log": []}) is None
    assert logmsg({}) is None
    assert logmsg({"log": [[1, ts(0), "message", "a"], [2, ts(1), "message", "b"]]}) == "b"
    # remote-import entries carry an object: kept, as compact JSON
    assert logmsg({"log": [[1, ts(0), "remote-import", {"x": 1}]]}) == '{"x":1}'


def test_job_status_derivation() -> None:
    def s(*statuses: str) -> str:
        return job_status({"ops": [{"status": x} for x in statuses]})

    assert s("success", "success") == "success"
    assert s("queued", "queued") == "queued"
    assert s("success", "running", "queued") == "running"
    assert s("success", "waiting") == "waiting"
    assert s("success", "error", "error") == "error"
    assert s("success", "canceled", "canceled") == "canceled"
    assert s("canceling", "queued") == "canceling"
    assert s("success", "queued") == "queued"  # as Ganeti's CalcStatus
    assert s("waitlock") == "waiting"  # Ganeti <= 2.5 name
    assert job_status({"ops": []}) == "success"


def test_routing_prefix_and_keys() -> None:
    assert routing_prefix("snf-42") == "snf"
    assert routing_prefix("t1234abcd-net-5") == "t1234abcd"
    assert routing_prefix("inst1.gnt.test") == "inst1.gnt.test"
    [ev] = events_from_job(job(1, create_op("t1234abcd-5", "queued")), cluster=CLUSTER)
    assert ev.routing_key == "ganeti.t1234abcd.event.op"
    [net] = events_from_job(
        job(2, op("OP_NETWORK_REMOVE", "queued", network_name="t1234abcd-net-3")), cluster=CLUSTER
    )
    assert net.routing_key == "ganeti.t1234abcd.event.network"


def test_job_file_names_and_loading() -> None:
    assert job_id_from_filename("job-23") == 23
    for name in (
        "job-23.tmp",
        "job-23-15520-1.tmp",
        "job-23ab_9x2z.new",
        "serial",
        "version",
        "lock",
        "archive",
        "job-",
        "job-\uff12\uff13",
    ):
        assert job_id_from_filename(name) is None, name
    with pytest.raises(JobFileError):
        load_job(b"{truncated")
    with pytest.raises(JobFileError):
        load_job(b"[1, 2]")
    with pytest.raises(JobFileError):
        events_from_job({"ops": []}, cluster=CLUSTER)  # no id, none given
    with pytest.raises(JobFileError):
        events_from_job({"id": 3, "ops": None}, cluster=CLUSTER)
    assert events_from_job({"ops": []}, cluster=CLUSTER, job_id=5) == []
    assert events_from_job({"id": "17", "ops": []}, cluster=CLUSTER) == []  # old string ids


# --------------------------------------------------------------------------- pure: NICs


SANDBOX_INSTANCE = {
    "name": "snf-42",
    "admin_state": "up",
    "nic.ips": [None, "10.77.5.2"],
    "nic.macs": ["aa:00:00:8e:cd:a0", "aa:00:00:2b:26:01"],
    "nic.modes": ["bridged", "bridged"],
    "nic.names": [None, "snf-nic-9"],
    "nic.links": ["br0", "br0"],
    "nic.networks": [None, "6c4d…"],
    "nic.networks.names": [None, "snf-net-1"],
    "tags": [
        "env:test",
        "synnefo:network:0:unprotected",
        "synnefo:network:snf-nic-9:protected",
        "synnefo:network:bad",
    ],
}


def test_nics_from_instance() -> None:
    nics = nics_from_instance(SANDBOX_INSTANCE)
    assert nics == [
        {
            "network": "",
            "mac": "aa:00:00:8e:cd:a0",
            "ip": None,
            "link": "br0",
            "mode": "bridged",
            "firewall": "unprotected",
        },
        {
            "network": "snf-net-1",
            "mac": "aa:00:00:2b:26:01",
            "ip": "10.77.5.2",
            "link": "br0",
            "mode": "bridged",
            "name": "snf-nic-9",
            "firewall": "protected",
        },
    ]
    body = {**op_status("snf-42", "OP_INSTANCE_CREATE", 1, "success", ts(1)), "instance_nics": nics}
    msg = parse(json.dumps(body).encode())
    assert isinstance(msg, OpStatus) and msg.nic_list is not None and len(msg.nic_list) == 2
    assert nics_from_instance({"nic.macs": None}) == []


def test_firewall_tags_first_wins_and_malformed_skipped() -> None:
    tags = [
        "synnefo:network:1:limited",
        "synnefo:network:1:protected",
        "synnefo:network:x",
        "synnefo:network::protected",
        "other:1:2:3",
        5,
    ]
    assert firewall_by_nic(tags, [None, None]) == {1: "limited"}


# --------------------------------------------------------------------------- pure: dedupe


def _ev(job_id: int, index: int, status: str) -> Any:
    [e] = events_from_job(
        job(
            job_id,
            *[op("OP_INSTANCE_STARTUP", "queued", instance_name="x-1") for _ in range(index)],
            op(
                "OP_INSTANCE_STARTUP",
                status,
                start=ts(1),
                exec_=ts(1),
                end=ts(1),
                instance_name="snf-1",
            ),
        ),
        cluster=CLUSTER,
    )[index:]
    return e


def test_dedupe_once_per_job_op_status() -> None:
    d = Dedupe()
    a, b = _ev(1, 0, "queued"), _ev(1, 0, "running")
    assert d.fresh([a, b]) == [a, b]
    d.mark(1, [(0, "queued")], finished=False)
    assert d.fresh([a, b]) == [b]
    d.mark(1, [(0, "running")], finished=False)
    assert d.fresh([a, b]) == []
    d.forget(1)
    assert d.fresh([a]) == [a]


def test_dedupe_memory_is_bounded() -> None:
    now = [0.0]
    d = Dedupe(max_jobs=3, ttl=100, clock=lambda: now[0])
    for j in range(1, 6):
        d.mark(j, [(0, "queued")], finished=False)
    assert len(d) == 3 and 1 not in d and 2 not in d and 5 in d  # least recently changed out
    d.mark(3, [(0, "success")], finished=True)
    now[0] = 99
    d.fresh([])
    assert 3 in d
    now[0] = 100.5
    d.fresh([])
    assert 3 not in d and 4 in d and 5 in d  # finished jobs expire, running ones stay
    for j in range(100, 200):  # the expiry list stays bounded too
        d.mark(j, [(0, "success")], finished=True)
        d.forget(j)
    assert len(d._expiry) <= 2 * d.max_jobs + 1


# --------------------------------------------------------------------------- pure: inotify, master


def test_parse_inotify_events() -> None:
    name = b"job-12\0\0\0\0\0\0\0\0\0\0"
    raw = struct.pack("iIII", 1, inotify.IN_MOVED_TO, 7, len(name)) + name
    raw += struct.pack("iIII", 1, inotify.IN_Q_OVERFLOW, 0, 0)
    events = inotify.parse_events(raw)
    assert events[0] == inotify.InotifyEvent(1, inotify.IN_MOVED_TO, 7, "job-12")
    assert events[1].overflow and events[1].name == ""
    assert inotify.InotifyEvent(1, inotify.IN_IGNORED, 0, "").watch_gone


def test_master_check(tmp_path: Path) -> None:
    check = MasterCheck(tmp_path, local_names("node1.gnt.test"))
    assert not check.is_master()  # no ssconf: not master (and a warning)
    (tmp_path / "ssconf_master_node").write_text("node2.gnt.test\n")
    assert not check.is_master()
    assert check.master == "node2.gnt.test"
    tmp = tmp_path / "ssconf_master_node.tmp"
    tmp.write_text("NODE1.gnt.test\n")
    os.rename(tmp, tmp_path / "ssconf_master_node")  # Ganeti replaces ssconf files by rename
    assert check.is_master()
    (tmp_path / "ssconf_cluster_name").write_text("cluster.gnt.test\n")
    assert read_ssconf(tmp_path, "cluster_name") == "cluster.gnt.test"
    assert read_ssconf(tmp_path, "nope") is None
    assert local_names(None)  # fqdn and host name


# --------------------------------------------------------------------------- in-process service


class ListSink:
    """The publisher's interface, recording what would be sent. ``room`` can be closed."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.room = True
        self._room = asyncio.Event()
        self._room.set()

    def has_room(self, n: int = 1) -> bool:
        return self.room

    def put(self, messages: Sequence[Outgoing]) -> None:
        for m in messages:
            parse(m.body)
        self.sent.extend(messages)

    async def wait_room(self) -> None:
        await self._room.wait()

    def close_room(self) -> None:
        self.room = False
        self._room.clear()

    def open_room(self) -> None:
        self.room = True
        self._room.set()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(m.body) for m in self.sent]

    def keys(self) -> list[tuple[int, str, str]]:
        return [(b["jobId"], b.get("instance") or b["network"], b["status"]) for b in self.bodies()]


class FakeNics:
    def __init__(self, nics: list[dict[str, Any]] | None) -> None:
        self.nics = nics
        self.asked: list[str] = []

    async def read(self, instance: str) -> list[dict[str, Any]] | None:
        self.asked.append(instance)
        return copy.deepcopy(self.nics)

    async def aclose(self) -> None:
        pass


def write_job(queue: Path, doc: dict[str, Any], *, how: str = "rename") -> None:
    """As Ganeti 3 does: write a temp file, rename it onto job-<id>."""
    final = queue / f"job-{doc['id']}"
    if how == "rename":
        tmp = queue / f"job-{doc['id']}-{os.getpid()}-1.tmp"
        tmp.write_text(json.dumps(doc))
        os.rename(tmp, final)
    else:
        final.write_text(json.dumps(doc))


@contextlib.asynccontextmanager
async def eventd_in_process(
    queue: Path,
    sink: ListSink,
    *,
    nics: FakeNics | None = None,
    master: MasterCheck | None = None,
    master_poll: float = 10.0,
) -> AsyncIterator[EventService]:
    stop = asyncio.Event()
    ready: asyncio.Future[EventService] = asyncio.get_running_loop().create_future()
    opts = EventdOptions(
        queue_dir=queue, cluster=CLUSTER, nics=nics, master=master, master_poll=master_poll
    )
    task = asyncio.create_task(run_eventd(opts, sink=sink, stop=stop, on_ready=ready.set_result))
    started: set[asyncio.Future[Any]] = {task, ready}
    done, _ = await asyncio.wait(started, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()
    service = await ready
    try:
        yield service
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 10) == 0


async def until(pred: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    return await async_wait_until(_coro(pred), timeout=timeout, interval=0.01, what=what)


def _coro(pred: Callable[[], Any]) -> Callable[[], Any]:
    async def f() -> Any:
        return pred()

    return f


MARKER = "snf-marker"


async def marker_job(queue: Path, sink: ListSink, job_id: int) -> None:
    """Write job ``job_id`` after changes that must publish nothing and wait for its message.

    inotify reports changes in order and the worker handles jobs in the order they were
    noticed, so once the marker is published every earlier change has been read: asserting
    "nothing else was published" afterwards cannot pass merely because it was too early."""
    write_job(queue, job(job_id, op("OP_INSTANCE_STARTUP", "queued", instance_name=MARKER)))
    key = (job_id, MARKER, "queued")
    await until(lambda: sink.keys().count(key) > 0, f"marker job {job_id}")


async def test_watcher_publishes_each_status_once(tmp_path: Path) -> None:
    sink = ListSink()
    async with eventd_in_process(tmp_path, sink):
        name = "t1234abcd-5"
        queued = job(1, create_op(name, "queued"))
        write_job(tmp_path, queued)
        await until(lambda: len(sink.sent) == 1, "queued")
        # Ganeti rewrites the file with the same statuses (log lines): nothing new
        for _ in range(3):
            write_job(tmp_path, queued)
        # other files in the directory are not jobs
        (tmp_path / "job-1.new").write_text("{garbage")
        os.rename(tmp_path / "job-1.new", tmp_path / "job-1abcdefg.new")
        (tmp_path / "job-2-1-1.tmp").write_text(json.dumps(job(2, create_op("t1-9", "queued"))))
        (tmp_path / "serial").write_text("1\n")
        running = job(
            1,
            create_op(
                name, "running", start=ts(1), exec_=ts(2), log=["* creating instance disks..."]
            ),
            start=ts(1),
        )
        write_job(tmp_path, running)
        await until(lambda: len(sink.sent) == 2, "running")
        for i in range(3):
            running["ops"][0]["log"].append([2 + i, ts(2), "message", f"step {i}"])
            write_job(tmp_path, running)
        success = copy.deepcopy(running)
        success["ops"][0].update(status="success", end_timestamp=ts(3))
        success["end_timestamp"] = ts(3, 1)
        write_job(tmp_path, success)
        await until(lambda: len(sink.sent) == 3, "success")
        write_job(tmp_path, success)
        write_job(tmp_path, success, how="in place")  # IN_CLOSE_WRITE is watched too
        await marker_job(tmp_path, sink, 3)
    assert sink.keys() == [
        (1, name, "queued"),
        (1, name, "running"),
        (1, name, "success"),
        (3, MARKER, "queued"),
    ]
    assert [m.routing_key for m in sink.sent[:3]] == ["ganeti.t1234abcd.event.op"] * 3
    assert sink.bodies()[2] == op_status(name, "OP_INSTANCE_CREATE", 1, "success", ts(3), "step 2")


async def test_success_of_nic_opcodes_carries_nics_from_the_cluster(tmp_path: Path) -> None:
    sink = ListSink()
    nics = FakeNics(nics_from_instance(SANDBOX_INSTANCE))
    async with eventd_in_process(tmp_path, sink, nics=nics):
        write_job(tmp_path, job(5, create_op("snf-42", "running", exec_=ts(1))))
        await until(lambda: len(sink.sent) == 1, "running")
        write_job(tmp_path, job(5, create_op("snf-42", "success", exec_=ts(1), end=ts(2))))
        write_job(
            tmp_path,
            job(6, op("OP_INSTANCE_SHUTDOWN", "success", end=ts(3), instance_name="snf-42")),
        )
        await until(lambda: len(sink.sent) == 3, "success")
    bodies_ = sink.bodies()
    assert "instance_nics" not in bodies_[0]
    assert bodies_[1]["instance_nics"] == nics_from_instance(SANDBOX_INSTANCE)
    assert "instance_nics" not in bodies_[2]
    assert nics.asked == ["snf-42"]


async def test_nics_unavailable_publishes_without_them(tmp_path: Path) -> None:
    sink = ListSink()
    async with eventd_in_process(tmp_path, sink, nics=FakeNics(None)):
        write_job(tmp_path, job(5, create_op("snf-42", "success", exec_=ts(1), end=ts(2))))
        await until(lambda: len(sink.sent) == 1, "success")
    assert "instance_nics" not in sink.bodies()[0]


async def test_catch_up_at_start_and_again_after_restart(tmp_path: Path) -> None:
    write_job(
        tmp_path, job(7, op("OP_INSTANCE_STARTUP", "success", end=ts(1), instance_name="snf-1"))
    )
    write_job(
        tmp_path,
        job(8, op("OP_NETWORK_ADD", "queued", network_name="snf-net-2", network="10.77.6.0/24")),
    )
    (tmp_path / "job-9").write_text("{not json")  # skipped with a warning, no crash
    (tmp_path / "archive" / "0").mkdir(parents=True)
    write_job(
        tmp_path / "archive" / "0",
        job(3, op("OP_INSTANCE_STARTUP", "success", end=ts(1), instance_name="snf-1")),
    )
    sink = ListSink()
    async with eventd_in_process(tmp_path, sink) as service:
        await until(lambda: len(sink.sent) == 2, "catch-up")
        await service.settle()
    assert sorted(sink.keys()) == [(7, "snf-1", "success"), (8, "snf-net-2", "queued")]
    again = ListSink()
    async with eventd_in_process(tmp_path, again):
        await until(lambda: len(again.sent) == 2, "catch-up after restart")
    assert sorted(again.keys()) == sorted(sink.keys())  # duplicates: fine for the consumer


async def test_full_publisher_defers_jobs_and_publishes_latest_state(tmp_path: Path) -> None:
    sink = ListSink()
    async with eventd_in_process(tmp_path, sink) as service:
        sink.close_room()
        write_job(tmp_path, job(11, op("OP_INSTANCE_STARTUP", "queued", instance_name="snf-1")))
        await until(lambda: service.backlog == 1, "deferred")
        write_job(
            tmp_path,
            job(11, op("OP_INSTANCE_STARTUP", "running", exec_=ts(1), instance_name="snf-1")),
        )
        write_job(tmp_path, job(12, op("OP_INSTANCE_REBOOT", "queued", instance_name="snf-2")))
        await until(lambda: service.backlog == 2, "both deferred")
        assert sink.sent == []
        # archived while deferred: read from archive/
        (tmp_path / "archive" / "0").mkdir(parents=True)
        write_job(
            tmp_path, job(12, op("OP_INSTANCE_REBOOT", "success", end=ts(2), instance_name="snf-2"))
        )
        os.rename(tmp_path / "job-12", tmp_path / "archive" / "0" / "job-12")
        sink.open_room()
        await until(lambda: len(sink.sent) == 2, "published after room")
        await marker_job(tmp_path, sink, 13)
    assert sorted(sink.keys()) == [
        (11, "snf-1", "running"),
        (12, "snf-2", "success"),
        (13, MARKER, "queued"),
    ]


async def test_only_the_master_publishes(tmp_path: Path) -> None:
    queue, data = tmp_path / "queue", tmp_path / "data"
    queue.mkdir()
    data.mkdir()
    (data / "ssconf_master_node").write_text("node2.gnt.test\n")
    write_job(
        queue, job(20, op("OP_INSTANCE_STARTUP", "success", end=ts(1), instance_name="snf-1"))
    )
    sink = ListSink()
    check = MasterCheck(data, ["node1.gnt.test"])
    async with eventd_in_process(queue, sink, master=check, master_poll=0.05) as service:
        await until(lambda: service.handled >= 1, "job 20 (catch-up) looked at")
        write_job(queue, job(21, op("OP_INSTANCE_STARTUP", "queued", instance_name="snf-1")))
        await until(lambda: service.handled >= 2, "job 21 looked at")
        assert sink.sent == []
        # master failover to this node: the queue is read again
        tmp = data / "ssconf_master_node.new"
        tmp.write_text("node1.gnt.test\n")
        os.rename(tmp, data / "ssconf_master_node")
        await until(lambda: len(sink.sent) == 2, "published once master")
    assert sorted(sink.keys()) == [(20, "snf-1", "success"), (21, "snf-1", "queued")]


async def test_queue_dir_removed_is_an_error(tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    queue.mkdir()
    opts = EventdOptions(queue_dir=queue, cluster=CLUSTER)
    ready: asyncio.Future[EventService] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_eventd(opts, sink=ListSink(), on_ready=ready.set_result))
    # once ready it is watching, so the removal is noticed
    started: set[asyncio.Future[Any]] = {task, ready}
    await asyncio.wait(started, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert ready.done(), task
    queue.rmdir()
    from dispatcher.eventd.service import EventdFailed

    with pytest.raises(EventdFailed, match="is gone"):
        await asyncio.wait_for(task, 10)


# --------------------------------------------------------------------------- the real broker


@pytest.fixture(scope="module")
def amqp_url(service_env: dict[str, str]) -> str:
    return service_env["DISPATCHER_AMQP_URL"]


@contextlib.asynccontextmanager
async def bound_queue(amqp_url: str, *keys: str) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A private queue bound to the ``ganeti`` exchange with ``keys``."""
    conn = await aio_pika.connect(amqp_url, timeout=10)
    try:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            "ganeti", aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in keys:
            await queue.bind(exchange, routing_key=key)
        yield queue
    finally:
        await conn.close()


async def collect(
    queue: aio_pika.abc.AbstractQueue, n: int, timeout: float = 30
) -> list[tuple[str, dict[str, Any]]]:
    """The first ``n`` messages on ``queue`` (each checked: persistent, a valid message)."""
    return await _take(queue, lambda got, _msg: len(got) >= n, timeout)


async def collect_until(
    queue: aio_pika.abc.AbstractQueue,
    last: Callable[[dict[str, Any]], bool],
    timeout: float = 30,
) -> list[tuple[str, dict[str, Any]]]:
    """Messages on ``queue`` up to and including the first whose body is ``last``: for a
    producer that sends that message after everything the test looks at."""
    return await _take(queue, lambda got, _msg: bool(got) and last(got[-1][1]), timeout)


async def published_before_marker(
    amqp_url: str, queue: aio_pika.abc.AbstractQueue, routing_key: str, timeout: float = 30
) -> list[tuple[str, dict[str, Any]]]:
    """Every message on ``queue`` up to a marker the test publishes now with ``routing_key``.

    Only for producers that are done: their messages were confirmed (so the broker holds
    them in the queue) before the marker is sent, hence they all come before it and
    "nothing else arrived" is checked without waiting for a quiet spell."""
    token = uuid.uuid4().hex
    conn = await aio_pika.connect(amqp_url, timeout=10)
    async with conn:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            "ganeti", aio_pika.ExchangeType.TOPIC, durable=True
        )
        await exchange.publish(aio_pika.Message(b"marker", message_id=token), routing_key)
    return await _take(queue, lambda _got, msg: msg.message_id == token, timeout, token)


async def _take(
    queue: aio_pika.abc.AbstractQueue,
    enough: Callable[[list[tuple[str, dict[str, Any]]], aio_pika.abc.AbstractMessage], bool],
    timeout: float,
    marker: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        msg = await queue.get(fail=False)
        if msg is None:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {len(got)} messages: {got}")
            await asyncio.sleep(0.02)  # poll interval
            continue
        await msg.ack()
        if marker is None or msg.message_id != marker:
            assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert msg.content_type == "application/json"
            parse(msg.body)
            got.append((msg.routing_key or "", json.loads(msg.body)))
        if enough(got, msg):
            return got


def _msgs(prefix: str, n: int) -> list[Outgoing]:
    return [
        Outgoing(
            f"ganeti.{prefix}.event.op",
            json.dumps(
                op_status(f"{prefix}-{i}", "OP_INSTANCE_STARTUP", i, "success", ts(i))
            ).encode(),
            "ganeti-op-status",
        )
        for i in range(n)
    ]


async def test_publisher_persistent_confirmed_and_fails_over(amqp_url: str) -> None:
    prefix = unique_prefix()
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    pub = Publisher([dead, amqp_url], capacity=100)
    async with bound_queue(amqp_url, f"ganeti.{prefix}.event.op") as queue:
        pub.start()
        pub.put(_msgs(prefix, 20))
        assert await pub.drain(30)
        got = await published_before_marker(amqp_url, queue, f"ganeti.{prefix}.event.op")
    assert await pub.close(1) == 0
    assert sorted(b["jobId"] for _, b in got) == list(range(20))
    assert pub.confirmed == 20


async def test_publisher_close_is_not_swallowed_by_the_client_library() -> None:
    """aiormq turns a cancelled connect into a connection error: close() must still stop."""

    connecting = asyncio.Event()

    async def connect(*_: Any, **__: Any) -> Any:
        connecting.set()
        try:
            await asyncio.sleep(30)  # a connect that hangs until cancelled
        except asyncio.CancelledError:
            raise aio_pika.exceptions.AMQPConnectionError("cancelled") from None

    pub = Publisher(["amqp://unused/"], connect=connect)
    pub.start()
    pub.put(_msgs("t0", 1))
    await asyncio.wait_for(connecting.wait(), 10)  # close() meets the connect in progress
    assert await asyncio.wait_for(pub.close(0), 3) == 1  # the one unconfirmed message
    assert pub.task is not None and pub.task.done()


class Proxy:
    """A TCP forwarder to the broker that the test can cut and restore: a broker outage
    without disturbing other users of the shared RabbitMQ."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, "127.0.0.1", self.port, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update({writer, up_w})

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.transport.abort()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        self._writers.difference_update({writer, up_w})


async def test_publisher_resends_after_broker_outage(amqp_url: str) -> None:
    prefix = unique_prefix()
    proxy = Proxy(5672)
    await proxy.start()
    refused = 0

    async def connect(*args: Any, **kwargs: Any) -> Any:
        nonlocal refused
        try:
            return await aio_pika.connect(*args, **kwargs)
        except Exception:
            refused += 1
            raise

    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    pub = Publisher([url], capacity=1000, max_delay=0.5, connect=connect)
    messages = _msgs(prefix, 300)
    try:
        async with bound_queue(amqp_url, f"ganeti.{prefix}.event.op") as queue:
            pub.start()
            pub.put(messages[:100])
            assert await pub.drain(30)
            pub.put(messages[100:200])  # some of these are in flight when the broker goes
            await proxy.stop()
            pub.put(messages[200:])  # published while it is down
            await async_wait_until(_coro(lambda: not pub.connected), 10, what="disconnect")
            assert pub.pending > 0
            # the outage lasts until reconnecting has failed twice (the retry loop went round)
            await async_wait_until(_coro(lambda: refused >= 2), 30, what="two refused connects")
            await proxy.start()
            assert await pub.drain(30), f"{pub.pending} messages not confirmed"
            assert pub.reconnects >= 1
            got = await published_before_marker(amqp_url, queue, f"ganeti.{prefix}.event.op")
    finally:
        await pub.close(0)
        await proxy.stop()
    ids = [b["jobId"] for _, b in got]
    assert set(ids) == set(range(300)), "messages lost"  # none lost; duplicates allowed


RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


class PrivateBroker:
    """A second RabbitMQ node (own name, ports and data directory) that this test may stop
    and start: a real broker restart without disturbing the shared one. It uses the epmd the
    shared broker already runs, and is stopped by pid."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"evtest{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self) -> None:
        (self.base / "env.conf").touch()
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.base)], check=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": "/var/lib/rabbitmq",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "env.conf"),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "beam.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
        }
        with open(self.base / "server.log", "ab") as out:
            self.proc = subprocess.Popen(
                [
                    "setpriv",
                    "--reuid=rabbitmq",
                    "--regid=rabbitmq",
                    "--init-groups",
                    str(RABBITMQ_SERVER),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while not _port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.base / "server.log").read_text(errors="replace")[-2000:]
                self.stop()
                pytest.skip(f"a private RabbitMQ node does not start here: {log}")
            time.sleep(0.2)

    def stop(self) -> None:
        pid_file = self.base / "beam.pid"
        pids = [self.proc.pid] if self.proc and self.proc.poll() is None else []
        if pid_file.exists() and pid_file.read_text().strip().isdigit():
            pids.append(int(pid_file.read_text().strip()))
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            if self.proc is not None:
                self.proc.poll()  # reap the wrapper
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    return False


@pytest.fixture
def private_broker(service_env: dict[str, str]) -> Iterator[PrivateBroker]:
    if os.geteuid() != 0 or not RABBITMQ_SERVER.exists() or not _port_open(4369):
        pytest.skip("needs root, rabbitmq-server and the shared broker's epmd")
    with tempfile.TemporaryDirectory(prefix="eventd-rmq-") as d:
        os.chmod(d, 0o755)
        broker = PrivateBroker(Path(d))
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


@pytest.mark.slow
async def test_publisher_survives_a_real_broker_restart(private_broker: PrivateBroker) -> None:
    """Messages confirmed before the restart are kept by the broker; messages put while it
    is down are sent after it is back: none lost."""
    prefix = unique_prefix()
    url = private_broker.url
    conn = await aio_pika.connect(url, timeout=10)
    async with conn:
        ch = await conn.channel()
        ex = await ch.declare_exchange("ganeti", aio_pika.ExchangeType.TOPIC, durable=True)
        q = await ch.declare_queue(f"{prefix}-restart", durable=True)
        await q.bind(ex, routing_key=f"ganeti.{prefix}.event.op")
    pub = Publisher([url], capacity=1000, max_delay=0.5)
    pub.start()
    messages = _msgs(prefix, 100)
    try:
        pub.put(messages[:50])
        assert await pub.drain(30)
        await asyncio.to_thread(private_broker.stop)
        pub.put(messages[50:])
        await async_wait_until(_coro(lambda: not pub.connected), 30, what="disconnect")
        await asyncio.to_thread(private_broker.start)
        assert await pub.drain(60), f"{pub.pending} messages not confirmed"
    finally:
        await pub.close(0)
    conn = await aio_pika.connect(url, timeout=10)
    async with conn:
        ch = await conn.channel()
        q = await ch.declare_queue(f"{prefix}-restart", durable=True)
        got = await published_before_marker(url, q, f"ganeti.{prefix}.event.op")
    assert {b["jobId"] for _, b in got} == set(range(100))


# --------------------------------------------------------------------------- dispatcher eventd


def _eventd_env(amqp_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCHER_")}
    env.update(
        DISPATCHER_AMQP_URL=amqp_url,
        DISPATCHER_HTTP_LISTEN="",
        DISPATCHER_LOG_LEVEL="DEBUG",
        DISPATCHER_EVENTD_NIC_SOURCE="none",
        **extra,
    )
    return env


@pytest.fixture
def ganeti_dirs() -> Iterator[tuple[Path, Path]]:
    with tempfile.TemporaryDirectory() as d:
        queue, data = Path(d) / "queue", Path(d) / "data"
        queue.mkdir()
        data.mkdir()
        (data / "ssconf_cluster_name").write_text(CLUSTER + "\n")
        (data / "ssconf_master_node").write_text("node1.gnt.test\n")
        yield queue, data


async def test_eventd_command_against_the_broker(
    amqp_url: str, ganeti_dirs: tuple[Path, Path]
) -> None:
    queue_dir, data_dir = ganeti_dirs
    prefix = unique_prefix()
    name, net = f"{prefix}-5", f"{prefix}-net-3"
    write_job(queue_dir, job(100, create_op(name, "queued")))  # for the catch-up
    args = [
        PYTHON,
        "-m",
        "dispatcher",
        "eventd",
        "--queue-dir",
        str(queue_dir),
        "--data-dir",
        str(data_dir),
        "--node-name",
        "node1.gnt.test",
    ]
    keys = (f"ganeti.{prefix}.event.op", f"ganeti.{prefix}.event.network")
    async with bound_queue(amqp_url, *keys) as queue:
        proc = subprocess.Popen(
            args,
            env=_eventd_env(amqp_url),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            got = await collect(queue, 1)
            assert got[0][1] == op_status(name, "OP_INSTANCE_CREATE", 100, "queued", ts(0, 858548))
            running = job(100, create_op(name, "running", start=ts(1), exec_=ts(2)), start=ts(1))
            write_job(queue_dir, running)
            got += await collect(queue, 1)
            (queue_dir / "job-100.new").write_text("{")  # ignored
            write_job(queue_dir, running)  # rewritten, same status: nothing
            done = job(
                100,
                create_op(name, "success", start=ts(1), exec_=ts(2), end=ts(3)),
                start=ts(1),
                end=ts(3),
            )
            write_job(queue_dir, done)
            write_job(
                queue_dir,
                job(
                    101,
                    op(
                        "OP_NETWORK_CONNECT",
                        "success",
                        end=ts(4),
                        network_name=net,
                        group_name="default",
                    ),
                ),
            )
            # the rewrite and the stray file above publish nothing: a later job must come
            # out right after the two messages that are due (jobs are handled in order)
            marker = job(102, op("OP_INSTANCE_STARTUP", "success", end=ts(5), instance_name=name))
            write_job(queue_dir, marker)
            got += await collect_until(queue, lambda b: b["jobId"] == 102)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()[-3000:]
        assert [(k, b["jobId"], b["status"]) for k, b in got] == [
            (keys[0], 100, "queued"),
            (keys[0], 100, "running"),
            (keys[0], 100, "success"),
            (keys[1], 101, "success"),
            (keys[0], 102, "success"),
        ]
        assert got[3][1] == {
            "type": "ganeti-network-status",
            "network": net,
            "operation": "OP_NETWORK_CONNECT",
            "jobId": 101,
            "status": "success",
            "logmsg": None,
            "event_time": ts(4),
            "cluster": CLUSTER,
            "group_name": "default",
        }
        # restart with --once: the catch-up publishes the current state again
        once = subprocess.run(
            [*args, "--once"],
            env=_eventd_env(amqp_url),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert once.returncode == 0, once.stderr
        # --once exits after the broker confirmed its messages: a marker sent now is behind
        # all of them
        again = await published_before_marker(amqp_url, queue, keys[0])
        assert sorted((b["jobId"], b["status"]) for _, b in again) == [
            (100, "success"),
            (101, "success"),
            (102, "success"),
        ]


async def test_eventd_not_master_publishes_nothing(
    amqp_url: str, ganeti_dirs: tuple[Path, Path]
) -> None:
    queue_dir, data_dir = ganeti_dirs
    prefix = unique_prefix()
    write_job(queue_dir, job(1, create_op(f"{prefix}-1", "queued")))
    async with bound_queue(amqp_url, f"ganeti.{prefix}.event.op") as queue:
        once = subprocess.run(
            [
                PYTHON,
                "-m",
                "dispatcher",
                "eventd",
                "--queue-dir",
                str(queue_dir),
                "--data-dir",
                str(data_dir),
                "--node-name",
                "node2.gnt.test",
                "--once",
            ],
            env=_eventd_env(amqp_url),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert once.returncode == 0, once.stderr
        assert "not the master" in once.stderr
        # had it published anything, --once would have waited for the confirms before exiting
        key = f"ganeti.{prefix}.event.op"
        assert await published_before_marker(amqp_url, queue, key) == []


def test_eventd_usage_errors(ganeti_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    queue_dir, _ = ganeti_dirs
    env = _eventd_env("amqp://guest:guest@127.0.0.1:1/")

    def eventd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-m", "dispatcher", "eventd", *args, "--once"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    run = eventd("--queue-dir", str(queue_dir), "--data-dir", str(tmp_path))
    assert run.returncode == 2 and "cluster name unknown" in run.stderr
    run = eventd("--queue-dir", str(tmp_path / "nope"), "--cluster", "c")
    assert run.returncode == 1 and "cannot watch the queue directory" in run.stderr
    quick = ("--queue-dir", str(queue_dir), "--cluster", "c", "--no-master-check")
    run = eventd(*quick, "--timeout", "2")
    assert run.returncode == 0  # an empty queue needs no broker
    write_job(queue_dir, job(1, create_op("snf-1", "queued")))
    run = eventd(*quick, "--timeout", "2")
    assert run.returncode == 1 and "not confirmed by the broker" in run.stderr
