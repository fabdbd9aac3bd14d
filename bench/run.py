"""Throughput, latency and memory of the event pipeline, against the broker's ceiling and a
naive consumer, on this machine's real RabbitMQ and PostgreSQL.

Run from the repository root, with the services up (``bash scripts/services.sh start``)::

    .venv/bin/python -m bench.run             # full run: 100,000-message backlog, 10,000 VMs
    .venv/bin/python -m bench.run --quick     # small sizes, a couple of minutes
    .venv/bin/python -m bench.run --help      # every size is a flag

It prints one table (see ``bench/README.md`` for what each figure means) and, with
``--json FILE``, writes the figures as JSON. Everything happens in databases and queues of
its own (``bench_<random>_*``, prefix ``bench<random>``), dropped at the end.

Phases, in this order, each on a fresh database cloned from one migrated template:

1. **raw** - the backlog (``--messages`` messages of a ``dispatcher simulate`` stream for
   ``--vms`` VMs: shuffled, 15 % re-emitted; durable quorum queues, persistent messages) is
   published, then drained by an aio-pika consumer that only acks (prefetch 256, one
   ``multiple`` ack per burst): the broker's ceiling.
2. **naive** - the same backlog, drained by a consumer that does one database transaction
   per message through the SQLAlchemy ORM (parse, load the VM or backend network, update its
   fields, commit, ack; NIC lists are not applied, so it does less work than the daemon).
3. **dispatcher** - the same backlog, published with the daemon stopped, drained by
   ``dispatcher run`` (a subprocess) until its ``/metrics`` count every message handled and
   the histories hold every distinct message. The rate is taken from ``/readyz`` answering
   200 to the last message handled.
4. **latency** - the same daemon, a new world of VMs, a stream published at a steady
   ``--rate`` msg/s for ``--latency-seconds``. Publish time: the publisher's clock right
   before each ``basic.publish``. Commit time: a trigger on the bench database's
   ``vm_events`` sends ``pg_notify`` per inserted history row, and PostgreSQL delivers a
   notification only when the inserting transaction commits; a listener (own thread, own
   connection) stamps its arrival. Latency = commit time - first publish time of that
   distinct message, for every VM message of the stream.
5. **memory** - the same daemon keeps going (new worlds, new streams) until
   ``--rss-messages`` messages were handled in all; RSS (``/proc/<pid>/status`` VmRSS) after
   the first ``--messages`` and at the end, and the peak (VmHWM).
6. **1M rows** - phase 3 twice more, back to back: on a database like phase 3's, then on
   one that also holds ``--big-rows`` VM rows in all
   (the extra ones inserted with one ``INSERT ... SELECT generate_series``, then
   ``VACUUM (ANALYZE)`` so that autovacuum of the bulk insert does not run during the drain).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from dispatcher.core.messages import InvalidMessage, NetworkStatus, OpStatus, parse
from dispatcher.core.names import network_id_from_name, vm_id_from_instance
from dispatcher.core.times import datetime_from_us
from dispatcher.db.models import Backend, BackendNetwork, VirtualMachine
from dispatcher.pipeline.topology import queues
from dispatcher.settings import Settings
from dispatcher.simulation.publish import SIM_CLUSTER, World, create_world, publish
from dispatcher.simulation.streams import Generator
from tests.support import PYTHON, ROOT, SERVICES, free_port, pg_dsn, script_env, with_db

OPSTATE = {
    "OP_INSTANCE_CREATE": "STARTED",
    "OP_INSTANCE_STARTUP": "STARTED",
    "OP_INSTANCE_REBOOT": "STARTED",
    "OP_INSTANCE_SHUTDOWN": "STOPPED",
    "OP_INSTANCE_REMOVE": "DESTROYED",
}
BN_OPSTATE = {
    "OP_NETWORK_ADD": "PENDING",
    "OP_NETWORK_CONNECT": "ACTIVE",
    "OP_NETWORK_DISCONNECT": "PENDING",
    "OP_NETWORK_REMOVE": "DELETED",
}

Messages = list[tuple[str, dict[str, Any]]]


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------
# services, databases, queues


def service_urls() -> tuple[str, str]:
    """The database and broker URLs: from the environment, else ``services.sh env``."""
    db, amqp = os.environ.get("DISPATCHER_DATABASE_URL"), os.environ.get("DISPATCHER_AMQP_URL")
    if db and amqp:
        return db, amqp
    env = script_env(SERVICES)
    return db or env["DISPATCHER_DATABASE_URL"], amqp or env["DISPATCHER_AMQP_URL"]


@dataclass
class Bench:
    base_url: str
    amqp_url: str
    queue_type: str = "quorum"
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    databases: list[str] = field(default_factory=list)
    _template: str = ""

    @property
    def prefix(self) -> str:
        return f"bench{self.tag}"

    def url(self, db: str) -> str:
        return with_db(self.base_url, db)

    def settings(self, db: str, **extra: Any) -> Settings:
        return Settings(
            database_url=self.url(db),
            amqp_url=self.amqp_url,
            prefix=self.prefix,
            http_listen="",
            queue_type=self.queue_type,
            **extra,
        )

    def env(self, db: str, port: int) -> dict[str, str]:
        return {
            **os.environ,
            "DISPATCHER_DATABASE_URL": self.url(db),
            "DISPATCHER_AMQP_URL": self.amqp_url,
            "DISPATCHER_PREFIX": self.prefix,
            "DISPATCHER_QUEUE_TYPE": self.queue_type,
            "DISPATCHER_HTTP_LISTEN": f"127.0.0.1:{port}",
            "DISPATCHER_LOG_LEVEL": "INFO",
        }

    async def admin(self, sql: str) -> None:
        conn = await asyncpg.connect(pg_dsn(self.url("postgres")))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def template(self) -> str:
        if not self._template:
            name = f"bench_{self.tag}_tpl"
            await self.admin(f'CREATE DATABASE "{name}"')
            self.databases.append(name)
            env = {**os.environ, "DISPATCHER_DATABASE_URL": self.url(name)}
            subprocess.run(
                [PYTHON, "-m", "dispatcher", "migrate"],
                env=env,
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
            self._template = name
        return self._template

    async def fresh_db(self, label: str) -> str:
        name = f"bench_{self.tag}_{label}"
        await self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{await self.template()}"')
        self.databases.append(name)
        return name

    async def cleanup(self) -> None:
        for name in reversed(self.databases):
            with contextlib.suppress(Exception):
                await self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with contextlib.suppress(Exception):
            conn = await aio_pika.connect(self.amqp_url, timeout=10)
            async with conn:
                for spec in queues(self.prefix):
                    for name in (spec.name, spec.dead_letter_queue):
                        channel = await conn.channel()
                        with contextlib.suppress(Exception):
                            await channel.queue_delete(name)

    async def depth(self) -> int:
        conn = await aio_pika.connect(self.amqp_url, timeout=10)
        async with conn:
            channel = await conn.channel()
            total = 0
            for spec in queues(self.prefix):
                q = await channel.declare_queue(spec.name, passive=True)
                total += int(q.declaration_result.message_count or 0)
            return total

    async def purge(self) -> None:
        conn = await aio_pika.connect(self.amqp_url, timeout=10)
        async with conn:
            channel = await conn.channel()
            for spec in queues(self.prefix):
                q = await channel.declare_queue(spec.name, passive=True)
                await q.purge()


async def world_of(bench: Bench, db: str, vms: int) -> World:
    engine = create_async_engine(bench.url(db), pool_size=1)
    try:
        return await create_world(engine, vms)
    finally:
        await engine.dispose()


def stream_for(bench: Bench, world: World, seed: int, limit: int) -> Messages:
    """A ``dispatcher simulate`` stream for ``world`` (shuffled, duplicated), first ``limit``
    messages."""
    gen = Generator(
        bench.prefix,
        SIM_CLUSTER,
        world.networks,
        seed=seed,
        start_us=time.time_ns() // 1000 - 3_600_000_000,
        job_base=1_000_000 + seed * 10_000_000,
    )
    stream = gen.stream(
        world.vm_ids, remove_networks={world.networks[-1].id: True}, reorder_window=50
    )
    return stream.messages[:limit]


def distinct_count(messages: Messages) -> int:
    return len({json.dumps(b, sort_keys=True) for _, b in messages})


async def publish_backlog(bench: Bench, db: str, messages: Messages) -> float:
    started = time.monotonic()
    await publish(bench.settings(db), messages, window=512)
    rate = len(messages) / (time.monotonic() - started)
    log(f"published {len(messages)} messages ({rate:.0f} msg/s)")
    return rate


# ------------------------------------------------------------------------------------------
# 1. raw: only acks


def _into(inbox: asyncio.Queue[Any]) -> Any:
    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        inbox.put_nowait(message)

    return on_message


async def drain_raw(bench: Bench, expected: int, prefetch: int = 256) -> float:
    conn = await aio_pika.connect(bench.amqp_url, timeout=10)
    async with conn:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        started = time.monotonic()
        for spec in queues(bench.prefix):
            q = await channel.declare_queue(spec.name, passive=True)
            await q.consume(_into(inbox))
        got = 0
        while got < expected:
            last = await inbox.get()
            got += 1
            while not inbox.empty():
                last = inbox.get_nowait()
                got += 1
            await last.ack(multiple=True)
        return expected / (time.monotonic() - started)


# ------------------------------------------------------------------------------------------
# 2. naive: one ORM transaction per message


async def drain_naive(bench: Bench, db: str, limit: int) -> float:
    engine = create_async_engine(bench.url(db), pool_size=2)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as s:
        backends = {b.clustername: b.id for b in await s.scalars(select(Backend))}
    conn = await aio_pika.connect(bench.amqp_url, timeout=10)
    try:
        async with conn:
            channel = await conn.channel()
            await channel.set_qos(prefetch_count=256)
            inbox: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
            started = time.monotonic()
            for spec in queues(bench.prefix):
                q = await channel.declare_queue(spec.name, passive=True)
                await q.consume(_into(inbox))
            for _ in range(limit):
                message = await inbox.get()
                with contextlib.suppress(InvalidMessage):
                    await naive_apply(sessions, bench.prefix, backends, message.body)
                await message.ack()
            return limit / (time.monotonic() - started)
    finally:
        await engine.dispose()


async def naive_apply(
    sessions: async_sessionmaker[Any], prefix: str, backends: dict[str, int], body: bytes
) -> None:
    msg = parse(body)
    us = msg.event_time_us
    async with sessions() as s, s.begin():
        if isinstance(msg, NetworkStatus):
            net_id = network_id_from_name(prefix, msg.network)
            bn = await s.scalar(
                select(BackendNetwork).where(
                    BackendNetwork.network_id == net_id,
                    BackendNetwork.backend_id == backends.get(msg.cluster, -1),
                )
            )
            if bn is None:
                return
            bn.backendjobid, bn.backendopcode = msg.jobId, msg.operation
            bn.backendjobstatus, bn.backendlogmsg = msg.status, msg.logmsg
            bn.backendtime = datetime_from_us(us)
            if msg.status == "success" and msg.operation in BN_OPSTATE:
                bn.operstate = BN_OPSTATE[msg.operation]
            return
        vm_id = vm_id_from_instance(prefix, msg.instance)
        vm = await s.get(VirtualMachine, vm_id) if vm_id is not None else None
        if vm is None or vm.deleted:
            return
        if isinstance(msg, OpStatus):
            vm.backendjobid, vm.backendopcode = msg.jobId, msg.operation
            vm.backendjobstatus, vm.backendlogmsg = msg.status, msg.logmsg
            if msg.status == "success" and msg.operation in OPSTATE:
                vm.operstate = OPSTATE[msg.operation]
                vm.deleted = msg.operation == "OP_INSTANCE_REMOVE"
        elif hasattr(msg, "rprogress"):
            vm.buildpercentage = min(100, max(0, int(msg.rprogress)))
        vm.backendtime = datetime_from_us(us)


# ------------------------------------------------------------------------------------------
# 3. dispatcher run


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @classmethod
    def start(
        cls, bench: Bench, db: str, log_path: Path, extra: dict[str, str] | None = None
    ) -> Daemon:
        port = free_port()
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [PYTHON, "-m", "dispatcher", "run"],
                env={**bench.env(db, port), **(extra or {})},
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return cls(proc, port, log_path)

    def get(self, path: str) -> httpx.Response | None:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5, trust_env=False)
        except httpx.HTTPError:
            return None

    def wait_ready(self, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            r = self.get("/readyz")
            if r is not None and r.status_code == 200:
                return time.monotonic()
            time.sleep(0.02)
        raise RuntimeError("daemon not ready")

    def handled(self) -> int:
        r = self.get("/metrics")
        if r is None:
            return -1
        total = 0.0
        for line in r.text.splitlines():
            if line.startswith("dispatcher_messages_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def batch_stats(self) -> tuple[float, float, float]:
        """(batches, messages in them, seconds spent on them) so far."""
        r = self.get("/metrics")
        values = {}
        for line in (r.text if r is not None else "").splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("dispatcher_batch_"):
                values[name] = float(value)
        return (
            values.get("dispatcher_batch_size_messages_count", 0.0),
            values.get("dispatcher_batch_size_messages_sum", 0.0),
            values.get("dispatcher_batch_processing_seconds_sum", 0.0),
        )

    def wait_handled(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check()
            if self.handled() >= count:
                return time.monotonic()
            time.sleep(0.05)
        raise RuntimeError(f"{count} messages not handled in {timeout} s ({self.handled()})")

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM in KiB."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def check(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"daemon exited {self.proc.returncode}: {tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def history_rows(bench: Bench, db: str) -> int:
    conn = await asyncpg.connect(pg_dsn(bench.url(db)))
    try:
        vm = await conn.fetchval("SELECT count(*) FROM vm_events")
        net = await conn.fetchval("SELECT count(*) FROM network_events")
        return int(vm) + int(net)
    finally:
        await conn.close()


async def drain_dispatcher(
    bench: Bench,
    db: str,
    messages: Messages,
    log_path: Path,
    *,
    keep: bool = False,
    attach: Any = None,
) -> tuple[float, Daemon]:
    """Start the daemon on a published backlog; messages/s from ready to all handled."""
    daemon = Daemon.start(bench, db, log_path)
    if attach is not None:
        attach(daemon)
    try:
        t0 = daemon.wait_ready()
        t1 = daemon.wait_handled(len(messages), timeout=max(120, len(messages) / 100))
        rows = await history_rows(bench, db)
        if rows != distinct_count(messages):
            raise RuntimeError(f"{rows} history rows, {distinct_count(messages)} expected")
    except BaseException:
        daemon.stop()
        raise
    if not keep:
        daemon.stop()
    return len(messages) / (t1 - t0), daemon


# ------------------------------------------------------------------------------------------
# 4. latency at a steady rate


_TRIGGER = """
CREATE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('bench_commit', NEW.machine_id::text || ':' || encode(NEW.digest, 'hex'));
  RETURN NULL;
END $$;
CREATE TRIGGER bench_commit AFTER INSERT ON vm_events
  FOR EACH ROW EXECUTE FUNCTION bench_notify();
"""


class CommitListener:
    """Stamps each ``pg_notify`` (sent at commit) on arrival, in a thread of its own."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommitListener:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("listener did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.dsn)

        def on_notify(_c: Any, _pid: int, _channel: str, payload: str) -> None:
            self.seen.setdefault(payload, time.time())

        await conn.add_listener("bench_commit", on_notify)
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await conn.close()


def paced_publish(
    bench: Bench, messages: Messages, rate: float, report: dict[str, float] | None = None
) -> dict[str, float]:
    """Publish at ``rate``/s from a child process (so that neither the listener nor this
    process's event loop delays it); returns the first publish time (wall clock) of each
    distinct VM message, by the history key the commit listener reports. The rate the
    publisher reached goes to ``report["achieved"]``."""
    keys: list[str | None] = []
    wire: list[tuple[str, bytes]] = []
    for routing_key, body in messages:
        data = json.dumps(body).encode()
        wire.append((routing_key, data))
        key = None
        if "instance" in body:
            msg = parse(data)
            vm_id = vm_id_from_instance(bench.prefix, msg.instance)  # type: ignore[union-attr]
            key = f"{vm_id}:{msg.digest().hex()}"
        keys.append(key)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_publisher_child, args=(bench.amqp_url, wire, rate, out))
    child.start()
    stamps_by_index, achieved = out.get(timeout=max(120, 3 * len(wire) / rate))
    child.join(30)
    log(f"paced publish: {len(wire)} messages at {achieved:.0f} msg/s (target {rate:.0f})")
    if report is not None:
        report["achieved"] = achieved
    stamps: dict[str, float] = {}
    for key, t in zip(keys, stamps_by_index, strict=True):
        if key is not None:
            stamps.setdefault(key, t)
    return stamps


def _publisher_child(amqp_url: str, wire: list[tuple[str, bytes]], rate: float, out: Any) -> None:
    out.put(asyncio.run(_paced(amqp_url, wire, rate)))


async def _paced(
    amqp_url: str, wire: list[tuple[str, bytes]], rate: float
) -> tuple[list[float], float]:
    """Every ~2 ms, publish what is due; persistent messages, no publisher confirms (the
    broker still stores each before delivering it), stamped right before basic.publish."""
    import aiormq
    from pamqp.commands import Basic

    props = Basic.Properties(delivery_mode=2, content_type="application/json")
    stamps = [0.0] * len(wire)
    conn = await aiormq.connect(amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=False)
        started = time.monotonic()
        sent = 0
        while sent < len(wire):
            due = min(len(wire), int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                routing_key, data = wire[sent]
                stamps[sent] = time.time()
                await channel.basic_publish(
                    data, exchange="ganeti", routing_key=routing_key, properties=props
                )
                sent += 1
            await asyncio.sleep(0.002)  # the pacing tick of the producer
        achieved = len(wire) / (time.monotonic() - started)
    finally:
        await conn.close()
    return stamps, achieved


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


# ------------------------------------------------------------------------------------------
# 6. a million VM rows


async def add_rows(bench: Bench, db: str, total_rows: int) -> int:
    conn = await asyncpg.connect(pg_dsn(bench.url(db)))
    try:
        have = int(await conn.fetchval("SELECT count(*) FROM virtual_machines"))
        extra = max(0, total_rows - have)
        started = time.monotonic()
        await conn.execute(
            """
            INSERT INTO virtual_machines (name, backend_id, flavor_id, imageid, created, updated,
                deleted, suspended, action, operstate, backendjobid, backendopcode,
                backendjobstatus, buildpercentage, backendtime)
            SELECT 'filler-' || g, b.id, f.id, 'debian-test', now(), now(),
                g % 10 = 0, false, 'CREATE', CASE WHEN g % 10 = 0 THEN 'DESTROYED' ELSE
                'STARTED' END, 1000 + g, 'OP_INSTANCE_STARTUP', 'success', 100, now()
            FROM generate_series(1, $1::int) AS g,
                 (SELECT min(id) AS id FROM backends) AS b,
                 (SELECT min(id) AS id FROM flavors) AS f
            """,
            extra,
        )
        log(f"inserted {extra} VM rows in {time.monotonic() - started:.1f} s")
        # vacuum now, so that autovacuum of the fresh bulk insert does not run during the
        # drain and compete for the CPUs (the figure is about the table's size)
        started = time.monotonic()
        await conn.execute("VACUUM (ANALYZE) virtual_machines")
        await conn.execute("ANALYZE")
        log(f"vacuumed and analyzed in {time.monotonic() - started:.1f} s")
        return int(await conn.fetchval("SELECT count(*) FROM virtual_machines"))
    finally:
        await conn.close()


# ------------------------------------------------------------------------------------------
# the run


@dataclass
class Results:
    figures: dict[str, Any] = field(default_factory=dict)

    def __setitem__(self, key: str, value: Any) -> None:
        self.figures[key] = value

    def __getitem__(self, key: str) -> Any:
        return self.figures.get(key)


def table(r: Results, args: argparse.Namespace) -> Iterator[str]:
    def f(v: Any, spec: str = ",.0f") -> str:
        return "-" if v is None else format(v, spec)

    rss100, rss_end = r["rss_after_backlog_kib"], r["rss_at_end_kib"]
    growth = None if not rss100 or not rss_end else (rss_end - rss100) / rss100 * 100
    rows = [
        ("backlog", f"{args.messages:,} messages, {args.vms:,} VMs, {args.queue_type}", ""),
        ("publish (confirms)", f"{f(r['publish_rate'])} msg/s", ""),
        ("raw: ack only (broker ceiling)", f"{f(r['raw_rate'])} msg/s", ""),
        (
            "naive: ORM, 1 msg/transaction",
            f"{f(r['naive_rate'])} msg/s ({f(r['naive_messages'], ',d')} msgs)",
            "",
        ),
        ("dispatcher run", f"{f(r['dispatcher_rate'])} msg/s", ""),
        ("dispatcher / raw", f(r["ratio_raw"], ".2f"), ">= 0.5"),
        ("dispatcher / naive", f(r["ratio_naive"], ".1f"), ""),
    ]
    for rate, lat in (r["latency"] or {}).items():
        rows.append(
            (
                f"latency p50 / p99 @ {rate:,.0f} msg/s",
                f"{f(lat['p50_ms'], '.1f')} / {f(lat['p99_ms'], '.1f')} ms",
                "p99 <= 100 ms" if rate == 2000 else "",
            )
        )
        rows.append(
            (
                "  max; samples; batches",
                f"{f(lat['max_ms'], '.0f')} ms; {f(lat['n'])}; {f(lat['mean_batch'], '.1f')} msgs"
                f" in {f(lat['mean_batch_ms'], '.1f')} ms",
                "",
            )
        )
    rows += [
        ("peak RSS (VmHWM)", f"{f(r['rss_peak_kib'] and r['rss_peak_kib'] / 1024, '.1f')} MiB", ""),
        (
            f"RSS after {args.messages:,} / {f(r['rss_messages'], ',d')} msgs",
            f"{f(rss100 and rss100 / 1024, '.1f')} / {f(rss_end and rss_end / 1024, '.1f')} MiB"
            f" ({f(growth, '+.1f')} %)",
            "flat (10 %)",
        ),
        (
            f"drain, {args.vms:,} / {f(r['big_rows'], ',d')} VM rows (mean of {args.rows_rounds})",
            f"{f(r['small_rate'])} / {f(r['big_rate'])} msg/s",
            "",
        ),
        ("drain ratio 1M rows / 10k rows", f(r["ratio_rows"], ".2f"), ">= 0.9"),
    ]
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    yield f"{'figure':<{w0}}  {'value':>{w1}}  target"
    yield f"{'-' * w0}  {'-' * w1}  {'-' * 11}"
    for a, b, c in rows:
        yield f"{a:<{w0}}  {b:>{w1}}  {c}"


class Run:
    """One benchmark run: the phases share the backlog, the bench's names and the results."""

    def __init__(self, args: argparse.Namespace) -> None:
        base, amqp = service_urls()
        self.args = args
        self.bench = Bench(base, amqp, queue_type=args.queue_type)
        self.r = Results()
        self.logs = Path(args.log_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.backlog: Messages = []
        self.world: World | None = None
        self.seed = args.seed

    async def __call__(self) -> Results:
        args, r = self.args, self.r
        log(f"prefix {self.bench.prefix}, {self.bench.queue_type} queues, logs in {self.logs}")
        try:
            # the backlog, generated once for world ids 1..vms (every fresh database has them)
            db = await self.bench.fresh_db("raw")
            self.world = await world_of(self.bench, db, args.vms)
            self.backlog = stream_for(self.bench, self.world, args.seed, args.messages)
            args.messages = len(self.backlog)
            log(f"backlog: {len(self.backlog)} messages ({distinct_count(self.backlog)} distinct)")
            if "raw" in args.phases:
                await self.raw(db)
            if "naive" in args.phases:
                await self.naive()
            if "dispatcher" in args.phases:
                await self.dispatcher()
            if "rows" in args.phases:
                await self.rows()
        finally:
            if not args.keep:
                await self.bench.cleanup()
        if r["dispatcher_rate"] and r["raw_rate"]:
            r["ratio_raw"] = r["dispatcher_rate"] / r["raw_rate"]
        if r["dispatcher_rate"] and r["naive_rate"]:
            r["ratio_naive"] = r["dispatcher_rate"] / r["naive_rate"]
        if r["small_rate"] and r["big_rate"]:
            r["ratio_rows"] = r["big_rate"] / r["small_rate"]
        return r

    async def same_world(self, label: str) -> str:
        db = await self.bench.fresh_db(label)
        assert self.world is not None
        if (await world_of(self.bench, db, self.args.vms)).vm_ids != self.world.vm_ids:
            raise RuntimeError("a fresh database did not give the same VM ids")
        return db

    async def raw(self, db: str) -> None:
        self.r["publish_rate"] = await publish_backlog(self.bench, db, self.backlog)
        self.r["raw_rate"] = await drain_raw(self.bench, len(self.backlog))
        log(f"raw: {self.r['raw_rate']:.0f} msg/s")

    async def naive(self) -> None:
        db = await self.same_world("naive")
        await publish_backlog(self.bench, db, self.backlog)
        n = min(self.args.naive_messages or len(self.backlog), len(self.backlog))
        self.r["naive_messages"] = n
        self.r["naive_rate"] = await drain_naive(self.bench, db, n)
        await self.bench.purge()
        log(f"naive: {self.r['naive_rate']:.0f} msg/s over {n} messages")

    async def dispatcher(self) -> None:
        args, r = self.args, self.r
        db = await self.same_world("dispatcher")
        rate = await publish_backlog(self.bench, db, self.backlog)
        r["publish_rate"] = r["publish_rate"] or rate
        keep = bool({"latency", "memory"} & set(args.phases))
        with profiled(args.profile, "drain") as attach:
            r["dispatcher_rate"], daemon = await drain_dispatcher(
                self.bench, db, self.backlog, self.logs / "dispatcher.log", keep=keep, attach=attach
            )
        log(f"dispatcher: {r['dispatcher_rate']:.0f} msg/s")
        if not keep:
            return
        try:
            r["rss_after_backlog_kib"] = daemon.memory()["VmRSS"]
            handled = len(self.backlog)
            if "latency" in args.phases:
                handled = await self.latency(daemon, db, handled)
            if "memory" in args.phases:
                handled = await self.memory(daemon, db, handled)
            r["rss_peak_kib"] = daemon.memory()["VmHWM"]
        finally:
            daemon.stop()

    async def latency(self, daemon: Daemon, db: str, handled: int) -> int:
        await sql(self.bench, db, _TRIGGER)
        results = {}
        for rate in self.args.rates:
            n = int(rate * self.args.latency_seconds)
            self.seed += 1
            world = await world_of(self.bench, db, max(1, n // 10))
            stream = stream_for(self.bench, world, self.seed, n)
            before = daemon.batch_stats()
            with (
                CommitListener(pg_dsn(self.bench.url(db))) as listener,
                profiled(self.args.profile, f"latency-{rate:.0f}") as attach,
            ):
                attach(daemon)
                stamps = await asyncio.to_thread(paced_publish, self.bench, stream, rate)
                handled += len(stream)
                daemon.wait_handled(handled, timeout=max(120, len(stream) / 100))
                deadline = time.monotonic() + 30
                while len(listener.seen) < len(stamps) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            after = daemon.batch_stats()
            lat = [(listener.seen[k] - t) * 1000 for k, t in stamps.items() if k in listener.seen]
            batches = after[0] - before[0]
            res = {
                "n": len(lat),
                "missing": len(stamps) - len(lat),
                "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99),
                "max_ms": max(lat) if lat else None,
                "batches": batches,
                "mean_batch": (after[1] - before[1]) / batches if batches else None,
                "mean_batch_ms": 1000 * (after[2] - before[2]) / batches if batches else None,
            }
            results[rate] = res
            log(
                f"latency @ {rate:.0f} msg/s: p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f}"
                f" ms, max {res['max_ms']:.1f} ms over {res['n']} commits ({res['missing']} not"
                f" seen); {batches} batches of {res['mean_batch'] or 0:.1f} messages,"
                f" {res['mean_batch_ms'] or 0:.1f} ms each"
            )
        await sql(self.bench, db, "DROP TRIGGER bench_commit ON vm_events")
        self.r["latency"] = results
        main = results.get(self.args.rate) or next(iter(results.values()))
        self.r["latency_n"] = main["n"]
        self.r["latency_p50_ms"] = main["p50_ms"]
        self.r["latency_p99_ms"] = main["p99_ms"]
        self.r["latency_max_ms"] = main["max_ms"]
        return handled

    async def memory(self, daemon: Daemon, db: str, handled: int) -> int:
        while handled < self.args.rss_messages:
            self.seed += 1
            world = await world_of(self.bench, db, self.args.vms)
            more = stream_for(self.bench, world, self.seed, self.args.messages)
            more = more[: max(1, self.args.rss_messages - handled)]
            await publish(self.bench.settings(db), more, window=512)
            handled += len(more)
            daemon.wait_handled(handled, timeout=max(300, len(more) / 100))
            log(f"memory: {handled} handled, RSS {daemon.memory()['VmRSS'] / 1024:.1f} MiB")
        self.r["rss_messages"] = handled
        self.r["rss_at_end_kib"] = daemon.memory()["VmRSS"]
        return handled

    async def rows(self) -> None:
        # small and big drains in ABBA order, averaged: the load of a shared machine drifts
        # over minutes, by more than the 10 % this ratio is about, and ABBA cancels a linear
        # drift (AB, or ABAB, would charge it to the big database)
        rates: dict[str, list[float]] = {"small": [], "big": []}
        for k in range(self.args.rows_rounds):
            for kind in ("small", "big") if k % 2 == 0 else ("big", "small"):
                rates[kind].append(await self.rows_drain(kind, k))
        self.r["small_rate"] = statistics.fmean(rates["small"])
        self.r["big_rate"] = statistics.fmean(rates["big"])

    async def rows_drain(self, kind: str, k: int) -> float:
        """One drain of the backlog on a fresh database (the backlog applied twice would be
        all duplicates); ``big`` gets its VM rows topped up to ``--big-rows`` first."""
        db = await self.same_world(f"rows_{kind}{k}")
        rows = self.args.vms
        if kind == "big":
            rows = self.r["big_rows"] = await add_rows(self.bench, db, self.args.big_rows)
        await publish_backlog(self.bench, db, self.backlog)
        rate, _ = await drain_dispatcher(
            self.bench, db, self.backlog, self.logs / f"rows-{kind}{k}.log"
        )
        log(f"dispatcher with {rows} VM rows: {rate:.0f} msg/s")
        return rate


async def sql(bench: Bench, db: str, statement: str) -> None:
    conn = await asyncpg.connect(pg_dsn(bench.url(db)))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


# ------------------------------------------------------------------------------------------
# profiles (py-spy, when installed: ``.venv/bin/pip install py-spy``)


@contextlib.contextmanager
def profiled(directory: Path | None, name: str) -> Iterator[Any]:
    """Yields ``attach(daemon)``: from then on until the block ends, py-spy samples the
    daemon; the collapsed stacks go to ``DIRECTORY/NAME.txt`` and a summary to stderr."""
    spies: list[subprocess.Popen[bytes]] = []
    out = directory / f"{name}.txt" if directory else None

    def attach(daemon: Daemon) -> None:
        if out is None or spies:
            return
        spy = Path(PYTHON).with_name("py-spy")
        if not spy.exists():
            log("py-spy not installed: no profile")
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        spies.append(
            subprocess.Popen(
                [
                    str(spy),
                    "record",
                    "--pid",
                    str(daemon.proc.pid),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--output",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    try:
        yield attach
    finally:
        for spy_proc in spies:
            spy_proc.send_signal(signal.SIGINT)
            try:
                spy_proc.wait(60)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
        if spies and out is not None and out.exists():
            for line in summarize(out):
                log(f"profile {name}: {line}")


def summarize(path: Path, top: int = 18) -> list[str]:
    """Inclusive share of the samples per function of the daemon's own code and of the
    libraries on its hot path."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        seen = set()
        for frame in stack.split(";"):
            name, _, where = frame.partition(" (")
            module = where.split(":")[0]
            if "/dispatcher/" not in module and not any(
                lib in module for lib in ("aiormq/", "pamqp/", "asyncpg/", "pydantic")
            ):
                continue
            key = f"{name} ({module.split('site-packages/')[-1].split('/work/main/')[-1]})"
            if key not in seen:
                seen.add(key)
                inclusive[key] = inclusive.get(key, 0) + n
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return [f"{100 * n / max(1, total):5.1f}% {k}" for k, n in ranked]


PHASES = ("raw", "naive", "dispatcher", "latency", "memory", "rows")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a couple of minutes")
    p.add_argument("--vms", type=int, help="VMs of the backlog's world (10,000)")
    p.add_argument("--messages", type=int, help="backlog size (100,000)")
    p.add_argument(
        "--naive-messages",
        type=int,
        help="the naive consumer's rate is taken over the first N messages of the backlog, the "
        "rest is purged (20,000; it drains about 150-200 msg/s)",
    )
    p.add_argument(
        "--rate",
        default="2000",
        help="latency phase rate in msg/s (2,000); several, comma-separated, give a curve and"
        " the table shows the first",
    )
    p.add_argument("--latency-seconds", type=float, help="latency phase length (30)")
    p.add_argument("--rss-messages", type=int, help="messages handled before the last RSS (1M)")
    p.add_argument("--big-rows", type=int, help="VM rows of the last phase (1,000,000)")
    p.add_argument(
        "--rows-rounds",
        type=int,
        help="alternating small/big drains of the last phase, averaged (2)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--queue-type",
        choices=("quorum", "classic"),
        default="quorum",
        help="type of the bench's queues (quorum, the daemon's default)",
    )
    p.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)}")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the daemon during the drain and latency phases into this directory",
    )
    p.add_argument("--log-dir", default="/tmp/dispatcher-bench", help="daemon logs")
    p.add_argument("--keep", action="store_true", help="keep the databases and queues")
    args = p.parse_args(argv)
    full = {
        "vms": 10_000,
        "messages": 100_000,
        "naive_messages": 20_000,
        "latency_seconds": 30.0,
        "rss_messages": 1_000_000,
        "big_rows": 1_000_000,
        "rows_rounds": 2,
    }
    quick = {
        "vms": 1_000,
        "messages": 10_000,
        "naive_messages": 3_000,
        "latency_seconds": 10.0,
        "rss_messages": 50_000,
        "big_rows": 100_000,
        "rows_rounds": 1,
    }
    for k, v in (quick if args.quick else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.rates = [float(x) for x in str(args.rate).split(",") if x.strip()]
    args.rate = args.rates[0]
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    results = asyncio.run(Run(args)())
    print("\n".join(table(results, args)))
    print(f"(run took {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": vars(args) | {"json": str(args.json)}, **results.figures},
                indent=2,
                default=str,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
