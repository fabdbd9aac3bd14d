"""systemd's sd_notify protocol without a dependency (``Type=notify``, ``WatchdogSec=``).

A :class:`Notifier` sends ``KEY=value`` datagrams to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Without that variable
(not under systemd, or in a container) every call is a no-op, so the daemon calls it
unconditionally. Sending never raises: a failure is logged once and reported as ``False``.

The watchdog is fed from the event loop (:func:`watchdog_loop`), so a blocked loop stops the
pings and systemd restarts the service: that is the liveness check under systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from dispatcher.oneline import one_line

__all__ = ["Notifier", "watchdog_interval", "watchdog_loop", "watchdog_task"]

log = logging.getLogger(__name__)
# a status line is for a human reading `systemctl status`: one line, but whole
_STATUS_MAX = 2000


def _socket_address(value: str) -> str | None:
    """The address to ``sendto`` for a ``$NOTIFY_SOCKET`` value; None if unsupported."""
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    # e.g. "vsock:CID:PORT" (systemd >= 254 in VMs): not supported here.
    return None


class Notifier:
    """Talks to the service manager. Construction does no I/O; the socket opens on first use."""

    def __init__(self, notify_socket: str | None = None, *, env: Mapping[str, str] | None = None):
        if notify_socket is None:
            notify_socket = (os.environ if env is None else env).get("NOTIFY_SOCKET") or None
        self.notify_socket = notify_socket
        self._address = _socket_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("NOTIFY_SOCKET %r is not a supported address; not notifying", notify_socket)
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when there is a service manager to notify."""
        return self._address is not None

    def notify(self, state: str) -> bool:
        """Send ``state`` (one or more newline-separated ``KEY=value`` lines) as one datagram."""
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(state.encode("utf-8"), self._address)
        except OSError as exc:
            if not self._warned:
                log.warning("sd_notify to %s failed: %s", self.notify_socket, exc)
                self._warned = True
            else:
                log.debug("sd_notify to %s failed: %s", self.notify_socket, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup finished (consuming). Optionally with a ``STATUS=`` line."""
        return self.notify(
            "READY=1" + (f"\nSTATUS={one_line(status, _STATUS_MAX)}" if status else "")
        )

    def status(self, text: str) -> bool:
        """``STATUS=text``: shown by ``systemctl status``."""
        return self.notify(f"STATUS={one_line(text, _STATUS_MAX)}")

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown began (draining)."""
        return self.notify(
            "STOPPING=1" + (f"\nSTATUS={one_line(status, _STATUS_MAX)}" if status else "")
        )

    def reloading(self) -> bool:
        """``RELOADING=1`` (send :meth:`ready` when done)."""
        return self.notify("RELOADING=1")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: keep-alive ping."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC=``: ask for more time to start or stop."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """The watchdog timeout in seconds asked for by systemd (``WatchdogSec=``), or None.

    None when ``$WATCHDOG_USEC`` is unset or invalid, or when ``$WATCHDOG_PID`` is set to
    another process's pid (the variables were inherited, not meant for us).
    """
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000


Sleep = Callable[[float], Awaitable[None]]


async def watchdog_loop(
    notifier: Notifier, interval: float, *, sleep: Sleep = asyncio.sleep
) -> None:
    """Send ``WATCHDOG=1`` every ``interval / 2`` seconds until cancelled.

    It runs on the event loop, so if the loop is stuck the pings stop and systemd acts.
    ``sleep`` is the loop's clock: a test steps it instead of counting real seconds.
    """
    if interval <= 0:
        raise ValueError("watchdog interval must be positive")
    period = interval / 2
    while True:
        notifier.watchdog()
        await sleep(period)


@contextlib.asynccontextmanager
async def watchdog_task(
    notifier: Notifier, interval: float | None = None, *, sleep: Sleep = asyncio.sleep
) -> AsyncIterator[asyncio.Task[None] | None]:
    """Run :func:`watchdog_loop` for the duration of the block (for an ``AsyncExitStack``).

    ``interval`` defaults to :func:`watchdog_interval`; when there is none (or the notifier
    is disabled), nothing runs and the block gets ``None``.
    """
    if interval is None:
        interval = watchdog_interval()
    if interval is None or not notifier.enabled:
        yield None
        return
    task = asyncio.create_task(watchdog_loop(notifier, interval, sleep=sleep), name="sd-watchdog")
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.wait([task])  # raises only if *we* are cancelled meanwhile
        if not task.cancelled() and task.exception() is not None:
            log.error("watchdog task failed", exc_info=task.exception())
