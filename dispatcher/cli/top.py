"""``dispatcher top``: the live status screen (``q`` quits), refreshed from the database and
the daemon's ``/metrics``; one plain table with ``--once`` or when stdout is not a terminal."""

from __future__ import annotations

import argparse

from dispatcher.cli.common import UsageError, command
from dispatcher.cli.service import DEFAULT_MAX_SILENCE
from dispatcher.runtime.health import probe_url
from dispatcher.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "top", help="live status screen (q quits); one table when stdout is not a terminal"
    )
    p.add_argument("--once", action="store_true", help="print one screen as plain text and exit")
    p.add_argument("--interval", type=float, default=1.0, metavar="S", help="refresh (default 1)")
    p.add_argument("--events", type=int, default=6, metavar="N", help="last events shown")
    p.add_argument("--metrics-url", help="default: /metrics on DISPATCHER_HTTP_LISTEN")
    p.add_argument(
        "--max-silence",
        type=float,
        default=DEFAULT_MAX_SILENCE,
        metavar="S",
        help="banner for an online cluster whose eventd is silent longer (default "
        f"{DEFAULT_MAX_SILENCE:.0f})",
    )
    command(p, top, json_flag=False)


async def top(args: argparse.Namespace, settings: Settings) -> int:
    if args.interval <= 0 or args.events < 0 or args.max_silence <= 0:
        raise UsageError("--interval and --max-silence must be positive, --events not negative")
    # rich is loaded only for this command: the others start no slower for it
    from dispatcher.top.screen import run_top

    return await run_top(
        args, settings, args.metrics_url or probe_url(settings.http_listen, "/metrics")
    )
