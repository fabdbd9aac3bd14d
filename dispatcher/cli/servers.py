"""``dispatcher server …``: servers (Ganeti instances ``P-<id>``)."""

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
from dispatcher.db.models import VirtualMachine, VmDiagnostic
from dispatcher.settings import Settings
from dispatcher.views import diagnostic_view, server_view

COLUMNS = [
    "id",
    "name",
    "instance",
    "backend_id",
    "operstate",
    "deleted",
    "action",
    "buildpercentage",
    "backendopcode",
    "backendjobstatus",
    "backendtime",
]


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    server = sub.add_parser("server", help="servers").add_subparsers(dest="action", required=True)
    p = server.add_parser("list", help="list servers")
    p.add_argument("--all", action="store_true", help="include deleted servers")
    command(p, list_)
    p = server.add_parser("show", help="one server, also when deleted")
    p.add_argument("id", type=int)
    command(p, show)
    return server


async def get_server(s: AsyncSession, vm_id: int) -> VirtualMachine:
    vm = await s.get(VirtualMachine, vm_id)
    if vm is None:
        raise UsageError(f"no server {vm_id}")
    return vm


async def list_(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        q = select(VirtualMachine).order_by(VirtualMachine.id)
        if not args.all:
            q = q.where(VirtualMachine.deleted.is_(False))
        rows = [server_view(vm, settings.prefix) for vm in await s.scalars(q)]
    emit_json(rows) if args.json else emit_table(rows, COLUMNS)
    return 0


async def show(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        vm = await get_server(s, args.id)
        doc = server_view(vm, settings.prefix)
        diags = await s.scalars(
            select(VmDiagnostic)
            .where(VmDiagnostic.machine_id == vm.id)
            .order_by(VmDiagnostic.source_date, VmDiagnostic.id)
        )
        doc["diagnostics"] = [diagnostic_view(d) for d in diags]
    emit_json(doc) if args.json else emit_object(doc)
    return 0
