"""Commands around the daemon: ``migrate``, ``run``, ``simulate``, ``healthcheck``,
``config``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dispatcher import migrate as migrations
from dispatcher.cli.common import (
    CommandError,
    UsageError,
    command,
    database,
    emit_json,
    emit_object,
    session_scope,
)
from dispatcher.db.engine import engine_scope
from dispatcher.db.liveness import liveness
from dispatcher.pipeline.topology import TopologyError
from dispatcher.runtime import daemon as daemon_main
from dispatcher.runtime.health import healthcheck_main
from dispatcher.settings import Settings

# three missed heartbeats at eventd's default interval
DEFAULT_MAX_SILENCE = 90.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command(
        sub.add_parser("migrate", help="upgrade the database schema to the latest version"), migrate
    )
    command(
        sub.add_parser("run", help="the daemon, in the foreground"),
        run,
        json_flag=False,
        long_running=True,
    )
    p = sub.add_parser("simulate", help="publish a realistic event stream for simulated VMs")
    p.add_argument("--vms", type=int, required=True)
    p.add_argument("--rate", type=float, default=0, help="messages per second (0: at once)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--reorder",
        type=int,
        default=50,
        help="shuffle window: messages move up to this many places (0: in order)",
    )
    p.add_argument("--duplicates", type=float, default=0.15, help="share re-emitted (0-1)")
    p.add_argument("--expect", type=Path, help="write the expected final states (JSON) here")
    command(p, simulate)
    p = sub.add_parser("healthcheck", help="exit 0 if the running daemon is ready")
    p.add_argument(
        "--clusters",
        action="store_true",
        help="instead: exit 1 if an online cluster's eventd has been silent too long",
    )
    p.add_argument(
        "--max-silence",
        type=float,
        default=DEFAULT_MAX_SILENCE,
        metavar="S",
        help=f"seconds without a heartbeat or event (default {DEFAULT_MAX_SILENCE:.0f})",
    )
    command(p, healthcheck, json_flag=False)
    config = sub.add_parser("config", help="settings").add_subparsers(dest="action", required=True)
    command(config.add_parser("show", help="the effective settings, secrets masked"), config_show)


async def migrate(args: argparse.Namespace, settings: Settings) -> int:
    async with engine_scope(settings, pool_size=1) as engine:
        if migrations.is_newer(found := await migrations.current(engine)):
            # alembic would only say it cannot locate the revision
            raise CommandError(str(migrations.mismatch(found)))
        await migrations.upgrade(engine)
        rev = await migrations.current(engine)
    emit_json({"revision": rev}) if args.json else print(f"database at revision {rev}")
    return 0


async def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return await daemon_main.run(settings)
    except (TopologyError, migrations.SchemaMismatch) as exc:
        raise CommandError(str(exc)) from None


async def simulate(args: argparse.Namespace, settings: Settings) -> int:
    from dispatcher.simulation.publish import simulate as simulate_stream

    if args.vms < 1 or args.rate < 0 or not 0 <= args.duplicates <= 1 or args.reorder < 0:
        raise UsageError("--vms must be ≥ 1, --rate ≥ 0, --duplicates within 0-1, --reorder ≥ 0")
    async with database(settings) as engine:
        summary = await simulate_stream(
            settings,
            engine,
            vms=args.vms,
            rate=args.rate,
            seed=args.seed,
            reorder=args.reorder,
            duplicate_rate=args.duplicates,
            expect=args.expect,
        )
    emit_json(summary) if args.json else emit_object(summary)
    return 0


async def healthcheck(args: argparse.Namespace, settings: Settings) -> int:
    if not args.clusters:
        return healthcheck_main(settings.http_listen)
    if args.max_silence <= 0:
        raise UsageError("--max-silence must be positive")
    async with session_scope(settings) as s:
        rows = [r for r in await liveness(s) if not r.offline]
    silent = [r for r in rows if r.silent_s > args.max_silence]
    for r in silent:
        print(
            f"healthcheck: backend {r.backend_id} ({r.clustername}): eventd silent for "
            f"{r.silent_s:.0f} s (limit {args.max_silence:.0f} s)",
            file=sys.stderr,
        )
    return 1 if silent else 0


async def config_show(args: argparse.Namespace, settings: Settings) -> int:
    doc = settings.public_dict()
    emit_json(doc) if args.json else emit_object(doc)
    return 0
