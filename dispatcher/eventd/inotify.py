"""A small inotify binding (ctypes on libc, no dependency) for an asyncio loop.

:class:`Inotify` is the raw file descriptor (non-blocking, close-on-exec);
:class:`DirectoryWatcher` registers it with the running loop (``add_reader``) and calls a
plain callback for every event, on the loop thread. The callback must be quick: eventd's
only records which job changed. Watches are not recursive: ``queue/archive/...`` is never
seen, as with snf-ganeti-eventd.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = [
    "IN_CLOSE_WRITE",
    "IN_DELETE",
    "IN_DELETE_SELF",
    "IN_IGNORED",
    "IN_MOVED_FROM",
    "IN_MOVED_TO",
    "IN_MOVE_SELF",
    "IN_Q_OVERFLOW",
    "DirectoryWatcher",
    "Inotify",
    "InotifyEvent",
    "parse_events",
]

# <sys/inotify.h>
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_UNMOUNT: Final = 0x00002000
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_ISDIR: Final = 0x40000000
IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len
_READ_SIZE: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str  # "" for events about the watched directory itself

    @property
    def overflow(self) -> bool:
        return bool(self.mask & IN_Q_OVERFLOW)

    @property
    def watch_gone(self) -> bool:
        """The watched directory was removed, moved or unmounted: no more events."""
        return bool(self.mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT))


def parse_events(buf: bytes) -> list[InotifyEvent]:
    """Split what one ``read`` returned into events (names are NUL-padded)."""
    events = []
    offset = 0
    while offset + _HEADER.size <= len(buf):
        wd, mask, cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        raw = buf[offset : offset + length]
        offset += length
        events.append(InotifyEvent(wd, mask, cookie, os.fsdecode(raw.split(b"\0", 1)[0])))
    return events


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_init1.restype = ctypes.c_int
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_add_watch.restype = ctypes.c_int
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.inotify_rm_watch.restype = ctypes.c_int
        _libc = lib
    return _libc


def _oserror(what: str, path: Path | None = None) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}", None if path is None else str(path))


class Inotify:
    """One inotify instance. ``read()`` never blocks: it returns [] when nothing is pending."""

    def __init__(self) -> None:
        fd = _lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _oserror("inotify_init1")
        self._fd: int | None = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("inotify instance is closed")
        return self._fd

    def add_watch(self, path: Path | str, mask: int) -> int:
        wd = _lib().inotify_add_watch(self.fileno(), os.fsencode(path), mask)
        if wd < 0:
            raise _oserror("inotify_add_watch", Path(path))
        return int(wd)

    def read(self) -> list[InotifyEvent]:
        events: list[InotifyEvent] = []
        while True:
            try:
                buf = os.read(self.fileno(), _READ_SIZE)
            except BlockingIOError:
                return events
            except InterruptedError:
                continue
            if not buf:
                return events
            events.extend(parse_events(buf))

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DirectoryWatcher:
    """Watch one directory (not recursively) while the ``async with`` block runs.

    ``callback(event)`` runs on the event loop for each event. The watch starts when the
    block is entered, so a caller that lists the directory *inside* the block misses nothing.
    """

    def __init__(
        self,
        path: Path | str,
        mask: int,
        callback: Callable[[InotifyEvent], None],
    ) -> None:
        self.path = Path(path)
        self.mask = mask
        self._callback = callback
        self._inotify: Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> DirectoryWatcher:
        inotify = Inotify()
        try:
            inotify.add_watch(self.path, self.mask | IN_ONLYDIR)
        except OSError as exc:
            inotify.close()
            if exc.errno == errno.ENOTDIR:
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(self.path)) from None
            raise
        self._loop = asyncio.get_running_loop()
        self._inotify = inotify
        self._loop.add_reader(inotify.fileno(), self._on_readable)
        return self

    def _on_readable(self) -> None:
        if self._inotify is None:
            return
        for event in self._inotify.read():
            self._callback(event)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._inotify is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
