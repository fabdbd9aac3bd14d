"""A Ganeti job file → the messages eventd publishes for it. Pure: no I/O, no clock.

Ganeti 3 keeps one JSON document per job in ``queue/job-<id>`` and replaces it by an atomic
rename on every change (reference: ganeti-sandbox.md, "Job queue on disk"). There is no
top-level status; each op has ``input`` (the opcode, with ``OP_ID``), ``status``, ``log``
and its ``start``/``exec``/``end_timestamp``; the job has ``id``, ``received_timestamp`` and
``end_timestamp``. Timestamps are ``[seconds, microseconds]`` or null.

One message per opcode, showing that opcode's current status (synnefo-dispatcher.md §a):

- ``OP_INSTANCE_*`` → ``ganeti-op-status`` for ``input.instance_name``, or for the single
  name in ``input.instances``; anything else (no name, several instances) is skipped.
- ``OP_NETWORK_*`` → ``ganeti-network-status`` for ``input.network_name``, with ``subnet``
  (from ``input.network``), ``gateway``, ``group_name``, ``add_reserved_ips`` and
  ``remove_reserved_ips`` when the input has them.
- every other opcode is ignored.

``event_time`` follows the op status (``get_time_from_status``): queued → the job's
``received_timestamp``; waiting/canceling → the op's ``start_timestamp``; running → its
``exec_timestamp``; finalized → its ``end_timestamp``; when that is missing, the job's
``end_timestamp``, then the caller's ``fallback_time`` (eventd passes the file's mtime, the
moment Ganeti wrote that status). An op with no usable time at all is skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "FINALIZED",
    "JOB_FILE_RE",
    "NIC_OPCODES",
    "JobEvent",
    "JobFileError",
    "event_time",
    "events_from_job",
    "job_id_from_filename",
    "job_status",
    "load_job",
    "logmsg",
    "routing_prefix",
]

OP_STATUS: Final = "ganeti-op-status"
NETWORK_STATUS: Final = "ganeti-network-status"

JOB_FILE_RE: Final = re.compile(r"job-([0-9]+)\Z")
STATUSES: Final = frozenset(
    {"queued", "waiting", "canceling", "running", "canceled", "success", "error"}
)
FINALIZED: Final = frozenset({"canceled", "success", "error"})
# Ganeti <= 2.5 called "waiting" "waitlock"
_ALIASES: Final = {"waitlock": "waiting"}
# A successful one of these carries the instance's NICs, read from the cluster.
NIC_OPCODES: Final = frozenset(
    {"OP_INSTANCE_CREATE", "OP_INSTANCE_STARTUP", "OP_INSTANCE_REBOOT", "OP_INSTANCE_SET_PARAMS"}
)
# input key -> message key, for ganeti-network-status (reference §c.4, V012 layout)
_NETWORK_FIELDS: Final = (
    ("network", "subnet", str),
    ("gateway", "gateway", str),
    ("group_name", "group_name", str),
    ("add_reserved_ips", "add_reserved_ips", list),
    ("remove_reserved_ips", "remove_reserved_ips", list),
)
_MAX_NAME: Final = 255


class JobFileError(ValueError):
    """The file is not a Ganeti job (not JSON, not an object, no usable id or op list)."""


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One message to publish: ``body`` is the CONTRACT §4 object (without NICs yet)."""

    type: str
    name: str  # the instance or network the message is about
    job_id: int
    op_index: int
    status: str
    body: dict[str, Any] = field(compare=False)

    @property
    def key(self) -> tuple[int, int, str]:
        """What deduplication counts: a given op status is published once."""
        return (self.job_id, self.op_index, self.status)

    @property
    def wants_nics(self) -> bool:
        """A success that changed (or may have changed) the instance's NICs."""
        return (
            self.type == OP_STATUS
            and self.status == "success"
            and self.body.get("operation") in NIC_OPCODES
        )

    @property
    def routing_key(self) -> str:
        stream = "op" if self.type == OP_STATUS else "network"
        return f"ganeti.{routing_prefix(self.name)}.event.{stream}"


def routing_prefix(name: str) -> str:
    """The deployment a name belongs to: the part before the first ``-`` (``snf-42`` → ``snf``).

    Deployments that share a broker are told apart only by this; a name of another
    deployment goes to a routing key nobody of ours is bound to (reference §a).
    """
    return name.split("-", 1)[0]


def job_id_from_filename(name: str) -> int | None:
    """``job-42`` → 42; None for anything else (``job-42.tmp``, ``job-42abc.new``, ``serial``)."""
    match = JOB_FILE_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def load_job(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise JobFileError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise JobFileError(f"not a JSON object but {type(doc).__name__}")
    return doc


def _timestamp(value: Any) -> list[int] | None:
    """A valid ``[seconds, microseconds]`` or None."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    sec, usec = value
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (sec, usec)):
        return None
    if sec < 0 or not 0 <= usec <= 999_999:
        return None
    return [sec, usec]


def op_status(op: Mapping[str, Any]) -> str | None:
    status = op.get("status")
    if not isinstance(status, str):
        return None
    status = _ALIASES.get(status, status)
    return status if status in STATUSES else None


def event_time(
    op: Mapping[str, Any], job: Mapping[str, Any], fallback_time: Sequence[int] | None = None
) -> list[int] | None:
    """The table of reference §a, then the job's end time, then ``fallback_time``."""
    status = op_status(op)
    if status == "queued":
        primary = job.get("received_timestamp")
    elif status in ("waiting", "canceling"):
        primary = op.get("start_timestamp")
    elif status == "running":
        primary = op.get("exec_timestamp")
    elif status in FINALIZED:
        primary = op.get("end_timestamp")
    else:
        primary = None
    return (
        _timestamp(primary)
        or _timestamp(job.get("end_timestamp"))
        or (_timestamp(list(fallback_time)) if fallback_time is not None else None)
    )


def logmsg(op: Mapping[str, Any]) -> str | None:
    """The message of the op's last log entry (``[serial, [s, us], type, message]``)."""
    log = op.get("log")
    if not isinstance(log, list) or not log:
        return None
    last = log[-1]
    if not isinstance(last, list | tuple) or not last:
        return None
    message = last[-1]
    if message is None or isinstance(message, str):
        return message
    # e.g. remote-import entries carry an object; keep it readable rather than drop it
    return json.dumps(message, separators=(",", ":"), sort_keys=True, default=str)


def job_status(job: Mapping[str, Any]) -> str:
    """The job's status as Ganeti (and so RAPI) derives it from its ops (``CalcStatus``).

    canceling, error or canceled on an op decide at once (in op order); otherwise all ops
    successful → success; otherwise the last op found waiting or running, else queued.
    """
    ops = job.get("ops")
    status = "queued"
    all_success = True
    for op in ops if isinstance(ops, list) else []:
        s = op_status(op) if isinstance(op, Mapping) else None
        if s == "success":
            continue
        all_success = False
        if s in ("waiting", "running"):
            status = s
        elif s in ("canceling", "error", "canceled"):
            status = s
            break
    return "success" if all_success else status


def _job_id(job: Mapping[str, Any], default: int | None) -> int:
    value = job.get("id", default)
    if isinstance(value, str) and value.isascii() and value.isdecimal():
        value = int(value)  # Ganeti < 2.5 wrote ids as strings
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise JobFileError(f"no usable job id ({value!r})")
    return value


def _name(value: Any) -> str | None:
    if isinstance(value, str) and value and len(value) <= _MAX_NAME:
        return value
    return None


def _instance_name(params: Mapping[str, Any]) -> str | None:
    if "instance_name" in params:
        return _name(params["instance_name"])
    instances = params.get("instances")
    if isinstance(instances, list) and len(instances) == 1:
        # OP_INSTANCE_MULTI_ALLOC lists opcodes, not names: _name() refuses those
        return _name(instances[0])
    return None


def _network_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for src, dst, kind in _NETWORK_FIELDS:
        if src not in params:
            continue
        value = params[src]
        if value is None or (
            isinstance(value, kind) and (kind is not list or all(isinstance(v, str) for v in value))
        ):
            out[dst] = value
    return out


def events_from_job(
    job: Mapping[str, Any],
    *,
    cluster: str,
    fallback_time: Sequence[int] | None = None,
    job_id: int | None = None,
) -> list[JobEvent]:
    """The messages for every instance and network opcode of ``job``, in op order.

    ``job_id`` is used when the document has no ``id`` (eventd passes the file's number).
    Raises :class:`JobFileError` when the document is not a job at all; a malformed op
    is skipped on its own.
    """
    jid = _job_id(job, job_id)
    ops = job.get("ops")
    if not isinstance(ops, list):
        raise JobFileError("no list of ops")
    events: list[JobEvent] = []
    for index, op in enumerate(ops):
        if not isinstance(op, Mapping):
            continue
        params = op.get("input")
        if not isinstance(params, Mapping):
            continue
        op_id = params.get("OP_ID")
        if not isinstance(op_id, str):
            continue
        parts = op_id.split("_")
        kind = parts[1] if len(parts) > 2 and parts[0] == "OP" else None
        if kind not in ("INSTANCE", "NETWORK"):
            continue
        status = op_status(op)
        when = event_time(op, job, fallback_time)
        if status is None or when is None:
            continue
        common = {
            "operation": op_id,
            "jobId": jid,
            "status": status,
            "logmsg": logmsg(op),
            "event_time": when,
            "cluster": cluster,
        }
        if kind == "INSTANCE":
            name = _instance_name(params)
            if name is None:
                continue
            body = {"type": OP_STATUS, "instance": name, **common}
            events.append(JobEvent(OP_STATUS, name, jid, index, status, body))
        else:
            name = _name(params.get("network_name"))
            if name is None:
                continue
            body = {"type": NETWORK_STATUS, "network": name, **common, **_network_fields(params)}
            events.append(JobEvent(NETWORK_STATUS, name, jid, index, status, body))
    return events
