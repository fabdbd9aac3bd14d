"""``dispatcher reconcile servers|networks [--fix]``: what differs between the database and
the clusters (see :mod:`dispatcher.actions.reconciliation`), repaired with ``--fix``.

Exit 0 when every online backend was checked (differences found or not); 1 when a backend
could not be read or a repair failed (the report is printed all the same)."""

from __future__ import annotations

import argparse

from dispatcher.actions.clients import client_pool
from dispatcher.actions.reconciliation import Report, reconcile_networks, reconcile_servers
from dispatcher.cli.common import (
    CommandError,
    action_errors,
    command,
    database,
    emit_json,
    emit_table,
)
from dispatcher.settings import Settings

COLUMNS = ["kind", "id", "name", "backend_id", "detail", "fix", "fixed", "error"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("reconcile", help="compare the database with the clusters")
    p.add_argument("target", choices=("servers", "networks"))
    p.add_argument("--fix", action="store_true", help="repair what differs")
    command(p, reconcile)


async def reconcile(args: argparse.Namespace, settings: Settings) -> int:
    run = reconcile_servers if args.target == "servers" else reconcile_networks
    async with database(settings, pool_size=2) as engine, client_pool(settings) as clients:
        with action_errors():
            report: Report = await run(engine, clients, prefix=settings.prefix, fix=args.fix)
    if args.json:
        emit_json(report.view())
    elif report.findings:
        emit_table(report.rows(), COLUMNS)
    else:
        print(f"no differences on {len(report.checked)} backend(s)")
    problems = [f"{b.clustername}: {e}" for b, e in report.errors]
    problems += [f"{f.name}: {f.error}" for f in report.findings if f.fixed is False]
    if problems:
        raise CommandError("; ".join(problems))
    return 0
