"""What every command shares: its errors and exit codes (CONTRACT §6), output, and a
database session for the length of one command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dispatcher import migrate as migrations
from dispatcher.actions.clients import ClientPool, client_pool
from dispatcher.actions.errors import ActionError, RequestError
from dispatcher.db.engine import engine_scope
from dispatcher.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CommandError(Exception):
    """The operation failed (server, cluster or database): exit 1."""


class UsageError(Exception):
    """Bad usage or input (including an id that names nothing): exit 2."""


@contextmanager
def action_errors() -> Iterator[None]:
    """The actions' errors to the CLI's exit codes: 2 when the request itself is wrong
    (a bad value, an id that names nothing), 1 when the action failed."""
    try:
        yield
    except RequestError as exc:
        raise UsageError(exc.message) from None
    except ActionError as exc:
        raise CommandError(exc.message) from None


@asynccontextmanager
async def action_scope(settings: Settings) -> AsyncIterator[tuple[AsyncSession, ClientPool]]:
    """A database session and one RAPI client per backend, for one action command."""
    async with session_scope(settings) as s, client_pool(settings) as clients:
        with action_errors():
            yield s, clients


Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


def command(
    parser: argparse.ArgumentParser,
    handler: Handler,
    *,
    json_flag: bool = True,
    long_running: bool = False,
) -> None:
    """``long_running`` commands (daemons) log at ``DISPATCHER_LOG_LEVEL``; the others log
    only with ``--verbose``, so a failure is the one line on stderr that CONTRACT §6 asks."""
    if json_flag:
        # SUPPRESS: ``dispatcher --json server list`` (set by the top-level parser) must
        # survive the subcommand's parse
        parser.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="one JSON document"
        )
    parser.set_defaults(handler=handler, json_capable=json_flag, long_running=long_running)


@asynccontextmanager
async def database(settings: Settings, *, pool_size: int = 1) -> AsyncIterator[AsyncEngine]:
    """An engine on a database whose schema is this code's; else the command fails with
    the one line that says which revision it is and what to run."""
    async with engine_scope(settings, pool_size=pool_size) as engine:
        try:
            await migrations.require_head(engine)
        except migrations.SchemaMismatch as exc:
            raise CommandError(str(exc)) from None
        yield engine


@asynccontextmanager
async def session_scope(settings: Settings) -> AsyncIterator[AsyncSession]:
    async with (
        database(settings) as engine,
        AsyncSession(engine, expire_on_commit=False) as session,
    ):
        yield session


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def emit_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    sys.stdout.write("\n".join(line.rstrip() for line in lines) + "\n")


def emit_object(doc: dict[str, Any]) -> None:
    width = max(len(k) for k in doc)
    for key, value in doc.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            sys.stdout.write(f"{key}:\n")
            for item in value:
                sys.stdout.write(
                    "  - " + ", ".join(f"{k}={_cell(v)}" for k, v in item.items()) + "\n"
                )
        else:
            sys.stdout.write(f"{key.ljust(width)}  {_cell(value)}\n")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def read_secret_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read().strip()
    except OSError as exc:
        raise UsageError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if not value:
        raise UsageError(f"{what} file {path} is empty")
    return value
