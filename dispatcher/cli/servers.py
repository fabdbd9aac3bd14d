"""``dispatcher server …``: servers (Ganeti instances ``P-<id>``)."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from dispatcher.actions import clients as action_clients
from dispatcher.actions import refresh as server_refresh
from dispatcher.actions import servers as actions
from dispatcher.cli.common import (
    CommandError,
    UsageError,
    action_errors,
    action_scope,
    command,
    database,
    emit_json,
    emit_object,
    emit_table,
    read_secret_file,
    session_scope,
)
from dispatcher.cli.views import diagnostic_view, event_view, server_view
from dispatcher.db.models import VirtualMachine, VmDiagnostic, VmEvent
from dispatcher.settings import Settings

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
    p = server.add_parser("events", help="the server's event history, oldest first")
    p.add_argument("id", type=int)
    command(p, events)
    p = server.add_parser(
        "refresh", help="read the instance's live state from Ganeti and apply what differs"
    )
    p.add_argument("id", type=int)
    command(p, refresh)
    p = server.add_parser("set-state", help="record an administrator's state as an event")
    p.add_argument("id", type=int)
    p.add_argument("state", choices=sorted(server_refresh.STATE_EVENTS))
    p.add_argument("--reason", required=True, metavar="TEXT", help="kept in the event's logmsg")
    command(p, set_state)
    _register_actions(server)
    return server


def _register_actions(server: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = server.add_parser("create", help="create a server (Ganeti instance P-<id>)")
    p.add_argument("name")
    p.add_argument("--flavor", type=int, required=True, metavar="ID")
    p.add_argument("--image", required=True, metavar="IMAGE_ID", help="the OS's img_id")
    p.add_argument("--image-format", default=actions.DEFAULT_IMAGE_FORMAT, metavar="F")
    p.add_argument(
        "--password-file",
        metavar="F",
        help="the server's root password (default: a random one that is never shown)",
    )
    p.add_argument("--backend", type=int, metavar="ID", help="default: the emptiest one")
    p.add_argument(
        "--network",
        type=int,
        dest="networks",
        action="extend",
        nargs="+",
        metavar="ID",
        help="one NIC per network (default: the public network, if there is one)",
    )
    command(p, create)
    for name, handler, text in (
        ("start", start, "start a stopped server"),
        ("stop", stop, "shut a server down"),
        ("remove", remove, "remove a server (the remove event marks it deleted)"),
        ("console", console, "where the server's VNC console is"),
    ):
        p = server.add_parser(name, help=text)
        p.add_argument("id", type=int)
        command(p, handler)
    p = server.add_parser("reboot", help="reboot a server (soft unless --hard)")
    p.add_argument("id", type=int)
    p.add_argument("--hard", action="store_true", help="restart the VM process")
    command(p, reboot)
    p = server.add_parser("firewall", help="set a NIC's firewall profile")
    p.add_argument("id", type=int)
    p.add_argument("profile", metavar="PROFILE", help=", ".join(actions.FIREWALL_PROFILES))
    p.add_argument("--nic", type=int, default=0, metavar="N", help="NIC index (default 0)")
    command(p, firewall)
    p = server.add_parser("connect", help="add a NIC on a network (an address from its pool)")
    p.add_argument("id", type=int)
    p.add_argument("network_id", type=int)
    command(p, connect)
    p = server.add_parser("disconnect", help="remove a NIC")
    p.add_argument("id", type=int)
    p.add_argument("nic_index", type=int)
    command(p, disconnect)


def _emit_result(args: argparse.Namespace, result: actions.ActionResult, prefix: str) -> None:
    if args.json:
        doc: dict[str, Any] = server_view(result.vm, prefix)
        doc["job_id"] = result.job_id
        doc["job_ids"] = result.job_ids
        emit_json(doc)
    else:
        print(result.job_id)


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


EVENT_COLUMNS = ["event_time", "type", "operation", "job_id", "status", "detail"]


async def events(args: argparse.Namespace, settings: Settings) -> int:
    async with session_scope(settings) as s:
        vm = await get_server(s, args.id)
        # the history's own order (CONTRACT §5.2), the order in which it is folded
        rows = [
            event_view(e)
            for e in await s.scalars(
                select(VmEvent).where(VmEvent.machine_id == vm.id).order_by(VmEvent.sort_key)
            )
        ]
    emit_json(rows) if args.json else emit_table(rows, EVENT_COLUMNS)
    return 0


async def refresh(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as engine:
        async with action_clients.client_pool(settings) as clients:
            with action_errors():
                report = await server_refresh.refresh_server(
                    engine, clients, args.id, prefix=settings.prefix
                )
        async with session_scope(settings) as s:
            vm = await get_server(s, args.id)
            doc = server_view(vm, settings.prefix)
    doc["findings"] = report.rows()
    doc["errors"] = [e for _, e in report.errors]
    if args.json:
        emit_json(doc)
    else:
        for f in report.rows():
            state = "fixed" if f["fixed"] else f"NOT fixed: {f['error']}"
            print(f"{f['kind']}: {f['detail']} ({f['fix']}: {state})")
        print(f"operstate {vm.operstate}" + (" (deleted)" if vm.deleted else ""))
    if report.failed:
        raise CommandError("; ".join(doc["errors"]) or "a repair failed")
    return 0


async def set_state(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as engine:
        with action_errors():
            await server_refresh.set_state(
                engine, args.id, args.state, args.reason, prefix=settings.prefix
            )
    async with session_scope(settings) as s:
        doc = server_view(await get_server(s, args.id), settings.prefix)
    emit_json(doc) if args.json else print(doc["operstate"])
    return 0


async def create(args: argparse.Namespace, settings: Settings) -> int:
    password = None
    if args.password_file:
        password = read_secret_file(args.password_file, "password")
    spec = actions.ServerSpec(
        name=args.name,
        flavor_id=args.flavor,
        image_id=args.image,
        image_format=args.image_format,
        password=password,
        backend_id=args.backend,
        network_ids=tuple(args.networks) if args.networks is not None else None,
    )
    async with action_scope(settings) as (s, clients):
        result = await actions.create_server(
            s,
            clients,
            spec,
            prefix=settings.prefix,
            createinstance_kwargs=settings.createinstance_kwargs,
        )
    if args.json:
        emit_json(server_view(result.vm, settings.prefix))
    else:
        print(result.vm.id)
    return 0


async def start(args: argparse.Namespace, settings: Settings) -> int:
    async with action_scope(settings) as (s, clients):
        result = await actions.start_server(s, clients, args.id, prefix=settings.prefix)
    _emit_result(args, result, settings.prefix)
    return 0


async def stop(args: argparse.Namespace, settings: Settings) -> int:
    async with action_scope(settings) as (s, clients):
        result = await actions.stop_server(s, clients, args.id, prefix=settings.prefix)
    _emit_result(args, result, settings.prefix)
    return 0


async def reboot(args: argparse.Namespace, settings: Settings) -> int:
    async with action_scope(settings) as (s, clients):
        result = await actions.reboot_server(
            s, clients, args.id, prefix=settings.prefix, hard=args.hard
        )
    _emit_result(args, result, settings.prefix)
    return 0


async def remove(args: argparse.Namespace, settings: Settings) -> int:
    async with action_scope(settings) as (s, clients):
        result = await actions.destroy_server(s, clients, args.id, prefix=settings.prefix)
    _emit_result(args, result, settings.prefix)
    return 0


async def console(args: argparse.Namespace, settings: Settings) -> int:
    async with action_scope(settings) as (s, clients):
        doc = await actions.server_console(s, clients, args.id, prefix=settings.prefix)
    emit_json(doc) if args.json else emit_object(doc)
    return 0


async def firewall(args: argparse.Namespace, settings: Settings) -> int:
    if args.nic < 0:
        raise UsageError("--nic must not be negative")
    async with action_scope(settings) as (s, clients):
        result = await actions.set_firewall_profile(
            s, clients, args.id, args.profile, prefix=settings.prefix, nic_index=args.nic
        )
    _emit_result(args, result, settings.prefix)
    return 0


async def connect(args: argparse.Namespace, settings: Settings) -> int:
    async with action_scope(settings) as (s, clients):
        result = await actions.connect_server(
            s, clients, args.id, args.network_id, prefix=settings.prefix
        )
    _emit_result(args, result, settings.prefix)
    return 0


async def disconnect(args: argparse.Namespace, settings: Settings) -> int:
    if args.nic_index < 0:
        raise UsageError("NIC_INDEX must not be negative")
    async with action_scope(settings) as (s, clients):
        result = await actions.disconnect_server(
            s, clients, args.id, args.nic_index, prefix=settings.prefix
        )
    _emit_result(args, result, settings.prefix)
    return 0
