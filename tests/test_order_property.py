"""CONTRACT §5.2, order independence, as properties.

For one VM (or one network on one backend), any delivery order with any number of
redeliveries must end in the state that applying each distinct message once, in ascending
``event_time`` (ties: ``jobId``, then status ``queued < waiting < canceling < running <
canceled < error < success``), produces. Checked three ways:

* the pure core: deduplicate by digest, sort by ``sort_key``, ``fold``;
* the store's algorithm, simulated purely: a history set and a ``last_key``, batches applied
  incrementally when they sort after ``last_key`` and by a full recompute otherwise;
* the real ``EventStore`` on PostgreSQL.

The reference order is computed here from the contract's words (``contract_order``), not
from ``dispatcher.core.ordering``; the hand-written strategies only produce event-time ties that
the contract resolves (op-status messages of distinct job or status), so the reference is a
total order.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dispatcher.core.handling import Incoming, Outcome
from dispatcher.core.messages import Message, NetworkStatus, VmMessage, parse
from dispatcher.core.names import instance_name, network_name
from dispatcher.core.network_state import BnState, fold_network, network_state
from dispatcher.core.ordering import sort_key
from dispatcher.core.times import datetime_from_us
from dispatcher.core.vm_state import Diagnostic, NicState, VmContext, VmState, fold
from dispatcher.db.engine import engine_scope
from dispatcher.db.store import EventStore
from dispatcher.simulation.publish import SIM_CLUSTER, create_world
from dispatcher.simulation.streams import Generator, SimNetwork
from tests.support import Env

PREFIX = "snf"
CLUSTER = "ganeti1.example.org"
T0 = 1_795_000_000
T0_US = T0 * 1_000_000
SIM_NETS = [SimNetwork(1, True, 11), SimNetwork(2, False, 12), SimNetwork(3, False, 13)]
NETWORKS = {n.id: n.public for n in SIM_NETS}
STATUS_ORDER = ["queued", "waiting", "canceling", "running", "canceled", "error", "success"]

PURE = settings(max_examples=200, deadline=None)
# Shrinking a failure through the database takes minutes; the failing example is printed
# whole (every draw is labelled), and the pure tests above shrink the same algorithm.
DB = settings(
    max_examples=15,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

M = TypeVar("M", bound=Message)


# --------------------------------------------------------------------------- reference


def wire(body: dict[str, Any]) -> Message:
    return parse(json.dumps(body).encode())


def distinct(msgs: Sequence[M]) -> list[M]:
    seen: set[bytes] = set()
    out = []
    for m in msgs:
        d = m.digest()
        if d not in seen:
            seen.add(d)
            out.append(m)
    return out


def contract_key(msg: Message) -> tuple[int, int, int]:
    """CONTRACT §5.2 in its own words: event_time, then jobId, then status."""
    job = getattr(msg, "jobId", -1)
    status = getattr(msg, "status", None)
    return msg.event_time_us, job, STATUS_ORDER.index(status) if status else -1


def contract_order(msgs: Sequence[M]) -> list[M]:
    ordered = sorted(distinct(msgs), key=contract_key)
    keys = [contract_key(m) for m in ordered]
    assert len(set(keys)) == len(keys), "the test produced a tie the contract leaves open"
    return ordered


def delivered_order(msgs: Sequence[M]) -> list[M]:
    """What the implementation folds: distinct messages in ``sort_key`` order."""
    return sorted(distinct(msgs), key=lambda m: sort_key(m, m.digest()))


def diag_set(diags: Sequence[Diagnostic]) -> set[Diagnostic]:
    return set(diags)


@st.composite
def deliveries(draw: st.DrawFn, msgs: Sequence[M]) -> list[M]:
    """The messages in any order, each at least once and some several times."""
    if not msgs:
        return []
    extra = draw(st.lists(st.integers(0, len(msgs) - 1), max_size=len(msgs)))
    order = draw(st.permutations(list(range(len(msgs))) + extra))
    return [msgs[i] for i in order]


@st.composite
def batched(draw: st.DrawFn, items: Sequence[M], max_batch: int = 8) -> list[list[M]]:
    out: list[list[M]] = []
    i = 0
    while i < len(items):
        n = draw(st.integers(1, max_batch))
        out.append(list(items[i : i + n]))
        i += n
    return out


# --------------------------------------------------------------------------- strategies

_SLOTS = 48  # time slots: op-status on even slots (ties allowed), the rest on odd ones


def _event_time(slot: int) -> list[int]:
    return [T0 + slot // 4, (slot % 4) * 250_000 + slot % 2]


def _nic_strategy(prefix: str, net_ids: Sequence[int]) -> st.SearchStrategy[dict[str, Any]]:
    known = [network_name(prefix, n) for n in net_ids]
    unknown = [network_name(prefix, 999_999), f"other-net-{net_ids[0]}"]
    # unknown networks are rarer than known ones
    return st.fixed_dictionaries(
        {"network": st.sampled_from([*known, *known, *known, *unknown])},
        optional={
            "mac": st.sampled_from(["aa:00:00:00:00:01", "aa:00:00:00:00:02", ""]),
            "ip": st.sampled_from(["10.0.0.1", "192.0.2.7", "", None]),
            "ipv6": st.sampled_from(["2001:db8::1", ""]),
            "firewall": st.sampled_from(["protected", "unprotected", "limited", "other"]),
        },
    )


VM_OPCODES = [
    "OP_INSTANCE_CREATE",
    "OP_INSTANCE_STARTUP",
    "OP_INSTANCE_SHUTDOWN",
    "OP_INSTANCE_REBOOT",
    "OP_INSTANCE_REMOVE",
    "OP_INSTANCE_SET_PARAMS",
    "OP_INSTANCE_QUERY_DATA",
    "OP_FOO",
]


def vm_bodies(
    prefix: str, vm_id: int, net_ids: Sequence[int], max_size: int = 14
) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Arbitrary messages about one VM: every type, removal and errors included."""
    inst = instance_name(prefix, vm_id)
    nics = st.lists(_nic_strategy(prefix, net_ids), max_size=3)
    op = st.fixed_dictionaries(
        {
            "type": st.just("ganeti-op-status"),
            "instance": st.just(inst),
            # the opcodes and statuses with rules of their own come more often
            "operation": st.sampled_from(
                [*VM_OPCODES, *["OP_INSTANCE_CREATE", "OP_INSTANCE_REMOVE"] * 3]
            ),
            "jobId": st.integers(1, 4),
            "status": st.sampled_from([*STATUS_ORDER, *["success", "error"] * 2]),
            "logmsg": st.sampled_from([None, "step", "Failure: boom"]),
            "slot": st.integers(0, _SLOTS // 2 - 1).map(lambda s: 2 * s),
        },
        optional={"nics": nics, "instance_nics": nics, "cluster": st.just(CLUSTER)},
    )
    odd = st.integers(0, _SLOTS // 2 - 1).map(lambda s: 2 * s + 1)
    other = st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("ganeti-net-status"), "instance": st.just(inst), "nics": nics,
             "slot": odd}
        ),
        st.fixed_dictionaries(
            {"type": st.just("ganeti-create-progress"), "instance": st.just(inst),
             "rprogress": st.floats(-20, 150, allow_nan=False) | st.integers(-5, 300),
             "slot": odd},
            optional={"wprogress": st.floats(0, 100)},
        ),
        st.fixed_dictionaries(
            {"type": st.just("image-copy-progress"), "instance": st.just(inst),
             "progress": st.floats(-5, 120, allow_nan=False), "slot": odd}
        ),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["image-info", "image-warning", "image-error",
                                      "image-helper"]),
             "instance": st.just(inst), "slot": odd},
            optional={
                "messages": st.lists(st.sampled_from(["a", "b"]), max_size=2)
                | st.sampled_from(["text", ""]),
                "stderr": st.just("trace"),
                "subtype": st.sampled_from(["task-start", "task-end", "warning", "error",
                                            "info"]),
                "task": st.sampled_from(["Resize", "FixPartitionTable"]),
            },
        ),
    )  # fmt: skip

    def key(b: dict[str, Any]) -> tuple[Any, ...]:
        return b["slot"], b.get("jobId"), b.get("status")

    def finish(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**b, "event_time": _event_time(b.pop("slot"))} for b in bodies]

    return st.lists(st.one_of(op, op, other), max_size=max_size, unique_by=key).map(finish)


NETWORK_OPCODES = [
    "OP_NETWORK_ADD",
    "OP_NETWORK_CONNECT",
    "OP_NETWORK_DISCONNECT",
    "OP_NETWORK_REMOVE",
    "OP_NETWORK_SET_PARAMS",
    "OP_NETWORK_QUERY_DATA",
]


def network_bodies(
    prefix: str, net_id: int, cluster: str, max_size: int = 12
) -> st.SearchStrategy[list[dict[str, Any]]]:
    """Arbitrary ``ganeti-network-status`` messages about one network on one backend."""
    body = st.fixed_dictionaries(
        {
            "type": st.just("ganeti-network-status"),
            "network": st.just(network_name(prefix, net_id)),
            "operation": st.sampled_from(NETWORK_OPCODES),
            "jobId": st.integers(1, 4),
            "status": st.sampled_from([*STATUS_ORDER, *["success", "error"] * 2]),
            "logmsg": st.sampled_from([None, "Failure: x"]),
            "cluster": st.just(cluster),
            "slot": st.integers(0, 15),
        },
        optional={"group_name": st.just("default"), "subnet": st.just("10.0.0.0/24")},
    )

    def finish(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**b, "event_time": [T0 + b.pop("slot"), 0]} for b in bodies]

    return st.lists(
        body, max_size=max_size, unique_by=lambda b: (b["slot"], b["jobId"], b["status"])
    ).map(finish)


def generator(
    seed: int,
    networks: list[SimNetwork] = SIM_NETS,
    prefix: str = PREFIX,
    cluster: str = CLUSTER,
) -> Generator:
    return Generator(prefix, cluster, networks, seed=seed, start_us=T0_US, duplicate_rate=0)


VM_ACTIONS = st.sampled_from([None, "CREATE", "START", "STOP", "DESTROY"])
NET_ACTIONS = st.sampled_from([None, "CREATE", "DESTROY"])
SEEDS = st.integers(0, 2**32 - 1)


def parsed_vm(bodies: list[dict[str, Any]]) -> list[VmMessage]:
    out = []
    for b in bodies:
        m = wire(b)
        assert not isinstance(m, NetworkStatus)
        out.append(m)
    return out


def parsed_network(bodies: list[dict[str, Any]]) -> list[NetworkStatus]:
    out = []
    for b in bodies:
        m = wire(b)
        assert isinstance(m, NetworkStatus)
        out.append(m)
    return out


# --------------------------------------------------------------------------- pure folds


def assert_vm_order_independent(
    msgs: list[VmMessage], delivery: list[VmMessage], ctx: VmContext
) -> None:
    expected = fold(VmState(), contract_order(msgs), ctx)
    got = fold(VmState(), delivered_order(delivery), ctx)
    assert got.state == expected.state
    assert got.diagnostics == expected.diagnostics


@PURE
@given(seed=SEEDS, vm_id=st.integers(1, 10**6), data=st.data())
def test_generated_vm_life_any_delivery_order(seed: int, vm_id: int, data: st.DataObject) -> None:
    msgs = parsed_vm(generator(seed).vm_life(vm_id))
    delivery = data.draw(deliveries(msgs))
    assert_vm_order_independent(msgs, delivery, VmContext(PREFIX, "CREATE", NETWORKS))


@PURE
@given(
    bodies=vm_bodies(PREFIX, 42, [n.id for n in SIM_NETS]),
    action=VM_ACTIONS,
    data=st.data(),
)
def test_arbitrary_vm_sequence_any_delivery_order(
    bodies: list[dict[str, Any]], action: str | None, data: st.DataObject
) -> None:
    msgs = parsed_vm(bodies)
    delivery = data.draw(deliveries(msgs))
    assert_vm_order_independent(msgs, delivery, VmContext(PREFIX, action, NETWORKS))


@PURE
@given(seed=SEEDS, remove=st.booleans(), action=NET_ACTIONS, data=st.data())
def test_generated_network_life_any_delivery_order(
    seed: int, remove: bool, action: str | None, data: st.DataObject
) -> None:
    msgs = parsed_network(generator(seed).network_life(SIM_NETS[1], remove))
    delivery = data.draw(deliveries(msgs))
    expected = fold_network(BnState(), contract_order(msgs), action)[0]
    assert fold_network(BnState(), delivered_order(delivery), action)[0] == expected
    assert expected.deleted == remove


@PURE
@given(bodies=network_bodies(PREFIX, 2, CLUSTER), action=NET_ACTIONS, data=st.data())
def test_arbitrary_network_sequence_any_delivery_order(
    bodies: list[dict[str, Any]], action: str | None, data: st.DataObject
) -> None:
    msgs = parsed_network(bodies)
    delivery = data.draw(deliveries(msgs))
    expected = fold_network(BnState(), contract_order(msgs), action)[0]
    assert fold_network(BnState(), delivered_order(delivery), action)[0] == expected


@PURE
@given(
    bodies=vm_bodies(PREFIX, 42, [n.id for n in SIM_NETS]),
    action=VM_ACTIONS,
    data=st.data(),
)
def test_any_two_deliveries_agree_even_with_open_ties(
    bodies: list[dict[str, Any]], action: str | None, data: st.DataObject
) -> None:
    # squeeze every message into two instants: ties the contract leaves open must still
    # be broken the same way whatever the delivery order
    msgs = parsed_vm([{**b, "event_time": [T0, b["event_time"][1] % 2]} for b in bodies])
    ctx = VmContext(PREFIX, action, NETWORKS)
    first = fold(VmState(), delivered_order(data.draw(deliveries(msgs))), ctx)
    second = fold(VmState(), delivered_order(data.draw(deliveries(msgs))), ctx)
    assert first.state == second.state
    assert diag_set(first.diagnostics) == diag_set(second.diagnostics)


# --------------------------------------------------------------------------- store algorithm


@dataclass
class SimulatedStore:
    """``dispatcher.db.store``'s algorithm for one target, without the database: history
    keyed by digest, incremental apply when the batch sorts after ``last_key``, otherwise a
    recompute from the sorted history (diagnostics rebuilt, as the store does)."""

    initial: Any
    fold_many: Callable[[Any, list[Any]], tuple[Any, list[Diagnostic]]]
    state: Any = None
    last_key: bytes | None = None
    history: dict[bytes, tuple[bytes, Any]] = field(default_factory=dict)
    diagnostics: dict[bytes, Diagnostic] = field(default_factory=dict)
    recomputes: int = 0

    def __post_init__(self) -> None:
        self.state = self.initial

    def apply(self, batch: Sequence[Message]) -> None:
        new: dict[bytes, tuple[bytes, Message]] = {}
        for m in batch:
            d = m.digest()
            if d not in self.history and d not in new:
                new[d] = (sort_key(m, d), m)
        if not new:
            return
        self.history.update(new)
        ordered = sorted(new.values(), key=lambda p: p[0])
        if self.last_key is None or ordered[0][0] > self.last_key:
            self.state, diags = self.fold_many(self.state, [m for _, m in ordered])
            for diag in diags:
                self.diagnostics.setdefault(diag.digest, diag)
            self.last_key = ordered[-1][0]
        else:
            self.recomputes += 1
            full = sorted(self.history.values(), key=lambda p: p[0])
            self.state, diags = self.fold_many(self.initial, [m for _, m in full])
            self.diagnostics = {d.digest: d for d in diags}
            self.last_key = full[-1][0]


def vm_store(ctx: VmContext) -> SimulatedStore:
    def fold_many(state: VmState, msgs: list[VmMessage]) -> tuple[VmState, list[Diagnostic]]:
        out = fold(state, msgs, ctx)
        return out.state, out.diagnostics

    return SimulatedStore(VmState(), fold_many)


def network_store(action: str | None) -> SimulatedStore:
    def fold_many(state: BnState, msgs: list[NetworkStatus]) -> tuple[BnState, list[Diagnostic]]:
        return fold_network(state, msgs, action)[0], []

    return SimulatedStore(BnState(), fold_many)


def check_vm_store(msgs: list[VmMessage], ctx: VmContext, data: st.DataObject) -> None:
    store = vm_store(ctx)
    for batch in data.draw(batched(data.draw(deliveries(msgs)))):
        store.apply(batch)
    expected = fold(VmState(), contract_order(msgs), ctx)
    assert store.state == expected.state
    assert set(store.diagnostics.values()) == diag_set(expected.diagnostics)
    assert set(store.history) == {m.digest() for m in msgs}


@PURE
@given(seed=SEEDS, vm_id=st.integers(1, 10**6), data=st.data())
def test_store_algorithm_generated_vm_life(seed: int, vm_id: int, data: st.DataObject) -> None:
    msgs = parsed_vm(generator(seed).vm_life(vm_id))
    check_vm_store(msgs, VmContext(PREFIX, "CREATE", NETWORKS), data)


@PURE
@given(
    bodies=vm_bodies(PREFIX, 42, [n.id for n in SIM_NETS]),
    action=VM_ACTIONS,
    data=st.data(),
)
def test_store_algorithm_arbitrary_vm_sequence(
    bodies: list[dict[str, Any]], action: str | None, data: st.DataObject
) -> None:
    check_vm_store(parsed_vm(bodies), VmContext(PREFIX, action, NETWORKS), data)


@PURE
@given(
    bodies=network_bodies(PREFIX, 2, CLUSTER),
    seed=SEEDS,
    generated=st.booleans(),
    action=NET_ACTIONS,
    data=st.data(),
)
def test_store_algorithm_network(
    bodies: list[dict[str, Any]],
    seed: int,
    generated: bool,
    action: str | None,
    data: st.DataObject,
) -> None:
    if generated:
        bodies = generator(seed).network_life(SIM_NETS[1], remove=seed % 2 == 0)
    msgs = parsed_network(bodies)
    store = network_store(action)
    for batch in data.draw(batched(data.draw(deliveries(msgs)))):
        store.apply(batch)
    assert store.state == fold_network(BnState(), contract_order(msgs), action)[0]


def test_store_algorithm_recomputes_on_a_late_message() -> None:
    # the simulation itself must exercise both paths: in order -> no recompute,
    # a late message -> recompute that lands on the in-order state
    msgs = parsed_vm(generator(7).vm_life(5))
    ctx = VmContext(PREFIX, "CREATE", NETWORKS)
    in_order = vm_store(ctx)
    for m in msgs:
        in_order.apply([m])
    assert in_order.recomputes == 0
    late = vm_store(ctx)
    for m in [*msgs[1:], msgs[0], msgs[3]]:
        late.apply([m])
    assert late.recomputes == 1
    assert late.state == in_order.state == fold(VmState(), msgs, ctx).state


# --------------------------------------------------------------------------- real store

_VM_ROWS = """
SELECT id, operstate, deleted, backendjobid, backendopcode, backendjobstatus, backendlogmsg,
       buildpercentage, backendtime
FROM virtual_machines WHERE id = ANY($1::int[])
"""
_NIC_ROWS = """
SELECT machine_id, index, network_id, mac, ipv4, ipv6, firewall_profile
FROM network_interfaces WHERE machine_id = ANY($1::int[]) ORDER BY machine_id, index
"""
_DIAG_ROWS = """
SELECT machine_id, digest, level, source, source_date, message, details
FROM vm_diagnostics WHERE machine_id = ANY($1::int[])
"""
_BN_ROWS = """
SELECT bn.network_id, bn.operstate, bn.deleted, bn.backendjobid, bn.backendopcode,
       bn.backendjobstatus, bn.backendlogmsg, bn.backendtime, n.state, n.deleted AS net_deleted
FROM backend_networks bn JOIN networks n ON n.id = bn.network_id
WHERE bn.network_id = ANY($1::int[]) AND bn.backend_id = $2
"""


def _dsn(env: Env) -> str:
    return env.vars["DISPATCHER_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


def _vm_row(st_: VmState) -> dict[str, Any]:
    return {
        "operstate": st_.operstate,
        "deleted": st_.deleted,
        "backendjobid": st_.backendjobid,
        "backendopcode": st_.backendopcode,
        "backendjobstatus": st_.backendjobstatus,
        "backendlogmsg": st_.backendlogmsg,
        "buildpercentage": st_.buildpercentage,
        "backendtime": datetime_from_us(st_.backendtime_us),
    }


def _bn_row(st_: BnState) -> dict[str, Any]:
    state, deleted = network_state([st_.operstate])
    return {
        "operstate": st_.operstate,
        "deleted": st_.deleted,
        "backendjobid": st_.backendjobid,
        "backendopcode": st_.backendopcode,
        "backendjobstatus": st_.backendjobstatus,
        "backendlogmsg": st_.backendlogmsg,
        "backendtime": datetime_from_us(st_.backendtime_us),
        "state": state,
        "net_deleted": deleted,
    }


@dataclass
class Expected:
    vms: dict[int, tuple[dict[str, Any], list[NicState], set[tuple[Any, ...]]]]
    networks: dict[int, dict[str, Any]]


async def _observed(env: Env, vm_ids: list[int], net_ids: list[int], backend_id: int) -> Expected:
    pg = await asyncpg.connect(_dsn(env))
    try:
        rows = await pg.fetch(_VM_ROWS, vm_ids)
        nics = await pg.fetch(_NIC_ROWS, vm_ids)
        diags = await pg.fetch(_DIAG_ROWS, vm_ids)
        bns = await pg.fetch(_BN_ROWS, net_ids, backend_id)
    finally:
        await pg.close()
    out = Expected({}, {})
    for r in rows:
        row = dict(r)
        out.vms[row.pop("id")] = (row, [], set())
    for r in nics:
        out.vms[r["machine_id"]][1].append(NicState(*list(r.values())[1:]))
    for r in diags:
        out.vms[r["machine_id"]][2].add(tuple(r.values())[1:])
    for r in bns:
        row = dict(r)
        out.networks[row.pop("network_id")] = row
    return out


def _diag_rows(diags: Sequence[Diagnostic]) -> set[tuple[Any, ...]]:
    return {
        (d.digest, d.level, d.source, datetime_from_us(d.source_time_us), d.message, d.details)
        for d in diags
    }


@DB
@given(data=st.data())
async def test_event_store_matches_in_order_fold(env: Env, data: st.DataObject) -> None:
    async with engine_scope(env.settings()) as engine:
        n_generated = data.draw(st.integers(1, 3), label="generated VMs")
        world = await create_world(engine, n_generated + 1)
        store = EventStore(engine, env.prefix)
        gen = generator(data.draw(SEEDS, label="seed"), world.networks, env.prefix, SIM_CLUSTER)
        net_ids = [n.id for n in world.networks]
        vm_ids = world.vm_ids
        wild_vm, wild_net = vm_ids[-1], net_ids[-1]
        vm_action = data.draw(VM_ACTIONS, label="action of the arbitrary VM")
        net_action = data.draw(NET_ACTIONS, label="action of the arbitrary network")
        pg = await asyncpg.connect(_dsn(env))
        try:
            await pg.execute(
                "UPDATE virtual_machines SET action = $1 WHERE id = $2", vm_action, wild_vm
            )
            await pg.execute("UPDATE networks SET action = $1 WHERE id = $2", net_action, wild_net)
        finally:
            await pg.close()

        vm_msgs: dict[int, list[VmMessage]] = {vm: parsed_vm(gen.vm_life(vm)) for vm in vm_ids[:-1]}
        vm_msgs[wild_vm] = parsed_vm(
            data.draw(vm_bodies(env.prefix, wild_vm, net_ids), label="arbitrary VM")
        )
        net_msgs: dict[int, list[NetworkStatus]] = {
            net_ids[0]: parsed_network(gen.network_life(world.networks[0], remove=False)),
            net_ids[1]: parsed_network(
                gen.network_life(world.networks[1], data.draw(st.booleans(), label="remove"))
            ),
            wild_net: parsed_network(
                data.draw(network_bodies(env.prefix, wild_net, SIM_CLUSTER), label="network")
            ),
        }
        everything: list[Message] = [m for ms in vm_msgs.values() for m in ms]
        everything += [m for ms in net_msgs.values() for m in ms]
        delivery = data.draw(deliveries(everything), label="delivery")
        first_seen: Counter[bytes] = Counter()
        for batch in data.draw(batched(delivery, max_batch=12), label="batches"):
            results = await store.apply([Incoming.of(m) for m in batch])
            assert len(results) == len(batch)
            for m, res in zip(batch, results, strict=True):
                if res.outcome is not Outcome.DUPLICATE:
                    first_seen[m.digest()] += 1
        # exactly once: every distinct message taken once, every redelivery a duplicate
        assert first_seen == Counter(m.digest() for m in distinct(everything))

    observed = await _observed(env, vm_ids, net_ids, world.backend_id)
    networks = {n.id: n.public for n in world.networks}
    for vm, msgs in vm_msgs.items():
        action = vm_action if vm == wild_vm else "CREATE"
        expected = fold(VmState(), contract_order(msgs), VmContext(env.prefix, action, networks))
        row, nics, diags = observed.vms[vm]
        assert row == _vm_row(expected.state), f"VM {vm}"
        assert nics == list(expected.state.nics), f"NICs of VM {vm}"
        assert diags == _diag_rows(expected.diagnostics), f"diagnostics of VM {vm}"
    for net, nmsgs in net_msgs.items():
        action = net_action if net == wild_net else "CREATE"
        if not nmsgs:
            assert net not in observed.networks
            continue
        expected_bn = fold_network(BnState(), contract_order(nmsgs), action)[0]
        assert observed.networks[net] == _bn_row(expected_bn), f"network {net}"


async def test_network_state_follows_its_backend_network_after_a_late_message(env: Env) -> None:
    """ADD fails, is retried with success, then REMOVE fails: in order, the backend network
    ends PENDING (a REMOVE error only deletes it from ERROR or under DESTROY), so the network
    is PENDING and not deleted. Delivered with the retry last, the backend network passes
    through DELETED on the way; the final state must not depend on that."""
    async with engine_scope(env.settings()) as engine:
        world = await create_world(engine, 0)
        net = world.networks[1]
        name = network_name(env.prefix, net.id)

        def body(op: str, job: int, status: str, sec: int) -> NetworkStatus:
            m = wire(
                {
                    "type": "ganeti-network-status",
                    "network": name,
                    "operation": op,
                    "jobId": job,
                    "status": status,
                    "logmsg": None,
                    "event_time": [T0 + sec, 0],
                    "cluster": SIM_CLUSTER,
                }
            )
            assert isinstance(m, NetworkStatus)
            return m

        add_error = body("OP_NETWORK_ADD", 1, "error", 1)
        add_retry = body("OP_NETWORK_ADD", 2, "success", 2)
        remove_error = body("OP_NETWORK_REMOVE", 3, "error", 3)
        expected = fold_network(BnState(), [add_error, add_retry, remove_error], "CREATE")[0]
        assert (expected.operstate, expected.deleted) == ("PENDING", False)
        store = EventStore(engine, env.prefix)
        for m in (add_error, remove_error, add_retry):
            await store.apply([Incoming.of(m)])
    observed = await _observed(env, [], [net.id], world.backend_id)
    assert observed.networks[net.id] == _bn_row(expected)
