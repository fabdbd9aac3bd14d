"""``dispatcher flavor create|list``."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy import select

from dispatcher.cli.common import UsageError, command, emit_json, emit_table, session_scope
from dispatcher.cli.views import flavor_view
from dispatcher.db.models import Flavor
from dispatcher.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    flavor = sub.add_parser("flavor", help="VM sizes").add_subparsers(dest="action", required=True)
    p = flavor.add_parser("create", help="define a flavor")
    p.add_argument("--cpu", type=int, required=True)
    p.add_argument("--ram", type=int, required=True, help="MiB")
    p.add_argument("--disk", type=int, required=True, help="GiB")
    p.add_argument("--disk-template", default="file")
    command(p, create)
    command(flavor.add_parser("list", help="list flavors"), list_)


async def create(args: argparse.Namespace, settings: Settings) -> int:
    if min(args.cpu, args.ram, args.disk) < 0 or args.cpu == 0 or args.ram == 0:
        raise UsageError("--cpu and --ram must be positive, --disk not negative")
    async with session_scope(settings) as s:
        existing = await s.scalar(
            select(Flavor).where(
                Flavor.cpu == args.cpu,
                Flavor.ram == args.ram,
                Flavor.disk == args.disk,
                Flavor.disk_template == args.disk_template,
            )
        )
        if existing is not None:
            # create is idempotent: the flavor with these values is the answer
            print(f"dispatcher: flavor {existing.id} already has these values", file=sys.stderr)
            emit_json(flavor_view(existing)) if args.json else print(existing.id)
            return 0
        flavor = Flavor(
            cpu=args.cpu,
            ram=args.ram,
            disk=args.disk,
            disk_template=args.disk_template,
            deleted=False,
        )
        s.add(flavor)
        await s.commit()
        emit_json(flavor_view(flavor)) if args.json else print(flavor.id)
    return 0


async def list_(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        rows = [flavor_view(f) for f in await s.scalars(select(Flavor).order_by(Flavor.id))]
    if args.json:
        emit_json(rows)
    else:
        emit_table(rows, ["id", "name", "cpu", "ram", "disk", "disk_template", "deleted"])
    return 0
