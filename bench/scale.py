"""Scale-out figures: drain rate and publish->commit latency with 1 and 3 daemons, on the
shared single RabbitMQ node and on the three-node cluster of ``scripts/rabbitmq-cluster.sh``
(quorum queues on all three nodes), in one run, from one backlog.

Run from the repository root, with the services up (``bash scripts/services.sh start``)::

    .venv/bin/python -m bench.scale --quick   # 10,000-message backlog, 10 s latency phases
    .venv/bin/python -m bench.scale           # 30,000-message backlog, 20 s phases

The cluster is started if it is not running, and then stopped again. For each broker
(single, cluster) and each daemon count (1, 3), on a fresh database of the same world: the
backlog is published with no daemon running, the daemons are started (on the cluster each
gets the three URLs starting with another node), and the drain rate is the backlog over the
time from all ``/readyz`` answering 200 to the daemons' ``/metrics`` counting every message;
then, with the same daemons, a new stream is published at ``--rate`` msg/s for
``--latency-seconds`` (to node 1 on the cluster) and latency is measured as in
``bench.run`` (publish clock before ``basic.publish`` to the commit's ``pg_notify``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.run import (
    _TRIGGER,
    Bench,
    CommitListener,
    Daemon,
    Messages,
    distinct_count,
    history_rows,
    log,
    paced_publish,
    percentile,
    publish_backlog,
    service_urls,
    sql,
    stream_for,
    world_of,
)
from tests.support import ROOT, pg_dsn

CLUSTER = str(ROOT / "scripts/rabbitmq-cluster.sh")
CLUSTER_URLS = [f"amqp://guest:guest@127.0.0.1:{5680 + n}/" for n in (1, 2, 3)]


def cluster(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", CLUSTER, *args], capture_output=True, text=True, timeout=600, check=check
    )


def rotated(urls: list[str], k: int) -> str:
    return ",".join(urls[k % len(urls) :] + urls[: k % len(urls)])


async def measure(
    bench: Bench, urls: list[str], n_daemons: int, backlog: Messages, args: argparse.Namespace,
    label: str, vms: int, seed: int, extra: dict[str, str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    db = await bench.fresh_db(label)
    await world_of(bench, db, vms)
    await publish_backlog(bench, db, backlog)
    logs = Path(args.log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    daemons = [
        Daemon.start(dataclasses.replace(bench, amqp_url=rotated(urls, k)), db,
                     logs / f"{label}-{k}.log", extra)
        for k in range(n_daemons)
    ]  # fmt: skip
    try:
        t0 = min(d.wait_ready(120) for d in daemons)  # consumption starts with the first
        deadline = time.monotonic() + max(300, len(backlog) / 50)
        while sum(max(0, d.handled()) for d in daemons) < len(backlog):
            for d in daemons:
                d.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: backlog not drained")
            time.sleep(0.05)
        drain = len(backlog) / (time.monotonic() - t0)
        rows = await history_rows(bench, db)
        if rows != distinct_count(backlog):
            raise RuntimeError(f"{label}: {rows} history rows, {distinct_count(backlog)} expected")
        # latency: a new world and stream at a steady rate, published to the first node
        await sql(bench, db, _TRIGGER)
        n = int(args.rate * args.latency_seconds)
        world = await world_of(bench, db, max(1, n // 10))
        stream = stream_for(bench, world, seed, n)
        handled = sum(d.handled() for d in daemons)
        publisher = dataclasses.replace(bench, amqp_url=urls[0])
        with CommitListener(pg_dsn(bench.url(db))) as listener:
            stamps = await asyncio.to_thread(paced_publish, publisher, stream, args.rate)
            deadline = time.monotonic() + max(120, n / 100)
            while sum(max(0, d.handled()) for d in daemons) < handled + len(stream):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{label}: latency stream not handled")
                await asyncio.sleep(0.05)
            deadline = time.monotonic() + 30
            while len(listener.seen) < len(stamps) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        lat = [(listener.seen[k] - t) * 1000 for k, t in stamps.items() if k in listener.seen]
        res = {
            "drain": drain,
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "missing": len(stamps) - len(lat),
        }
        log(
            f"{label}: drain {drain:.0f} msg/s; @ {args.rate:.0f} msg/s p50 {res['p50']:.1f} ms,"
            f" p99 {res['p99']:.1f} ms ({res['missing']} commits not seen)"
        )
        return res
    finally:
        for d in daemons:
            d.stop()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    base, single_url = service_urls()
    single = Bench(base, single_url.split(",")[0])
    await single.template()  # shared by both brokers' copies below
    on_cluster = dataclasses.replace(single, amqp_url=CLUSTER_URLS[0])
    started_cluster = cluster("status", check=False).returncode != 0
    results: list[dict[str, Any]] = []
    try:
        if started_cluster:
            cluster("start")
        db = await single.fresh_db("world")
        world = await world_of(single, db, args.vms)
        backlog = stream_for(single, world, args.seed, args.messages)
        log(f"backlog: {len(backlog)} messages ({distinct_count(backlog)} distinct)")
        seed = args.seed
        single_urls = [single.amqp_url]
        rows: list[tuple[str, Bench, list[str], int, dict[str, str]]] = [
            ("1 node", single, single_urls, 1, {}),
            ("1 node", single, single_urls, 3, {}),
            ("3-node cluster", on_cluster, CLUSTER_URLS, 1, {}),
            ("3-node cluster", on_cluster, CLUSTER_URLS, 3, {}),
            # an attempt at the latency target: smaller batches, so that a daemon near
            # saturation commits (and acks) sooner instead of letting a batch fill up
            ("1 node", single, single_urls, 1, {"DISPATCHER_BATCH_SIZE": "64"}),
        ]
        for i, (broker, bench, urls, n, extra) in enumerate(rows):
            seed += 1
            note = ", ".join(f"{k[len('DISPATCHER_') :].lower()}={v}" for k, v in extra.items())
            res = await measure(bench, urls, n, backlog, args, f"row{i}", args.vms, seed, extra)
            results.append({"broker": broker, "daemons": n, "settings": note or "defaults", **res})
    finally:
        await single.cleanup()
        await on_cluster.cleanup()
        if started_cluster:
            cluster("stop", check=False)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10,000 messages, 10 s latency phases")
    p.add_argument("--rate", type=float, default=2000.0, help="latency phase rate (2,000 msg/s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-dir", default="/tmp/dispatcher-bench-scale", help="daemon logs")
    args = p.parse_args(argv)
    args.vms, args.messages, args.latency_seconds = (
        (1_000, 10_000, 10.0) if args.quick else (3_000, 30_000, 20.0)
    )
    started = time.monotonic()
    results = asyncio.run(run(args))
    print(f"| broker | daemons | settings | drain msg/s | p50 / p99 @ {args.rate:,.0f} msg/s |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['broker']} | {r['daemons']} | {r['settings']} | {r['drain']:,.0f} |"
            f" {r['p50']:,.1f} / {r['p99']:,.1f} ms |"
        )
    print(f"(run took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
