"""Three dispatchers and a publisher on a three-node RabbitMQ cluster with quorum queues
(``scripts/rabbitmq-cluster.sh``) while broker nodes are lost mid-stream: the node leading
the queues stopped (``rabbitmqctl stop_app``) and started again, then another node killed
with ``kill -9`` and restarted. The database must end equal to ``simulate --expect``: no
message lost, none applied twice, no dead letter.

"Mid-stream" is made, not hoped for: before each fault the test shuts the gate (an
exclusive lock on the history tables, which every batch writes), lets the publisher
(``dispatcher simulate``) put at least ``BACKLOG`` messages in the queues, holds the
publisher (SIGSTOP; its connection stays open on its node), waits until every daemon holds
a batch at the gate, injects the fault, and only then opens the gate. The publisher resumes
in the next phase (or at the end), finds its connection gone and fails over to another node.
The consumption pause of a fault is the longest time without a handled message between the
gate opening and the last message of the remainder handled (the publisher is held, so work
was waiting all that time), from the daemons' ``/metrics`` sampled every 50 ms.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import delete_queues
from tests.support import ROOT, Daemon, Env, Gate, wait_until
from tests.test_faults import (
    Stream,
    Tally,
    alive,
    conclude,
    depths,
    scalar,
    settle,
    stop_and_check_drained,
)

pytestmark = pytest.mark.slow

CLUSTER = str(ROOT / "scripts/rabbitmq-cluster.sh")
NODES = (1, 2, 3)
BACKLOG = 2500  # messages ready (beyond the daemons' prefetch) before each fault
PREFETCH = "256"  # per consumer: 3 daemons x 4 queues x 256 delivered, the rest stays ready
VMS = 1000  # ~17,000 messages: more than the two held phases publish, so the stream is mid-way


def node_name(n: int) -> str:
    return f"dcl{n}@localhost"


def url(n: int) -> str:
    return f"amqp://guest:guest@127.0.0.1:{5680 + n}/"


def urls_from(first: int) -> str:
    """The three nodes' URLs, starting with node ``first`` (a daemon's preferred node)."""
    order = [first] + [n for n in NODES if n != first]
    return ",".join(url(n) for n in order)


def cluster(*args: str) -> str:
    proc = subprocess.run(
        ["bash", CLUSTER, *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    if proc.returncode != 0:
        raise AssertionError(f"rabbitmq-cluster.sh {' '.join(args)}: {proc.stderr[-2000:]}")
    return proc.stdout


def list_queues(node: int, prefix: str) -> list[dict[str, Any]]:
    out = cluster(
        "ctl", str(node), "-q", "list_queues", "name", "type", "members", "leader",
        "--formatter", "json",
    )  # fmt: skip
    return [q for q in json.loads(out) if q["name"].startswith(f"{prefix}-events-")]


@pytest.fixture
def rabbit_cluster(service_env: dict[str, str]) -> Iterator[None]:
    """The three-node cluster for this test only: stopped (by pid) also when the test fails,
    and checked to leave nothing running."""
    try:
        cluster("start")
        yield
    finally:
        cluster("stop")
        status = subprocess.run(["bash", CLUSTER, "status"], capture_output=True, text=True)
        assert status.stdout.count(": stopped") == 3, status.stdout


class Progress(threading.Thread):
    """Scrapes every daemon's ``/metrics`` every 50 ms: messages handled in all, over time."""

    def __init__(self, daemons: list[Daemon]) -> None:
        super().__init__(daemon=True)
        self.daemons = daemons
        self.tally = Tally()
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.halt.is_set():
            handled = sum(self.tally.scrape(d) for d in self.daemons)
            with self.lock:
                self.samples.append((time.monotonic(), handled))
            self.halt.wait(0.05)

    def handled(self) -> int:
        with self.lock:
            return self.samples[-1][1] if self.samples else 0

    def last_increase(self) -> float:
        with self.lock:
            final = self.samples[-1][1]
            return next(ts for ts, h in self.samples if h == final)

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in [start, end] without a newly handled message."""
        with self.lock:
            samples = list(self.samples)
        last_t, gap = start, 0.0
        prev = max((h for ts, h in samples if ts <= start), default=0)
        for ts, h in samples:
            if start < ts <= end and h > prev:
                gap, last_t, prev = max(gap, ts - last_t), ts, h
        return max(gap, end - last_t)


def queued(node: int, prefix: str) -> int:
    """Messages not yet acked (ready and delivered) in the live queues, asked of ``node``."""
    out = cluster("ctl", str(node), "-q", "list_queues", "name", "messages", "--formatter", "json")
    return sum(
        int(q["messages"])
        for q in json.loads(out)
        if q["name"].startswith(f"{prefix}-events-") and not q["name"].endswith("-dl")
    )


async def held_fault(
    probe_node: int, resume: Callable[[], Stream], env: Env, inject: list[str]
) -> tuple[int, float]:
    """The fault, injected while the daemons hold batches at the gate with at least BACKLOG
    messages queued behind them and the publisher held: mid-stream on any machine. Returns
    the remainder queued and the time the gate opened."""
    gate = await Gate(env).close()
    try:
        stream = resume()
        assert stream.proc is not None
        deadline = time.monotonic() + 120
        probe = Env({**env.vars, "DISPATCHER_AMQP_URL": url(probe_node)}, env.database)
        while (ready := sum((await depths(probe)).values())) < BACKLOG:
            assert stream.publishing, (
                f"the stream ended before the fault (exit {stream.proc.returncode}, "
                f"{ready} ready): raise VMS"
            )
            assert time.monotonic() < deadline, "the publisher did not queue the backlog"
        stream.proc.send_signal(signal.SIGSTOP)
        assert stream.publishing, "the stream ended before the fault: raise VMS"
        await gate.blocked(sessions=len(NODES))  # every daemon has a batch in hand
        subprocess.run(inject, check=True, capture_output=True, timeout=120)
    finally:
        await gate.open()
    return ready, time.monotonic()


def leader_counts(node: int, prefix: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for q in list_queues(node, prefix):
        if not q["name"].endswith("-dl"):
            counts[q["leader"]] = counts.get(q["leader"], 0) + 1
    return counts


def busiest(counts: dict[str, int]) -> int:
    leader = max(counts, key=lambda k: counts[k])
    return int(leader.removeprefix("dcl").split("@")[0])


# ~100 s on 2 cores, setup (three broker nodes booting) and teardown included: 4x that
# rather than the global 150 s
@pytest.mark.timeout(420)
async def test_three_dispatchers_survive_losing_broker_nodes(
    rabbit_cluster: None, env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = Env(vars={**env.vars, "DISPATCHER_AMQP_URL": urls_from(1)}, database=env.database)
    extra = {"DISPATCHER_LOG_LEVEL": "INFO", "DISPATCHER_PREFETCH": PREFETCH}
    daemons: list[Daemon] = []
    stream: Stream | None = None
    progress: Progress | None = None
    try:
        # daemon 1 declares the topology through node 1: quorum queue leaders go to the
        # declaring node, so node 1 leads them and the publisher (node 1 first) sits there
        for n in NODES:
            d = Daemon(env, {**extra, "DISPATCHER_AMQP_URL": urls_from(n)}).start(False)
            daemons.append(d)
            d.wait_ready(120)
        queues = list_queues(2, env.prefix)
        assert len(queues) == 8, queues
        for q in queues:
            assert q["type"] == "quorum", q
            assert sorted(q["members"]) == [node_name(n) for n in NODES], q
        leaders = leader_counts(1, env.prefix)
        assert busiest(leaders) == 1, leaders

        progress = Progress(daemons)
        progress.start()
        faults: list[dict[str, Any]] = []

        def resume() -> Stream:
            nonlocal stream
            if stream is None:  # the first phase starts it, while consumption is held
                stream = Stream.start(env, tmp_path, vms=VMS, seed=7, background=True)
            else:
                assert stream.proc is not None
                stream.proc.send_signal(signal.SIGCONT)
            return stream

        async def fault(name: str, victim: int, inject: list[str], probe_node: int) -> None:
            assert progress is not None
            remainder, start = await held_fault(probe_node, resume, env, inject)
            # the publisher is held: once the remainder is acked, no message is handled any more
            wait_until(lambda: queued(probe_node, env.prefix) == 0, 180, 0.2, f"drain after {name}")
            end = progress.last_increase()
            faults.append(
                {"fault": name, "node": node_name(victim), "remainder": remainder,
                 "pause_s": round(progress.longest_gap(start, end), 2)}
            )  # fmt: skip

        # 1. the leading node's broker application stopped, then started again
        await fault("stop_app leader", 1, ["bash", CLUSTER, "ctl", "1", "stop_app"], 2)
        cluster("ctl", "1", "start_app")
        cluster("ctl", "1", "await_startup")
        # 2. another node (the one now leading most queues) killed, then restarted
        leaders = leader_counts(1, env.prefix)
        victim = busiest(leaders)
        assert victim != 1, leaders
        beam = cluster("pid", str(victim)).strip()
        survivor = next(n for n in NODES if n != victim)
        await fault("kill -9", victim, ["kill", "-9", beam], survivor)
        cluster("start")  # restarts the dead node; its data says it is a member

        assert stream is not None
        expected = stream.expected()
        assert stream.proc is not None
        stream.proc.send_signal(signal.SIGCONT)
        summary = stream.wait(600)
        assert summary["published"] >= 2 * BACKLOG
        probe = Env(vars={**env.vars, "DISPATCHER_AMQP_URL": url(1)}, database=env.database)
        await settle(probe, expected, daemons, progress.tally)
        progress.halt.set()
        progress.join(5)
        reconnects = [scalar(d.metrics(), "dispatcher_amqp_reconnects_total") for d in daemons]
        for d in daemons:
            alive(d)
            assert d.ready()
        # every daemon whose node was lost reconnected by itself
        assert reconnects[0] >= 1 and reconnects[victim - 1] >= 1, reconnects
        assert all(q["members"] and len(q["members"]) == 3 for q in list_queues(1, env.prefix))
        await stop_and_check_drained(probe, daemons, progress.tally)
        await conclude(
            probe,
            capsys,
            "cluster",
            stream,
            expected,
            progress.tally,
            exact=False,
            daemons=len(daemons),
            reconnects="/".join(str(int(r)) for r in reconnects),
        )
        with capsys.disabled():
            for f in faults:
                print(f"[cluster-fault] {json.dumps(f)} lost=0 doubled=0", flush=True)
    finally:
        if progress is not None:
            progress.halt.set()
        if stream is not None and stream.proc is not None and stream.proc.poll() is None:
            stream.proc.send_signal(signal.SIGCONT)
            stream.proc.kill()
            stream.proc.wait()
        for d in daemons:
            d.stop(30)
        await delete_queues(url(1), env.prefix)
