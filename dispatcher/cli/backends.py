"""``dispatcher backend …``: the Ganeti clusters we drive."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.actions import resources
from dispatcher.cli.common import (
    CommandError,
    UsageError,
    action_scope,
    command,
    emit_json,
    emit_object,
    emit_table,
    read_secret_file,
    session_scope,
)
from dispatcher.cli.views import backend_view
from dispatcher.db.liveness import liveness
from dispatcher.db.models import Backend, BackendNetwork, VirtualMachine
from dispatcher.settings import Settings

COLUMNS = [
    "id",
    "clustername",
    "host",
    "port",
    "offline",
    "drained",
    "mfree",
    "mtotal",
    "dfree",
    "dtotal",
    "pinst_cnt",
    "ctotal",
    "eventd",
]


async def _views(s: AsyncSession, backends: list[Backend]) -> list[dict[str, Any]]:
    silent = {r.backend_id: r.silent_s for r in await liveness(s)}
    rows = []
    for b in backends:
        doc = backend_view(b)
        doc["eventd_silent_s"] = round(silent[b.id], 1)
        doc["eventd"] = silence_text(silent[b.id], b)
        rows.append(doc)
    return rows


def silence_text(silent_s: float, b: Backend) -> str:
    if b.last_heartbeat is None and b.last_event is None:
        return f"never heard ({silent_s:.0f} s)"
    return f"silent for {silent_s:.0f} s"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backend = sub.add_parser("backend", help="Ganeti clusters").add_subparsers(
        dest="action", required=True
    )
    p = backend.add_parser("add", help="register a cluster (its RAPI endpoint)")
    p.add_argument("clustername")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=5080)
    p.add_argument("--username")
    p.add_argument("--password-file")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--ca-file", help="pin this CA or self-signed certificate (PEM)")
    tls.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    command(p, add)
    command(backend.add_parser("list", help="list clusters"), list_)
    p = backend.add_parser("show", help="one cluster")
    p.add_argument("id", type=int)
    command(p, show)
    p = backend.add_parser("modify", help="take a cluster offline/online, drain it")
    p.add_argument("id", type=int)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--offline", dest="offline", action="store_const", const=True)
    g.add_argument("--online", dest="offline", action="store_const", const=False)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--drained", dest="drained", action="store_const", const=True)
    g.add_argument("--undrained", dest="drained", action="store_const", const=False)
    command(p, modify)
    p = backend.add_parser("remove", help="forget a cluster that has no servers or networks")
    p.add_argument("id", type=int)
    command(p, remove)
    p = backend.add_parser(
        "update-resources", help="read free/total memory, disk and CPUs from the cluster's nodes"
    )
    p.add_argument("id", type=int, nargs="?", help="default: every online backend")
    command(p, update_resources)


async def add(args: argparse.Namespace, settings: Settings) -> int:
    if not 0 < args.port < 65536:
        raise UsageError("--port must be 1-65535")
    if bool(args.username) != bool(args.password_file):
        raise UsageError("--username and --password-file go together")
    password = read_secret_file(args.password_file, "password") if args.password_file else None
    ca_pem = None
    if args.ca_file:
        ca_pem = read_secret_file(args.ca_file, "CA")
        if "-----BEGIN CERTIFICATE-----" not in ca_pem:
            raise UsageError(f"{args.ca_file} holds no PEM certificate")
    async with session_scope(settings) as s:
        if await s.scalar(select(Backend).where(Backend.clustername == args.clustername)):
            raise UsageError(f"a backend named {args.clustername!r} exists already")
        b = Backend(
            clustername=args.clustername,
            host=args.host,
            port=args.port,
            username=args.username,
            password=password,
            ca_pem=ca_pem,
            insecure=args.insecure,
            offline=False,
            drained=False,
            mfree=0,
            mtotal=0,
            dfree=0,
            dtotal=0,
            pinst_cnt=0,
            ctotal=0,
        )
        s.add(b)
        await s.commit()
        await s.refresh(b)
        emit_json(backend_view(b)) if args.json else print(b.id)
    return 0


async def get_backend(s: object, backend_id: int) -> Backend:
    from sqlalchemy.ext.asyncio import AsyncSession

    assert isinstance(s, AsyncSession)
    b = await s.get(Backend, backend_id)
    if b is None:
        raise UsageError(f"no backend {backend_id}")
    return b


async def list_(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        rows = await _views(s, list(await s.scalars(select(Backend).order_by(Backend.id))))
    emit_json(rows) if args.json else emit_table(rows, COLUMNS)
    return 0


async def show(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        (doc,) = await _views(s, [await get_backend(s, args.id)])
    emit_json(doc) if args.json else emit_object(doc)
    return 0


async def modify(args: argparse.Namespace, settings: Settings) -> int:
    if args.offline is None and args.drained is None:
        raise UsageError("nothing to modify: give --offline/--online and/or --drained/--undrained")
    async with session_scope(settings) as s:
        b = await get_backend(s, args.id)
        if args.offline is not None:
            b.offline = args.offline
        if args.drained is not None:
            b.drained = args.drained
        await s.commit()
        await s.refresh(b)
        if args.offline is not None:
            # a network's state follows its backends on online backends only
            from dispatcher.db.store import refresh_network_states

            ids = list(
                await s.scalars(
                    select(BackendNetwork.network_id).where(BackendNetwork.backend_id == b.id)
                )
            )
            conn = await s.connection()
            raw = await conn.get_raw_connection()
            await refresh_network_states(raw.driver_connection, ids)
            await s.commit()
        doc = backend_view(b)
    emit_json(doc) if args.json else emit_object(doc)
    return 0


async def remove(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        b = await get_backend(s, args.id)
        vms = await s.scalar(
            select(func.count())
            .select_from(VirtualMachine)
            .where(VirtualMachine.backend_id == b.id, VirtualMachine.deleted.is_(False))
        )
        bns = await s.scalar(
            select(func.count())
            .select_from(BackendNetwork)
            .where(BackendNetwork.backend_id == b.id, BackendNetwork.deleted.is_(False))
        )
        if vms or bns:
            raise UsageError(f"backend {b.id} still has {vms} server(s) and {bns} network(s)")
        await s.delete(b)
        await s.commit()
    emit_json({"id": args.id, "removed": True}) if args.json else print(args.id)
    return 0


async def update_resources(args: argparse.Namespace, settings: Settings) -> int:
    async with action_scope(settings) as (s, clients):
        result = await resources.update_resources(s, clients, args.id)
    failed = "; ".join(f"backend {b.id}: {e.message}" for b, e in result.failed)
    docs = [backend_view(b) for b in result.updated]
    if args.id is not None:
        if failed:
            raise CommandError(failed)
        emit_json(docs[0]) if args.json else emit_object(docs[0])
        return 0
    emit_json(docs) if args.json else emit_table(docs, COLUMNS)
    if failed:
        raise CommandError(failed)
    return 0
