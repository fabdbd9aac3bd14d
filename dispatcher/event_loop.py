"""Runs a command's coroutine on the event loop the settings ask for (``DISPATCHER_EVENT_LOOP``).

uvloop is an optional extra (``ganeti-dispatcher[uvloop]``); the settings refuse ``uvloop``
when it is not installed, so by the time a loop is made here the import succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from dispatcher.settings import EventLoop, Settings

T = TypeVar("T")

log = logging.getLogger(__name__)


def loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if settings.event_loop is EventLoop.UVLOOP:
        import uvloop

        new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return new_loop
    return None  # asyncio's default


def run(settings: Settings, coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)``, on the configured loop."""
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        loop = type(runner.get_loop())
        # shown by the daemons (one-shot commands log nothing below CRITICAL): which loop a
        # running daemon is on is otherwise invisible
        log.info("event loop: %s.%s", loop.__module__, loop.__qualname__)
        return runner.run(coro)
