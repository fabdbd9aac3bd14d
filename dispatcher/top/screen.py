"""The ``dispatcher top`` screen: a live rich screen in a terminal (``q`` quits), else one
plain rendering. Imported only by that command (rich is not needed by the others)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator

import httpx
from rich.console import Console, RenderableType
from rich.live import Live
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dispatcher.cli.common import database
from dispatcher.logs import redact
from dispatcher.oneline import one_line
from dispatcher.settings import Settings
from dispatcher.top.render import render
from dispatcher.top.snapshot import Snapshot, new_snapshot, rates, read_daemon, read_database


class _Screen:
    def __init__(self, engine: AsyncEngine, http: httpx.AsyncClient, args: argparse.Namespace,
                 url: str | None) -> None:  # fmt: skip
        self.engine, self.http, self.args, self.url = engine, http, args, url
        self.previous: Snapshot | None = None

    async def take(self) -> Snapshot:
        snap = new_snapshot()
        try:
            async with AsyncSession(self.engine) as s:
                await read_database(s, snap, self.args.events)
        except Exception as exc:  # noqa: BLE001 - shown as a banner; the next refresh retries
            snap.database_error = redact(one_line(exc, 120))
        await read_daemon(self.http, self.url, snap)
        return snap

    async def next_screen(self) -> RenderableType:
        snap = await self.take()
        screen = render(snap, rates(self.previous, snap), silent_limit=self.args.max_silence)
        self.previous = snap
        return screen


@contextlib.contextmanager
def _quit_key(loop: asyncio.AbstractEventLoop, quit_: asyncio.Event) -> Iterator[None]:
    """``q`` on stdin sets ``quit_``: the terminal in cbreak mode (keys arrive unbuffered,
    Ctrl-C still interrupts) for as long as the screen is up."""
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)

    def on_key() -> None:
        data = os.read(fd, 64)
        if not data or b"q" in data.lower():
            quit_.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_top(args: argparse.Namespace, settings: Settings, url: str | None) -> int:
    timeout = httpx.Timeout(min(2.0, args.interval))
    async with (
        database(settings) as engine,
        httpx.AsyncClient(timeout=timeout, trust_env=False) as http,
    ):
        screen = _Screen(engine, http, args, url)
        if args.once or not sys.stdout.isatty():
            # two samples an interval apart: the rates need both
            await screen.next_screen()
            await asyncio.sleep(args.interval)
            Console(no_color=True, highlight=False).print(await screen.next_screen())
            return 0
        quit_ = asyncio.Event()
        console = Console()
        with (
            Live(console=console, screen=True, auto_refresh=False) as live,
            _quit_key(asyncio.get_running_loop(), quit_),
        ):
            while not quit_.is_set():
                live.update(await screen.next_screen(), refresh=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(quit_.wait(), args.interval)
    return 0
