"""Fault tests: a realistic ``dispatcher simulate`` stream with a known in-order final state
(``--expect``), a fault injected mid-stream, recovery, then every server (operstate, deleted,
job fields, buildpercentage, backendtime, NICs) and backend network compared with the
expected state (CONTRACT §5.1, §5.2, §5.4).

Each test prints one line with what it checked: messages sent, distinct, the outcomes the
daemons counted on ``/metrics`` (``dispatcher_messages_total{queue,outcome}``, summed over
the daemon processes of the test; a process killed with -9 contributes its last scrape,
taken just before the kill), the history rows committed and ``mismatches=0``.

"Settled" means: no message ready on the four live queues, the database equal to the
expected state, and the daemons' message counters unchanged over one poll interval; the
daemons are then stopped with SIGTERM (exit 0) and the live queues must hold nothing, so no
message was left unacked or lost. All waits poll with a deadline; the only timed waits are
the ~10 s outages themselves.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from dispatcher.core.messages import InvalidMessage, parse
from dispatcher.core.times import iso
from dispatcher.pipeline.topology import queues
from tests.support import PYTHON, ROOT, Daemon, Env, Gate, as_postgres, wait_until

pytestmark = pytest.mark.slow

SERVICES = str(ROOT / "scripts/services.sh")
STREAMS = ("op", "net", "network", "progress")
VM_FIELDS = (
    "operstate",
    "deleted",
    "backendjobid",
    "backendopcode",
    "backendjobstatus",
    "backendlogmsg",
    "buildpercentage",
    "backendtime",
    "nics",
)
BN_FIELDS = (
    "backend_id",
    "operstate",
    "deleted",
    "backendjobid",
    "backendopcode",
    "backendjobstatus",
    "backendtime",
)
OUTAGE = 10.0  # seconds a service stays down (the fault's duration, not a synchronisation)


# ------------------------------------------------------------------------------------------
# the stream


@dataclass
class Stream:
    """One ``dispatcher simulate`` run: rows created, messages published, expectations."""

    env: Env
    expect_path: Path
    proc: subprocess.Popen[str] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    _stderr: Path | None = None

    @classmethod
    def start(cls, env: Env, tmp: Path, *, vms: int, seed: int, background: bool = False) -> Stream:
        s = cls(env, tmp / f"expect-{seed}.json")
        args = ["simulate", "--vms", str(vms), "--seed", str(seed)]
        args += ["--expect", str(s.expect_path), "--json"]
        if not background:
            s.summary = json.loads(env.cli(*args, timeout=600).stdout)
            return s
        s._stderr = tmp / f"simulate-{seed}.err"
        with open(s._stderr, "wb") as err:
            s.proc = subprocess.Popen(
                [PYTHON, "-m", "dispatcher", *args],
                env={**os.environ, **env.vars},
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        return s

    @property
    def publishing(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float = 600) -> dict[str, Any]:
        if self.proc is not None and not self.summary:
            out, _ = self.proc.communicate(timeout=timeout)
            if self.proc.returncode != 0:
                err = self._stderr.read_text() if self._stderr else ""
                raise AssertionError(f"simulate exited {self.proc.returncode}: {err[-2000:]}")
            self.summary = json.loads(out)
        return self.summary

    def expected(self) -> dict[str, Any]:
        # written before the first message is published
        wait_until(self.expect_path.exists, 120, 0.1, "the expectations file")
        doc: dict[str, Any] = wait_until(lambda: _read_json(self.expect_path), 30, 0.1, "JSON")
        return doc

    @property
    def sent(self) -> int:
        return int(self.wait()["published"])

    @property
    def distinct(self) -> int:
        s = self.wait()
        return int(s["published"]) - int(s["duplicates"])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------
# the database, compared with the expectations


def _dsn(env: Env) -> str:
    return env.vars["DISPATCHER_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")


async def db_state(env: Env) -> dict[str, Any]:
    """Servers and backend networks in the shape of the expectations file."""
    conn = await asyncpg.connect(_dsn(env), timeout=10)
    try:
        vms = await conn.fetch(
            "SELECT id, operstate, deleted, backendjobid, backendopcode, backendjobstatus,"
            " backendlogmsg, buildpercentage, backendtime FROM virtual_machines"
        )
        nics = await conn.fetch(
            "SELECT machine_id, index, network_id, mac, ipv4, ipv6, firewall_profile"
            " FROM network_interfaces ORDER BY machine_id, index"
        )
        bns = await conn.fetch(
            "SELECT network_id, backend_id, operstate, deleted, backendjobid, backendopcode,"
            " backendjobstatus, backendtime FROM backend_networks"
        )
    finally:
        await conn.close()
    servers: dict[str, Any] = {}
    for r in vms:
        doc = dict(r)
        doc["backendtime"] = iso(r["backendtime"])
        doc["nics"] = []
        servers[str(r["id"])] = doc
    for n in nics:
        nic = dict(n)
        servers[str(nic.pop("machine_id"))]["nics"].append(nic)
    networks = {
        str(r["network_id"]): {**dict(r), "backendtime": iso(r["backendtime"])} for r in bns
    }
    return {"servers": servers, "networks": networks}


async def history_rows(env: Env, *, exclude_vm: int | None = None) -> int:
    """Distinct messages committed to the histories (one row per distinct message)."""
    conn = await asyncpg.connect(_dsn(env), timeout=10)
    try:
        vm = await conn.fetchval(
            "SELECT count(*) FROM vm_events WHERE machine_id <> $1", exclude_vm or -1
        )
        net = await conn.fetchval("SELECT count(*) FROM network_events")
    finally:
        await conn.close()
    return int(vm) + int(net)


def mismatches(
    expected: dict[str, Any], actual: dict[str, Any], *, skip: Iterable[str] = ()
) -> list[str]:
    out = []
    skipped = set(skip)
    for vm_id, want in expected["servers"].items():
        if vm_id in skipped:
            continue
        got = actual["servers"].get(vm_id)
        if got is None:
            out.append(f"server {vm_id}: missing")
            continue
        out.extend(
            f"server {vm_id} {k}: expected {want[k]!r}, got {got[k]!r}"
            for k in VM_FIELDS
            if got[k] != want[k]
        )
    for net_id, want in expected["networks"].items():
        got = actual["networks"].get(net_id)
        if got is None:
            out.append(f"backend network of {net_id}: missing")
            continue
        out.extend(
            f"network {net_id} {k}: expected {want[k]!r}, got {got[k]!r}"
            for k in BN_FIELDS
            if got[k] != want[k]
        )
    return out


def cli_state(env: Env) -> dict[str, Any]:
    """The same through the command line (``server list --all --json``, ``network list``)."""
    servers = {str(s["id"]): s for s in env.json("server", "list", "--all")}
    networks = {}
    for net in env.json("network", "list", "--all"):
        for bn in net["backends"]:
            networks[str(net["id"])] = bn
    return {"servers": servers, "networks": networks}


# ------------------------------------------------------------------------------------------
# the broker


async def depths(env: Env, *, dead_letters: bool = False) -> dict[str, int]:
    """Messages ready in each live queue (and each ``-dl`` queue, if asked)."""
    conn = await aio_pika.connect(env.vars["DISPATCHER_AMQP_URL"], timeout=10)
    try:
        channel = await conn.channel()
        out = {}
        for spec in queues(env.prefix):
            names = [spec.name] + ([spec.dead_letter_queue] if dead_letters else [])
            for name in names:
                q = await channel.declare_queue(name, passive=True)
                out[name] = int(q.declaration_result.message_count or 0)
        return out
    finally:
        await conn.close()


async def publish_raw(env: Env, items: list[tuple[str, bytes]]) -> None:
    """Publish bodies as they are (no validation), persistent, with confirms."""
    conn = await aio_pika.connect(env.vars["DISPATCHER_AMQP_URL"], timeout=10)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("ganeti")
        for key, body in items:
            await exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=key,
            )
    finally:
        await conn.close()


def routing_key(env: Env, stream: str) -> str:
    return f"ganeti.{env.prefix}.event.{stream}"


# ------------------------------------------------------------------------------------------
# the daemons and their counters

_MESSAGES = re.compile(r"^dispatcher_messages_total\{([^}]*)\}\s+(\S+)$", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def message_counts(text: str) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for labels, value in _MESSAGES.findall(text):
        lab = dict(_LABEL.findall(labels))
        out[(lab["queue"], lab["outcome"])] += int(float(value))
    return out


def scalar(text: str, name: str) -> float:
    m = re.search(rf"^{name}\s+(\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


class Tally:
    """``dispatcher_messages_total`` of every daemon process of a test: the last scrape of
    each process (by pid), summed."""

    def __init__(self) -> None:
        self.last: dict[int, Counter[tuple[str, str]]] = {}

    def scrape(self, d: Daemon) -> int:
        """Scrape ``d``; returns the number of messages this process has handled."""
        assert d.proc is not None
        try:
            self.last[d.proc.pid] = message_counts(d.metrics())
        except httpx.HTTPError:
            pass  # starting up or just gone: keep the last scrape
        return sum(self.last.get(d.proc.pid, Counter()).values())

    def outcome(self, outcome: str, queue: str | None = None) -> int:
        return sum(
            n
            for c in self.last.values()
            for (q, o), n in c.items()
            if o == outcome and queue in (None, q)
        )

    def handled(self) -> int:
        return sum(sum(c.values()) for c in self.last.values())

    def summary(self) -> dict[str, int]:
        return {
            o: self.outcome(o)
            for o in ("applied", "duplicate", "ignored", "dead_lettered", "retried")
        }


def start_daemons(env: Env, n: int, **extra: str) -> list[Daemon]:
    ds = [Daemon(env, dict(extra)).start(wait_ready=False) for _ in range(n)]
    for d in ds:
        d.wait_ready(90)
    return ds


def alive(d: Daemon) -> None:
    assert d.proc is not None
    if d.proc.poll() is not None:
        raise AssertionError(f"daemon exited {d.proc.returncode}: {d.log()[-3000:]}")


def wait_handled(tally: Tally, daemons: list[Daemon], count: int, timeout: float = 180) -> int:
    """Poll until the test's daemon processes have handled ``count`` messages in all (the
    killed ones by their last scrape); returns the total reached."""
    reached = [0]

    def enough() -> bool:
        for d in daemons:
            alive(d)
            tally.scrape(d)
        reached[0] = tally.handled()
        return reached[0] >= count

    wait_until(enough, timeout, 0.1, f"{count} messages handled")
    return reached[0]


async def settle(
    env: Env,
    expected: dict[str, Any],
    daemons: list[Daemon],
    tally: Tally,
    *,
    timeout: float = 240,
    skip: Iterable[str] = (),
    extra: Callable[[], bool] = lambda: True,
) -> None:
    """Poll until the stream is fully handled and the database equals ``expected``."""
    deadline = time.monotonic() + timeout
    previous = -1
    problems: list[str] = ["not polled yet"]
    while time.monotonic() < deadline:
        for d in daemons:
            alive(d)
        handled = sum(tally.scrape(d) for d in daemons)
        ready = await depths(env)
        stable, previous = handled == previous, handled
        if any(ready.values()):
            problems = [f"ready: {ready}"]
        else:
            problems = mismatches(expected, await db_state(env), skip=skip)
            if not problems and stable and extra():
                return
            if not problems:
                problems = ["counters still moving"]
        await _pause(1.0)
    raise AssertionError(
        f"not settled after {timeout} s: {len(problems)} problems, e.g. {problems[:10]}"
    )


async def _pause(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)  # the poll interval of a deadline loop


async def stop_and_check_drained(env: Env, daemons: list[Daemon], tally: Tally) -> None:
    """SIGTERM every daemon (exit 0 expected), then no live queue holds a message."""
    for d in daemons:
        tally.scrape(d)
    codes = [d.stop(30) for d in daemons]
    assert codes == [0] * len(daemons), [d.log()[-2000:] for d in daemons]
    left = await depths(env)
    assert not any(left.values()), f"messages left unacked or unhandled: {left}"


def final_check(env: Env, expected: dict[str, Any], *, skip: Iterable[str] = ()) -> int:
    """Compare through the CLI; returns the number of mismatches (asserted 0)."""
    problems = mismatches(expected, cli_state(env), skip=skip)
    assert not problems, f"{len(problems)} mismatches, e.g. {problems[:10]}"
    return len(problems)


def report(capsys: pytest.CaptureFixture[str], name: str, **counts: Any) -> None:
    line = f"[fault:{name}] " + " ".join(f"{k}={v}" for k, v in counts.items())
    with capsys.disabled():
        print("\n" + line, flush=True)


async def conclude(
    env: Env,
    capsys: pytest.CaptureFixture[str],
    name: str,
    stream: Stream,
    expected: dict[str, Any],
    tally: Tally,
    *,
    exact: bool,
    **figures: Any,
) -> None:
    """The checks every fault test with a clean stream ends with, and its report line.

    ``exact``: every distinct message was counted as applied or ignored by a process whose
    metrics were read. A process killed (or cut off from the broker) after a commit and
    before its last scrape or its ack leaves some uncounted, so the sum may only fall short.
    """
    rows = await history_rows(env)
    assert rows == stream.distinct
    bad = final_check(env, expected)
    counts = tally.summary()
    assert counts["dead_lettered"] == 0 and counts["retried"] == 0
    handled = counts["applied"] + counts["ignored"]
    if exact:
        assert handled == stream.distinct, (handled, stream.distinct)
    else:
        assert handled <= stream.distinct, (handled, stream.distinct)
    left = await depths(env, dead_letters=True)
    assert not any(left.values()), left
    report(
        capsys,
        name,
        sent=stream.sent,
        distinct=stream.distinct,
        **figures,
        **counts,
        history_rows=rows,
        servers=len(expected["servers"]),
        networks=len(expected["networks"]),
        mismatches=bad,
    )


def service(action: str, attempts: int = 3) -> None:
    """``scripts/services.sh ACTION``, retried (another session may be starting it too)."""
    last = None
    for _ in range(attempts):
        last = subprocess.run(
            ["bash", SERVICES, action], capture_output=True, text=True, timeout=300
        )
        if last.returncode == 0:
            return
    assert last is not None
    raise AssertionError(f"services.sh {action} failed: {last.stderr[-2000:]}")


def readyz(d: Daemon) -> int | None:
    try:
        return httpx.get(f"http://127.0.0.1:{d.port}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return None


def pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]).returncode == 0


def terminate_backends(database: str) -> int:
    """``pg_terminate_backend`` on every connection to ``database``, as the superuser."""
    sql = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        f" WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    return int(as_postgres("postgres", sql).strip() or 0)


def terminate_some_backends(database: str, deadline_s: float = 30.0) -> int:
    """Terminate the daemon's connections, polling until there is at least one.

    Right after a previous round the daemon may hold no connection at all (it is
    between its back-off sleep and the next checkout), so one empty sweep means
    "not yet", not "never".
    """
    end = time.monotonic() + deadline_s
    while True:
        n = terminate_backends(database)
        if n >= 1 or time.monotonic() > end:
            return n
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------
# 1. kill -9 of the daemon, several times during one 20,000-message stream


async def test_kill9_daemon_repeatedly(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = Stream.start(env, tmp_path, vms=1200, seed=101, background=True)
    expected = stream.expected()
    tally = Tally()
    d = start_daemons(env, 1)[0]
    kills = 0
    try:
        # kill it whenever 3,000 more messages were handled, in all: the last kill comes
        # with 5,000+ of the 20,000+ deliveries still to go
        for mark in range(3000, 15001, 3000):
            wait_handled(tally, [d], mark)
            tally.scrape(d)
            d.kill()
            kills += 1
            d = start_daemons(env, 1)[0]
        stream.wait()
        assert stream.sent >= 20_000
        await settle(env, expected, [d], tally)
        await stop_and_check_drained(env, [d], tally)
    finally:
        d.kill()
        if stream.proc is not None and stream.proc.poll() is None:
            stream.proc.kill()
    await conclude(
        env,
        capsys,
        "kill-9",
        stream,
        expected,
        tally,
        exact=False,
        kills=kills,
        processes=len(tally.last),
    )


# ------------------------------------------------------------------------------------------
# 2. RabbitMQ stopped for ~10 s mid-stream; the daemon reconnects by itself


async def test_broker_outage(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = Stream.start(env, tmp_path, vms=600, seed=202)  # the backlog, published first
    expected = stream.expected()
    tally = Tally()
    gate = await Gate(env).close()  # the broker goes while a batch is in hand
    try:
        d = start_daemons(env, 1)[0]
    except BaseException:
        await gate.open()
        raise
    pid = d.proc.pid if d.proc else 0
    try:
        await gate.blocked()
        tally.scrape(d)
        down_at = time.monotonic()
        try:
            service("stop-rabbitmq")
            # the daemon stays up and reports not ready while the broker is gone
            wait_until(lambda: readyz(d) == 503, 30, 0.2, "/readyz 503 without the broker")
            await gate.open()  # the daemon may go on with whatever it still holds
            while time.monotonic() - down_at < OUTAGE:
                alive(d)
                await _pause(0.2)
        finally:
            await gate.open()
            service("start-rabbitmq")
        outage = time.monotonic() - down_at
        wait_until(lambda: readyz(d) == 200, 120, 0.2, "/readyz 200 after the broker is back")
        await settle(env, expected, [d], tally)
        assert d.proc is not None and d.proc.pid == pid  # the same process throughout
        reconnects = scalar(d.metrics(), "dispatcher_amqp_reconnects_total")
        assert reconnects >= 1
        await stop_and_check_drained(env, [d], tally)
    finally:
        d.kill()
    await conclude(
        env,
        capsys,
        "broker-outage",
        stream,
        expected,
        tally,
        exact=False,
        outage_s=round(outage, 1),
        reconnects=int(reconnects),
    )


# ------------------------------------------------------------------------------------------
# 3. PostgreSQL stopped for ~10 s mid-stream; the daemon pauses, retries and catches up


async def test_database_outage(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = Stream.start(env, tmp_path, vms=600, seed=303)
    expected = stream.expected()
    tally = Tally()
    # the database goes while a batch is in hand: its transaction is cut, so the daemon
    # must wait the outage out with that batch (and count it)
    gate = await Gate(env).close()
    try:
        # back-off capped at 2 s, so that catching up does not wait out a long back-off step
        d = start_daemons(env, 1, DISPATCHER_DB_RETRY_MAX="2")[0]
    except BaseException:
        await gate.open()
        raise
    try:
        assert readyz(d) == 200
        await gate.blocked()
        tally.scrape(d)
        down_at = time.monotonic()
        try:
            service("stop-postgres")  # ends the gate's session too
            wait_until(lambda: readyz(d) == 503, 30, 0.2, "/readyz 503 without the database")
            stalled = tally.scrape(d)
            while time.monotonic() - down_at < OUTAGE:
                alive(d)
                await _pause(0.2)
            # nothing was taken off the queues while the database was away (unless another
            # session on this machine started it again meanwhile: its fixtures may)
            if not pg_ready():
                assert tally.scrape(d) == stalled
                assert readyz(d) == 503
        finally:
            await gate.open()
            service("start-postgres")
        outage = time.monotonic() - down_at
        wait_until(lambda: readyz(d) == 200, 120, 0.2, "/readyz 200 after the database is back")
        await settle(env, expected, [d], tally)
        db_reconnects = scalar(d.metrics(), "dispatcher_db_reconnects_total")
        assert db_reconnects >= 1
        await stop_and_check_drained(env, [d], tally)
    finally:
        d.kill()
    await conclude(
        env,
        capsys,
        "database-outage",
        stream,
        expected,
        tally,
        exact=True,
        outage_s=round(outage, 1),
        db_pauses=int(db_reconnects),
    )


# ------------------------------------------------------------------------------------------
# 4. the daemon's database connections killed server-side, repeatedly


async def test_database_connections_terminated(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = Stream.start(env, tmp_path, vms=600, seed=404, background=True)
    expected = stream.expected()
    tally = Tally()
    d = start_daemons(env, 1)[0]
    terminated: list[int] = []
    try:
        for mark in range(1100, 8801, 1100):  # of 10,000+ deliveries
            wait_handled(tally, [d], mark)
            terminated.append(terminate_some_backends(env.database))
        stream.wait()
        await settle(env, expected, [d], tally)
        db_pauses = scalar(d.metrics(), "dispatcher_db_reconnects_total")
        await stop_and_check_drained(env, [d], tally)
    finally:
        d.kill()
        if stream.proc is not None and stream.proc.poll() is None:
            stream.proc.kill()
    # every round found connections of the daemon, busy with the stream
    assert all(n >= 1 for n in terminated), terminated
    await conclude(
        env,
        capsys,
        "pg-terminate",
        stream,
        expected,
        tally,
        exact=True,
        rounds=len(terminated),
        backends_terminated=sum(terminated),
        db_pauses=int(db_pauses),
    )


# ------------------------------------------------------------------------------------------
# 5. a poison message: bounded retries, dead-lettered with its reason, nothing blocked


async def test_poison_message(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = Stream.start(env, tmp_path, vms=300, seed=505)
    expected = stream.expected()
    poison_vm = int(stream.summary["first_vm"]) + 4
    poison = f"{env.prefix}-{poison_vm}"
    retries = 3
    tally = Tally()
    d = start_daemons(
        env,
        1,
        DISPATCHER_FAULT_INJECT_INSTANCES=json.dumps([poison]),
        DISPATCHER_MAX_RETRIES=str(retries),
    )[0]

    def all_retried() -> bool:
        dead = tally.outcome("dead_lettered")
        return dead > 0 and tally.outcome("retried") == retries * dead

    try:
        await settle(env, expected, [d], tally, skip=[str(poison_vm)], extra=all_retried)
        await stop_and_check_drained(env, [d], tally)
    finally:
        d.kill()
    # the poisoned server never changed; every other one is as expected
    bad = final_check(env, expected, skip=[str(poison_vm)])
    untouched = env.json("server", "show", str(poison_vm))
    assert untouched["operstate"] == "BUILD" and untouched["backendjobid"] is None
    assert untouched["buildpercentage"] == 0 and untouched["backendtime"] is None
    # its messages are in the dead-letter queues, with the reason and the attempts
    letters = {s: env.json("queue", "inspect", f"{env.prefix}-events-{s}") for s in STREAMS}
    op_letters = letters["op"]
    assert op_letters, "no op-status dead letter"
    for dl in (x for ls in letters.values() for x in ls):
        assert json.loads(dl["body"])["instance"] == poison
        assert f"injected fault for {poison}" in dl["reason"], dl["reason"]
        assert f"after {retries + 1} attempts" in dl["reason"], dl["reason"]
        assert dl["headers"]["x-dispatcher-retries"] == retries
    n_letters = sum(map(len, letters.values()))
    assert n_letters == tally.outcome("dead_lettered")
    assert tally.outcome("retried") == retries * n_letters
    # every distinct message but the poisoned ones is in the history
    poisoned_distinct = len({dl["body"] for ls in letters.values() for dl in ls})
    rows = await history_rows(env)
    assert await history_rows(env, exclude_vm=poison_vm) == rows
    assert rows + poisoned_distinct == stream.distinct
    counts = tally.summary()
    report(
        capsys,
        "poison",
        sent=stream.sent,
        distinct=stream.distinct,
        poisoned=poison,
        max_retries=retries,
        **counts,
        dead_letter_op=len(op_letters),
        dead_letter_all=n_letters,
        history_rows=rows,
        servers=len(expected["servers"]) - 1,
        networks=len(expected["networks"]),
        mismatches=bad,
    )


# ------------------------------------------------------------------------------------------
# 6. three daemons at once, one killed (-9) and restarted repeatedly


async def test_three_daemons_one_killed(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = Stream.start(env, tmp_path, vms=600, seed=606, background=True)
    expected = stream.expected()
    tally = Tally()
    daemons = start_daemons(env, 3)
    kills = 0
    try:
        for mark in range(1500, 6001, 1500):  # of 10,000+ deliveries
            victim = daemons[2]
            wait_handled(tally, daemons, mark)
            tally.scrape(victim)
            victim.kill()
            kills += 1
            daemons[2] = start_daemons(env, 1)[0]
        stream.wait()
        await settle(env, expected, daemons, tally)
        await stop_and_check_drained(env, daemons, tally)
    finally:
        for d in daemons:
            d.kill()
        if stream.proc is not None and stream.proc.poll() is None:
            stream.proc.kill()
    await conclude(
        env,
        capsys,
        "three-daemons",
        stream,
        expected,
        tally,
        exact=False,
        kills=kills,
        processes=len(tally.last),
    )


# ------------------------------------------------------------------------------------------
# 7. fuzzing: hypothesis-generated bodies on every queue, interleaved with a valid stream


def fuzz_bodies(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """About ``count`` (category, body) pairs drawn by hypothesis, a fixed share per
    category (derandomized: the same bodies on every run)."""
    from hypothesis import strategies as st

    foreign_instance = st.sampled_from(
        ["other-5", f"{prefix}-999999", f"{prefix}-abc", f"{prefix}-05", f"{prefix}-", ""]
    )
    foreign_network = st.sampled_from(
        ["other-net-1", f"{prefix}-net-999999", f"{prefix}-net-x", "net"]
    )
    event_time = st.lists(st.integers(0, 2_000_000_000), min_size=2, max_size=2).map(
        lambda t: [t[0], t[1] % 1_000_000]
    )
    status = st.sampled_from(
        ["queued", "waiting", "canceling", "running", "canceled", "success", "error"]
    )
    nic = st.fixed_dictionaries(
        {"network": foreign_network},
        optional={
            "mac": st.text(max_size=20),
            "ip": st.none() | st.text(max_size=20),
            "firewall": st.sampled_from(["protected", "unprotected", "limited", "x"]),
        },
    )
    valid = st.one_of(
        st.fixed_dictionaries(
            {
                "type": st.just("ganeti-op-status"),
                "instance": foreign_instance,
                "operation": st.sampled_from(["OP_INSTANCE_CREATE", "OP_INSTANCE_REMOVE", "OP_X"]),
                "jobId": st.integers(0, 2**63 - 1),
                "status": status,
                "logmsg": st.none() | st.text(max_size=50),
                "event_time": event_time,
            },
            optional={"instance_nics": st.lists(nic, max_size=3)},
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("ganeti-net-status"),
                "instance": foreign_instance,
                "nics": st.lists(nic, max_size=3),
                "event_time": event_time,
            }
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("ganeti-create-progress"),
                "instance": foreign_instance,
                "rprogress": st.integers(-10, 1000) | st.floats(-1e9, 1e9),
                "event_time": event_time,
            }
        ),
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(["image-info", "image-warning", "image-error"]),
                "instance": foreign_instance,
                "messages": st.lists(st.text(max_size=20), max_size=3),
                "event_time": event_time,
            }
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("ganeti-network-status"),
                "network": foreign_network,
                "operation": st.sampled_from(["OP_NETWORK_ADD", "OP_NETWORK_REMOVE"]),
                "jobId": st.integers(0, 10**9),
                "status": status,
                "logmsg": st.none(),
                "event_time": event_time,
                "cluster": st.text(min_size=1, max_size=30),
            }
        ),
    )
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=20,
    )
    # for each field, values of a type (or range) the contract rejects
    wrong_for: dict[str, list[Any]] = {
        "type": [5, None, "ganeti-op", ["ganeti-op-status"]],
        "instance": [5, None, ["a"], {"a": 1}, "i" * 256],
        "network": [5, None, ["a"], "n" * 256],
        "operation": [5, None, ["OP_X"]],
        "cluster": [5, None, {"c": 1}],
        "jobId": ["1", 1.5, True, None, -1, 2**63, [1]],
        "status": ["done", 1, None, "SUCCESS"],
        "logmsg": [5, ["a"], {"m": "x"}, False],
        "event_time": ["x", [1], [1, 2, 3], [1, 10**6], [-1, 0], [1.5, 0], ["1", "0"], None],
        "nics": ["x", [1], [{"mac": "aa"}], [{"network": 5}], None],
        "instance_nics": ["x", [1], [{"mac": "aa"}], [{"network": None}]],
        "rprogress": ["3", None, True, [3]],
        "messages": [5, [1], {"a": "b"}],
    }

    def dump(doc: Any) -> bytes:
        return json.dumps(doc).encode()

    def with_wrong(pair: tuple[dict[str, Any], int, int]) -> bytes:
        doc, which, value = pair
        key = sorted(doc)[which % len(doc)]
        choices = wrong_for[key]
        return dump({**doc, key: choices[value % len(choices)]})

    def nested(depth: int) -> bytes:
        return b"[" * depth + b"]" * depth

    categories: list[tuple[str, Any, int]] = [
        # foreign / unknown names: valid, so acked as ignored on their own queue
        ("valid-foreign", valid.map(dump), 24),
        ("random-json", json_values.map(dump), 16),
        ("truncated", st.tuples(valid, st.integers(1, 10**6)).map(_truncate), 16),
        (
            "wrong-type",
            st.tuples(valid, st.integers(0, 20), st.integers(0, 20)).map(with_wrong),
            24,
        ),
        (
            "huge-body",
            st.tuples(valid, st.integers(1024 * 1024, 2 * 1024 * 1024)).map(
                lambda p: dump({**p[0], "logmsg": "x" * p[1]})
            ),
            3,
        ),
        (
            "huge-name",
            st.tuples(valid, st.integers(256, 100_000)).map(
                lambda p: dump({**p[0], "instance": "i" * p[1], "network": "n" * p[1]})
            ),
            6,
        ),
        (
            "huge-extra",
            st.tuples(valid, st.integers(1000, 200_000)).map(
                lambda p: dump({**p[0], "padding": "p" * p[1]})
            ),
            6,
        ),
        ("deep", st.integers(50, 20_000).map(nested), 8),
        (
            "deep-field",
            st.tuples(valid, st.integers(100, 5000)).map(
                lambda p: dump(p[0])[:-1] + b', "x": ' + nested(p[1]) + b"}"
            ),
            8,
        ),
        ("non-utf8", st.binary(min_size=1, max_size=200).filter(_not_utf8), 12),
        ("non-utf8-in-json", valid.map(lambda d: dump(d)[:-1] + b', "x": "\xff\xfe"}'), 6),
    ]
    return [
        (name, body)
        for name, strategy, n in categories
        for body in _draw(strategy, max(1, n * count // 128))
    ]


def _draw(strategy: Any, examples: int) -> list[bytes]:
    from hypothesis import HealthCheck, Phase, given, settings

    drawn: list[bytes] = []

    @settings(
        max_examples=examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(body: bytes) -> None:
        drawn.append(body)

    collect()
    return drawn


def _truncate(pair: tuple[dict[str, Any], int]) -> bytes:
    whole = json.dumps(pair[0]).encode()
    return whole[: 1 + pair[1] % (len(whole) - 1)]


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def expected_outcome(body: bytes, stream: str) -> str:
    """CONTRACT §5.4 for a body on ``stream``'s queue (its names are never ours)."""
    try:
        msg = parse(body)
    except InvalidMessage:
        return "dead_lettered"
    accepts = {s.name.rsplit("-", 1)[-1]: s.accepts for s in queues("p")}
    return "ignored" if msg.type in accepts[stream] else "dead_lettered"


async def test_fuzzed_bodies(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fuzz = fuzz_bodies(env.prefix, 128)
    by_category = Counter(c for c, _ in fuzz)
    for must in ("truncated", "wrong-type", "huge-body", "deep", "non-utf8", "random-json"):
        assert by_category[must], by_category
    # every body on every queue's routing key, with the outcome the contract gives it
    items = [(s, c, b) for c, b in fuzz for s in STREAMS]
    want = Counter((s, expected_outcome(b, s)) for s, _, b in items)
    for s, c, b in items:
        if c in ("truncated", "wrong-type", "huge-body", "deep", "non-utf8", "non-utf8-in-json"):
            assert expected_outcome(b, s) == "dead_lettered", (c, b[:200])
    stream = Stream.start(env, tmp_path, vms=300, seed=707, background=True)
    expected = stream.expected()
    tally = Tally()
    d = start_daemons(env, 1)[0]
    try:
        # interleave: a slice of the fuzz after each few hundred valid messages
        chunks = 8
        for k in range(chunks):
            wait_handled(tally, [d], 400 * k)  # of 5,000+ valid deliveries
            part = items[k::chunks]
            await publish_raw(env, [(routing_key(env, s), b) for s, _, b in part])

        def all_fuzz_seen() -> bool:
            return all(
                tally.outcome("dead_lettered", f"{env.prefix}-events-{s}") == n
                for (s, o), n in want.items()
                if o == "dead_lettered"
            )

        stream.wait()
        await settle(env, expected, [d], tally, extra=all_fuzz_seen)
        await stop_and_check_drained(env, [d], tally)
    finally:
        d.kill()
        if stream.proc is not None and stream.proc.poll() is None:
            stream.proc.kill()
    rows = await history_rows(env)
    assert rows == stream.distinct  # fuzz added nothing to any history
    bad = final_check(env, expected)
    # per queue: exactly the expected dead letters, each with a reason, bodies intact
    left = await depths(env, dead_letters=True)
    for s in STREAMS:
        q = f"{env.prefix}-events-{s}"
        assert tally.outcome("dead_lettered", q) == want[(s, "dead_lettered")], s
        assert left[f"{q}-dl"] == want[(s, "dead_lettered")], (s, left)
        assert tally.outcome("retried", q) == 0
        # the valid stream's own ignored messages come on top of the fuzz's
        assert tally.outcome("ignored", q) >= want[(s, "ignored")]
    letters = env.json("queue", "inspect", f"{env.prefix}-events-op")
    assert all(dl["reason"] for dl in letters)
    got_bodies = Counter(
        base64.b64decode(dl["body"]) if dl["body_encoding"] == "base64" else dl["body"].encode()
        for dl in letters
    )
    want_bodies = Counter(
        b for s, _, b in items if s == "op" and expected_outcome(b, s) == "dead_lettered"
    )
    assert got_bodies == want_bodies
    counts = tally.summary()
    report(
        capsys,
        "fuzz",
        sent=stream.sent,
        distinct=stream.distinct,
        fuzz_bodies=len(fuzz),
        fuzz_published=len(items),
        fuzz_dead_lettered=sum(n for (_, o), n in want.items() if o == "dead_lettered"),
        fuzz_ignored=sum(n for (_, o), n in want.items() if o == "ignored"),
        categories=dict(by_category),
        **counts,
        history_rows=rows,
        servers=len(expected["servers"]),
        networks=len(expected["networks"]),
        mismatches=bad,
    )
