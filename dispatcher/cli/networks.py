"""``dispatcher network …``: networks (Ganeti networks ``P-net-<id>``) on every backend."""

from __future__ import annotations

import argparse

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.cli.common import (
    UsageError,
    command,
    emit_json,
    emit_object,
    emit_table,
    session_scope,
)
from dispatcher.db.models import Network
from dispatcher.settings import Settings
from dispatcher.views import network_view

COLUMNS = [
    "id",
    "name",
    "instance",
    "subnet",
    "gateway",
    "public",
    "mode",
    "link",
    "state",
    "deleted",
    "action",
]


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    network = sub.add_parser("network", help="networks").add_subparsers(
        dest="action", required=True
    )
    p = network.add_parser("list", help="list networks")
    p.add_argument("--all", action="store_true", help="include deleted networks")
    command(p, list_)
    p = network.add_parser("show", help="one network, also when deleted")
    p.add_argument("id", type=int)
    command(p, show)
    return network


async def get_network(s: AsyncSession, net_id: int) -> Network:
    net = await s.get(Network, net_id)
    if net is None:
        raise UsageError(f"no network {net_id}")
    return net


async def list_(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        q = select(Network).order_by(Network.id)
        if not args.all:
            q = q.where(Network.deleted.is_(False))
        rows = [network_view(n, settings.prefix) for n in await s.scalars(q)]
    emit_json(rows) if args.json else emit_table(rows, COLUMNS)
    return 0


async def show(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        doc = network_view(await get_network(s, args.id), settings.prefix)
    emit_json(doc) if args.json else emit_object(doc)
    return 0
