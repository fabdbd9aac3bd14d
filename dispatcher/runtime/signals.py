"""SIGTERM and SIGINT as a stop request, for the long-running commands (``run``, ``eventd``)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from dispatcher.runtime.sdnotify import Notifier

log = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stop_on_signals(stop: asyncio.Event, notifier: Notifier) -> Iterator[None]:
    """While inside: a signal sets ``stop`` (the first one also tells systemd and the log)
    and nothing else, so that teardown runs in order on the command's own task."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            notifier.stopping("stopping")
            log.info("stop requested")
        stop.set()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        yield
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
