"""Is this node the Ganeti master? From ssconf, cheaply enough to ask before every publish.

Master candidates hold replicated copies of the job files, so eventd on a non-master would
publish duplicates; it publishes only while ``ssconf_master_node`` names this node
(Synnefo HEAD, ``f522e1fc3``). ssconf files are small and replaced by rename: the answer is
cached against the file's identity (inode, size, mtime), so a check costs one ``stat``.

This node's name is the one given (``--node-name`` / ``DISPATCHER_EVENTD_NODE_NAME``) or, as
Ganeti itself does, ``socket.getfqdn()`` (the short host name is accepted too). The explicit
name matters where name resolution differs from Ganeti's view, e.g. the sandbox cluster,
whose daemons live in a network namespace with its own ``/etc/hosts``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from pathlib import Path

__all__ = ["MasterCheck", "local_names", "read_ssconf"]

log = logging.getLogger(__name__)


def read_ssconf(data_dir: Path, key: str) -> str | None:
    """The value of ``<data_dir>/ssconf_<key>`` (first line, stripped), or None."""
    try:
        text = (data_dir / f"ssconf_{key}").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    value = text.strip().splitlines()[0].strip() if text.strip() else ""
    return value or None


def local_names(node_name: str | None = None) -> frozenset[str]:
    if node_name:
        return frozenset({node_name.strip().lower()})
    names = {socket.getfqdn(), socket.gethostname()}
    return frozenset(n.strip().lower() for n in names if n and n.strip())


class MasterCheck:
    """``is_master()`` answers from ``<data_dir>/ssconf_master_node`` and this node's names."""

    def __init__(self, data_dir: Path, names: Iterable[str]) -> None:
        self.path = Path(data_dir) / "ssconf_master_node"
        self.names = frozenset(n.lower() for n in names)
        self._stamp: tuple[int, int, int, int] | None = None
        self._master: str | None = None
        self._warned = False

    @property
    def master(self) -> str | None:
        """The master's name as last read (None: unknown)."""
        return self._master

    def is_master(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if not self._warned:
                log.warning(
                    "cannot read %s (%s): not publishing until it names this node",
                    self.path,
                    exc.strerror,
                )
                self._warned = True
            self._stamp, self._master = None, None
            return False
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if stamp != self._stamp:
            self._master = read_ssconf(self.path.parent, "master_node")
            self._stamp = stamp
            self._warned = False
        return self._master is not None and self._master.lower() in self.names
