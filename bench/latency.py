"""Latency attempts side by side: p50/p99 publish->commit at a steady rate (2,000 msg/s) for
each variant of the daemon, in one run, interleaved.

Run from the repository root, with the services up (``bash scripts/services.sh start``)::

    .venv/bin/python -m bench.latency --quick   # 5 s phases, one round: about 2 minutes
    .venv/bin/python -m bench.latency           # 15 s phases, four rounds: about 11 minutes

Every phase is measured as ``bench.run``'s latency phase (whose pieces this reuses): on a
fresh database with a new world and a new ``simulate`` stream of ``rate x seconds`` messages,
the variant's daemon(s) are started and ready, then a child process publishes the stream at
a steady rate (persistent messages, the publisher's clock stamped right before each
``basic.publish``) while a listener stamps the ``pg_notify`` a trigger on ``vm_events`` sends
at commit. One sample per distinct VM message. The machine's load drifts (it is shared), so
the variants are interleaved: round 1 in the listed order, round 2 reversed, and so on; the
table shows the mean over the rounds and its ratio to the baseline's mean, and the median
(less moved by another session's burst of load) and its ratio to the baseline's median.

Per phase also: the rate the publisher reached, the daemons' mean batch (messages, ms) from
their metrics, the daemons' CPU time per 1,000 messages (``/proc/PID/stat``), and the load
average when the phase started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from bench.run import (
    _TRIGGER,
    Bench,
    CommitListener,
    Daemon,
    log,
    paced_publish,
    percentile,
    profiled,
    service_urls,
    sql,
    stream_for,
    world_of,
)
from tests.support import pg_dsn

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ATTEMPTS = 3  # of a phase that a broker or database outage disturbed


class Disturbed(RuntimeError):
    """The phase saw a broker or database outage (other developers' fault tests stop the
    shared services): its figures mean nothing, it is measured again."""


def reconnects(d: Daemon) -> float:
    r = d.get("/metrics")
    total = 0.0
    for line in (r.text if r is not None else "").splitlines():
        name, _, value = line.partition(" ")
        if name in ("dispatcher_amqp_reconnects_total", "dispatcher_db_reconnects_total"):
            total += float(value)
    return total


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    queue_type: str = "quorum"
    daemons: int = 1
    env: dict[str, str] = field(default_factory=dict)


VARIANTS = [
    Variant("baseline", "1 daemon, quorum queues, today's defaults"),
    Variant("classic", "classic queues", queue_type="classic"),
    Variant("uvloop", "DISPATCHER_EVENT_LOOP=uvloop", env={"DISPATCHER_EVENT_LOOP": "uvloop"}),
    Variant(
        "batch-wait",
        "DISPATCHER_BATCH_WAIT=0.01 (a batch's first message waits 10 ms for more)",
        env={"DISPATCHER_BATCH_WAIT": "0.01"},
    ),
    Variant(
        "batch-wait-5",
        "DISPATCHER_BATCH_WAIT=0.005",
        env={"DISPATCHER_BATCH_WAIT": "0.005"},
    ),
    Variant("batch-64", "DISPATCHER_BATCH_SIZE=64", env={"DISPATCHER_BATCH_SIZE": "64"}),
    Variant("3-daemons", "3 daemons, one broker node", daemons=3),
    Variant(
        "uvloop+wait",
        "uvloop and DISPATCHER_BATCH_WAIT=0.01 together",
        env={"DISPATCHER_EVENT_LOOP": "uvloop", "DISPATCHER_BATCH_WAIT": "0.01"},
    ),
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


async def phase(
    bench: Bench, v: Variant, args: argparse.Namespace, label: str, seed: int, profile: Path | None
) -> dict[str, Any]:
    db = await bench.fresh_db(label)
    try:
        await sql(bench, db, _TRIGGER)
        n = int(args.rate * args.seconds)
        world = await world_of(bench, db, max(1, n // 10))
        stream = stream_for(bench, world, seed, n)
        logs = Path(args.log_dir)
        logs.mkdir(parents=True, exist_ok=True)
        daemons = [
            Daemon.start(bench, db, logs / f"{label}-{k}.log", v.env) for k in range(v.daemons)
        ]
        try:
            for d in daemons:
                d.wait_ready(120)
            load = os.getloadavg()[0]
            before = [d.batch_stats() for d in daemons]
            cpu0 = sum(cpu_seconds(d.proc.pid) for d in daemons)
            report: dict[str, float] = {}
            with (
                CommitListener(pg_dsn(bench.url(db))) as listener,
                profiled(profile, label) as attach,
            ):
                attach(daemons[0])
                try:
                    stamps = await asyncio.to_thread(
                        paced_publish, bench, stream, args.rate, report
                    )
                except Exception as exc:  # the publisher lost the broker: no result from it
                    raise Disturbed(f"{label}: publisher failed: {exc!r}") from exc
                deadline = time.monotonic() + max(60, n / 200)
                while sum(max(0, d.handled()) for d in daemons) < len(stream):
                    for d in daemons:
                        d.check()
                    if time.monotonic() > deadline:
                        raise Disturbed(f"{label}: stream not handled in time")
                    await asyncio.sleep(0.05)
                deadline = time.monotonic() + 30
                while len(listener.seen) < len(stamps) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            cpu = sum(cpu_seconds(d.proc.pid) for d in daemons) - cpu0
            after = [d.batch_stats() for d in daemons]
            if any(reconnects(d) for d in daemons):
                raise Disturbed(f"{label}: a daemon lost the broker or the database")
        finally:
            for d in daemons:
                d.stop()
        lat = [(listener.seen[k] - t) * 1000 for k, t in stamps.items() if k in listener.seen]
        batches = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
        in_batches = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
        batch_s = sum(a[2] - b[2] for a, b in zip(after, before, strict=True))
        res = {
            "p50": percentile(lat, 50),
            "p99": percentile(lat, 99),
            "reached": report.get("achieved", float("nan")),
            "missing": len(stamps) - len(lat),
            "mean_batch": in_batches / batches if batches else float("nan"),
            "batch_ms": 1000 * batch_s / batches if batches else float("nan"),
            "cpu_ms_per_1k": 1e6 * cpu / len(stream),
            "load": load,
        }
        log(
            f"{label}: p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms, publisher"
            f" {res['reached']:.0f} msg/s, batches of {res['mean_batch']:.1f} in"
            f" {res['batch_ms']:.1f} ms, daemon CPU {res['cpu_ms_per_1k']:.0f} ms/1k msgs,"
            f" load {load:.1f} ({res['missing']} commits not seen)"
        )
        return res
    finally:
        await bench.admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        bench.databases.remove(db)


async def wait_for_services(bench: Bench, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            await bench.admin("SELECT 1")
            conn = await aio_pika.connect(bench.amqp_url, timeout=5)
            await conn.close()
            return
        except Exception:  # noqa: BLE001 - not back yet
            await asyncio.sleep(1)
    raise RuntimeError("the services did not come back")


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(results: dict[str, list[dict[str, Any]]], rate: float) -> list[str]:
    base = {k: mean([r[k] for r in results["baseline"]]) for k in ("p50", "p99")}
    base_median = median([r["p99"] for r in results["baseline"]])
    rows = [
        f"| variant | p50 / p99 @ {rate:,.0f} msg/s, mean (ms) | p99 / baseline | p99 median"
        " (ms) / baseline | p99 per round (ms) | publisher reached (msg/s) | mean batch"
        " (msgs, ms) | daemon CPU ms / 1k msgs | load avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        rs = results.get(v.name)
        if not rs:
            continue
        m = {k: mean([r[k] for r in rs]) for k in rs[0]}
        per_round = ", ".join(f"{r['p99']:,.1f}" for r in rs)
        med = median([r["p99"] for r in rs])
        loads = [r["load"] for r in rs]
        rows.append(
            f"| {v.name} | {m['p50']:,.1f} / {m['p99']:,.1f} | {m['p99'] / base['p99']:.2f} |"
            f" {med:,.1f} / {med / base_median:.2f} | {per_round} | {m['reached']:,.0f} |"
            f" {m['mean_batch']:.1f}, {m['batch_ms']:.1f} | {m['cpu_ms_per_1k']:,.0f} |"
            f" {min(loads):.1f}-{max(loads):.1f} |"
        )
    return rows


async def run(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    db_url, amqp_url = service_urls()
    quorum = Bench(db_url, amqp_url)
    # classic queues cannot share names with the quorum ones: a second prefix, same template
    classic = Bench(db_url, amqp_url, queue_type="classic")
    classic._template = await quorum.template()
    chosen = [v for v in VARIANTS if v.name in args.variants]
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in chosen}
    seed = 0
    try:
        for rnd in range(args.rounds):
            order = chosen if rnd % 2 == 0 else list(reversed(chosen))
            for v in order:
                seed += 1
                bench = classic if v.queue_type == "classic" else quorum
                label = f"{v.name.replace('-', '_').replace('+', '_')}_r{rnd + 1}"
                profile = args.profile if rnd == 0 else None
                for attempt in range(1, ATTEMPTS + 1):
                    try:
                        res = await phase(bench, v, args, f"{label}_{attempt}", seed, profile)
                    except Disturbed as exc:
                        log(f"{exc}; measured again (attempt {attempt} of {ATTEMPTS})")
                        await wait_for_services(bench)
                        with contextlib.suppress(Exception):
                            await bench.purge()
                        continue
                    results[v.name].append(res)
                    break
    finally:
        await classic.cleanup()
        await quorum.cleanup()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="5 s phases, one round")
    p.add_argument("--rate", type=float, default=2000.0, help="msg/s (2,000)")
    p.add_argument("--seconds", type=float, help="phase length (15; --quick 5)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (4; --quick 1)")
    p.add_argument(
        "--variants",
        default=",".join(v.name for v in VARIANTS),
        help="subset, comma-separated (baseline is always measured)",
    )
    p.add_argument("--profile", type=Path, help="py-spy each variant's daemon in round 1 here")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--log-dir", default="/tmp/dispatcher-bench-latency", help="daemon logs")
    args = p.parse_args(argv)
    args.seconds = args.seconds or (5.0 if args.quick else 15.0)
    args.rounds = args.rounds or (1 if args.quick else 4)
    names = {x.strip() for x in args.variants.split(",") if x.strip()} | {"baseline"}
    unknown = names - {v.name for v in VARIANTS}
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))}")
    args.variants = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log(f"{args.rounds} round(s) of {args.seconds:.0f} s phases at {args.rate:.0f} msg/s")
    results = asyncio.run(run(args))
    print("\n".join(table(results, args.rate)))
    print(f"(run took {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
