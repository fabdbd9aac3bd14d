"""Realistic Ganeti event streams, generated without I/O (used by ``dispatcher simulate``,
the tests and the benchmark).

Each VM lives a plausible life: a create job (queued, running, build progress, success with
its NICs, sometimes a failure), power jobs, NIC changes, sometimes a removal. Messages come
as snf-ganeti-eventd emitted them: one per opcode status per job-file write, so statuses
repeat, and the stream can be shuffled within a window to mimic several queues and
consumers. ``expected_*`` give the state after applying each distinct message once in
CONTRACT §5.2 order, computed by the pure core.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dispatcher.core.messages import NetworkStatus, VmMessage, parse
from dispatcher.core.names import instance_name, network_name
from dispatcher.core.network_state import BnState, fold_network
from dispatcher.core.ordering import sort_key
from dispatcher.core.vm_state import VmContext, VmState, fold
from dispatcher.pipeline.topology import routing_key_for

FIREWALLS = ("protected", "unprotected", "limited", None)


@dataclass(frozen=True, slots=True)
class SimNetwork:
    id: int
    public: bool
    subnet_octet: int  # 10.<octet>.x.y


@dataclass
class Stream:
    """Messages in publish order, as ``(routing_key, body)``; ``by_vm`` / ``by_network``
    hold the distinct messages of each target (for expectations)."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    by_vm: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    by_network: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    duplicates: int = 0


class _Clock:
    """Event times: microseconds, strictly increasing per target, jittered."""

    def __init__(self, rng: random.Random, start_us: int) -> None:
        self.rng, self.now = rng, start_us

    def tick(self, lo_ms: int = 5, hi_ms: int = 400) -> list[int]:
        self.now += self.rng.randint(lo_ms * 1000, hi_ms * 1000)
        return [self.now // 1_000_000, self.now % 1_000_000]


class Generator:
    def __init__(
        self,
        prefix: str,
        cluster: str,
        networks: list[SimNetwork],
        *,
        seed: int,
        start_us: int,
        job_base: int = 1000,
        duplicate_rate: float = 0.15,
    ) -> None:
        self.prefix, self.cluster, self.networks = prefix, cluster, networks
        self.rng = random.Random(seed)
        self.start_us = start_us
        self.job = job_base
        self.duplicate_rate = duplicate_rate

    def _next_job(self) -> int:
        self.job += 1
        return self.job

    def _op(
        self, name: str, clock: _Clock, op: str, job: int, status: str, **extra: Any
    ) -> dict[str, Any]:
        logmsg = None
        if status == "error":
            logmsg = f"Failure: command execution error: {op.lower()} failed"
        elif status == "running" and self.rng.random() < 0.5:
            logmsg = "* running the instance OS create scripts..."
        return {
            "type": "ganeti-op-status",
            "instance": name,
            "operation": op,
            "jobId": job,
            "status": status,
            "logmsg": logmsg,
            "event_time": clock.tick(),
            "cluster": self.cluster,
            **extra,
        }

    def _nics(self, vm_id: int, nets: list[SimNetwork]) -> list[dict[str, Any]]:
        out = []
        for i, net in enumerate(nets):
            nic: dict[str, Any] = {
                "network": network_name(self.prefix, net.id),
                "mac": f"aa:00:00:{(vm_id >> 8) & 0xFF:02x}:{vm_id & 0xFF:02x}:{i:02x}",
                "ip": f"10.{net.subnet_octet}.{(vm_id >> 8) & 0xFF}.{vm_id & 0xFF}"
                if net.public or i % 2 == 0
                else None,
                "mode": "bridged",
                "link": "br0",
                "name": None,
            }
            fw = self.rng.choice(FIREWALLS)
            if fw is not None:
                nic["firewall"] = fw
            out.append(nic)
        return out

    def vm_life(self, vm_id: int) -> list[dict[str, Any]]:
        rng, name = self.rng, instance_name(self.prefix, vm_id)
        clock = _Clock(rng, self.start_us + rng.randint(0, 10_000_000))
        msgs: list[dict[str, Any]] = []
        extra_nets = min(len(self.networks) - 1, rng.randint(0, 2))
        nets = [self.networks[0], *rng.sample(self.networks[1:], k=extra_nets)]
        job = self._next_job()
        msgs.append(self._op(name, clock, "OP_INSTANCE_CREATE", job, "queued"))
        msgs.append(self._op(name, clock, "OP_INSTANCE_CREATE", job, "running"))
        progress = 0.0
        for _ in range(rng.randint(2, 5)):
            progress += rng.uniform(10, 40)
            msgs.append(
                {
                    "type": "ganeti-create-progress",
                    "instance": name,
                    "rprogress": round(progress, 2),
                    "event_time": clock.tick(),
                }
            )
        if rng.random() < 0.2:
            msgs.append(
                {
                    "type": "image-info",
                    "instance": name,
                    "messages": ["Configuring image"],
                    "event_time": clock.tick(),
                }
            )
        if rng.random() < 0.06:
            msgs.append(self._op(name, clock, "OP_INSTANCE_CREATE", job, "error"))
            if rng.random() < 0.7:
                rjob = self._next_job()
                msgs.append(self._op(name, clock, "OP_INSTANCE_REMOVE", rjob, "running"))
                msgs.append(self._op(name, clock, "OP_INSTANCE_REMOVE", rjob, "error"))
            return msgs
        msgs.append(
            {
                "type": "ganeti-create-progress",
                "instance": name,
                "rprogress": 100.0,
                "event_time": clock.tick(),
            }
        )
        nics = self._nics(vm_id, nets)
        msgs.append(self._op(name, clock, "OP_INSTANCE_CREATE", job, "success", instance_nics=nics))
        for _ in range(rng.randint(0, 4)):
            op = rng.choice(
                (
                    "OP_INSTANCE_SHUTDOWN",
                    "OP_INSTANCE_STARTUP",
                    "OP_INSTANCE_REBOOT",
                    "OP_INSTANCE_SET_PARAMS",
                    "OP_INSTANCE_QUERY_DATA",
                )
            )
            job = self._next_job()
            msgs.append(self._op(name, clock, op, job, "queued"))
            if rng.random() < 0.3:
                msgs.append(self._op(name, clock, op, job, "waiting"))
            msgs.append(self._op(name, clock, op, job, "running"))
            final = "error" if rng.random() < 0.08 else "success"
            extra: dict[str, Any] = {}
            if op == "OP_INSTANCE_SET_PARAMS" and final == "success":
                k = rng.randint(1, len(self.networks))
                nics = self._nics(
                    vm_id, [self.networks[0], *rng.sample(self.networks[1:], k=k - 1)]
                )
                extra["instance_nics"] = nics
            elif op in ("OP_INSTANCE_STARTUP", "OP_INSTANCE_REBOOT") and final == "success":
                extra["instance_nics"] = nics
            msgs.append(self._op(name, clock, op, job, final, **extra))
            if op == "OP_INSTANCE_SET_PARAMS" and rng.random() < 0.3:
                # the post-hook's NIC report, stamped before the op's end
                msgs.append(
                    {
                        "type": "ganeti-net-status",
                        "instance": name,
                        "nics": extra.get("instance_nics", nics),
                        "event_time": clock.tick(1, 3),
                    }
                )
        if rng.random() < 0.3:
            job = self._next_job()
            msgs.append(self._op(name, clock, "OP_INSTANCE_REMOVE", job, "queued"))
            msgs.append(self._op(name, clock, "OP_INSTANCE_REMOVE", job, "running"))
            msgs.append(self._op(name, clock, "OP_INSTANCE_REMOVE", job, "success"))
        return msgs

    def network_life(self, net: SimNetwork, remove: bool) -> list[dict[str, Any]]:
        clock = _Clock(self.rng, self.start_us)
        name = network_name(self.prefix, net.id)
        ops = ["OP_NETWORK_ADD", "OP_NETWORK_CONNECT"]
        if remove:
            ops += ["OP_NETWORK_DISCONNECT", "OP_NETWORK_REMOVE"]
        out = []
        for op in ops:
            job = self._next_job()
            for status in ("queued", "running", "success"):
                out.append(
                    {
                        "type": "ganeti-network-status",
                        "network": name,
                        "operation": op,
                        "jobId": job,
                        "status": status,
                        "logmsg": None,
                        "event_time": clock.tick(),
                        "cluster": self.cluster,
                        "subnet": f"10.{net.subnet_octet}.0.0/16",
                        "gateway": None,
                        "group_name": "default" if "CONNECT" in op else None,
                    }
                )
        return out

    def stream(
        self,
        vm_ids: list[int],
        *,
        remove_networks: Mapping[int, bool] | None = None,
        reorder_window: int = 0,
    ) -> Stream:
        st = Stream()
        remove_networks = remove_networks or {}
        distinct: list[dict[str, Any]] = []
        for net in self.networks:
            msgs = self.network_life(net, remove_networks.get(net.id, False))
            st.by_network[net.id] = msgs
            distinct.extend(msgs)
        for vm_id in vm_ids:
            msgs = self.vm_life(vm_id)
            st.by_vm[vm_id] = msgs
            distinct.extend(msgs)
        # interleave lives by time, as a cluster running them at once would
        distinct.sort(key=lambda m: (m["event_time"][0], m["event_time"][1]))
        out: list[dict[str, Any]] = []
        for m in distinct:
            out.append(m)
            if self.rng.random() < self.duplicate_rate:
                out.append(m)  # eventd re-emits on the next job-file write
                st.duplicates += 1
        if reorder_window > 1:
            out = _window_shuffle(out, reorder_window, self.rng)
        st.messages = [(routing_key_for(self.prefix, m["type"]), m) for m in out]
        return st


def _window_shuffle(items: list[Any], window: int, rng: random.Random) -> list[Any]:
    keyed = [(i + rng.uniform(0, window), x) for i, x in enumerate(items)]
    keyed.sort(key=lambda p: p[0])
    return [x for _, x in keyed]


def _parsed(bodies: list[dict[str, Any]]) -> Iterator[Any]:
    import json

    seen = set()
    msgs = []
    for b in bodies:
        m = parse(json.dumps(b).encode())
        d = m.digest()
        if d not in seen:
            seen.add(d)
            msgs.append((sort_key(m, d), m))
    msgs.sort(key=lambda p: p[0])
    return (m for _, m in msgs)


def expected_vm(bodies: list[dict[str, Any]], ctx: VmContext) -> VmState:
    msgs: list[VmMessage] = list(_parsed(bodies))
    return fold(VmState(), msgs, ctx).state


def expected_backend_network(bodies: list[dict[str, Any]], action: str | None = None) -> BnState:
    msgs: list[NetworkStatus] = list(_parsed(bodies))
    return fold_network(BnState(), msgs, action)[0]
