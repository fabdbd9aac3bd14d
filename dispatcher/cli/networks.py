"""``dispatcher network …``: networks (Ganeti networks ``P-net-<id>``) on every backend."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.actions import networks as actions
from dispatcher.cli.common import (
    CommandError,
    UsageError,
    action_scope,
    command,
    emit_json,
    emit_object,
    emit_table,
    session_scope,
)
from dispatcher.cli.views import network_view
from dispatcher.db.models import Network
from dispatcher.settings import Settings

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
    p = network.add_parser("create", help="create a network on every online backend")
    p.add_argument("name")
    p.add_argument("--subnet", required=True, metavar="CIDR", help="IPv4, /16 to /30")
    p.add_argument("--gateway", metavar="IP")
    p.add_argument("--public", action="store_true", help="public (Ganeti checks IP conflicts)")
    p.add_argument("--mode", choices=actions.MODES, default="bridged")
    p.add_argument(
        "--link", metavar="L", help="bridge or routing table (default: the cluster's NIC link)"
    )
    p.add_argument("--dhcp", action="store_true", help=f"tag it {actions.DHCP_TAG}")
    p.add_argument("--mac-prefix", metavar="P", help="three octets, like aa:00:01")
    command(p, create)
    p = network.add_parser("remove", help="remove a network from every backend")
    p.add_argument("id", type=int)
    command(p, remove)
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


def _result_doc(result: actions.NetworkResult, prefix: str) -> dict[str, Any]:
    doc = network_view(result.network, prefix)
    doc["jobs"] = [b.view() for b in result.backends]
    return doc


def _report(result: actions.NetworkResult, what: str) -> None:
    for b in result.backends:
        if b.note:
            print(f"dispatcher: {b.backend.clustername}: {b.note}", file=sys.stderr)
    if result.failures:
        raise CommandError(
            f"network {result.network.id} {what} only in part: {result.failure_message()}; "
            "`dispatcher reconcile networks --fix` completes it"
        )


async def create(args: argparse.Namespace, settings: Settings) -> int:
    spec = actions.NetworkSpec(
        name=args.name,
        subnet=args.subnet,
        gateway=args.gateway,
        public=args.public,
        mode=args.mode,
        link=args.link,
        dhcp=args.dhcp,
        mac_prefix=args.mac_prefix,
    )
    async with action_scope(settings) as (s, clients):
        result = await actions.create_network(s, clients, spec, prefix=settings.prefix)
    emit_json(_result_doc(result, settings.prefix)) if args.json else print(result.network.id)
    _report(result, "created")
    return 0


async def remove(args: argparse.Namespace, settings: Settings) -> int:
    async with action_scope(settings) as (s, clients):
        result = await actions.remove_network(s, clients, args.id, prefix=settings.prefix)
    emit_json(_result_doc(result, settings.prefix)) if args.json else print(result.network.id)
    _report(result, "removed")
    return 0
