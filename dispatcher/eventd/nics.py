"""An instance's NIC list, read from the cluster (not guessed from the opcode's input).

Source: the master's own RAPI, ``GET /2/instances/NAME`` (``nic.macs``, ``nic.ips``,
``nic.networks.names``, ``nic.links``, ``nic.modes``, ``nic.names`` and ``tags``), through
:class:`dispatcher.rapi.client.RapiClient`. Why RAPI rather than ``gnt-instance list``: it is
one async HTTP request instead of a Python-interpreter fork per event; it needs no access
to the luxi sockets nor Ganeti's Python on eventd's side (eventd runs unprivileged and
sandboxed); it answers identically from any network namespace that can reach it; and it is
the interface the rest of the project already speaks and tests. A read-only RAPI user is
enough.

The firewall value of NIC ``i`` comes from the instance tag ``synnefo:network:<i>:<value>``
(Synnefo's hook); HEAD-style tags naming the NIC (``synnefo:network:<nic name>:<value>``)
are honoured too. A NIC outside any Ganeti network gets ``network: ""``: the message stays
valid and the consumer reports the NIC list as naming an unknown network (CONTRACT §5.3).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from dispatcher.oneline import one_line
from dispatcher.rapi.client import RapiClient
from dispatcher.rapi.errors import RapiError, RapiNotFound

__all__ = ["NicReader", "RapiNicReader", "firewall_by_nic", "nics_from_instance"]

log = logging.getLogger(__name__)

NicDict = dict[str, Any]


class NicReader(Protocol):
    async def read(self, instance: str) -> list[NicDict] | None:
        """The instance's NICs in index order; None when they cannot be read now."""
        ...

    async def aclose(self) -> None: ...


def _at(values: Any, index: int) -> Any:
    if isinstance(values, list) and index < len(values):
        return values[index]
    return None


def firewall_by_nic(tags: Sequence[Any], nic_names: Sequence[Any]) -> dict[int, str]:
    """NIC index → firewall value, from ``synnefo:network:<index or nic name>:<value>`` tags.

    The first tag for a NIC wins; malformed ``synnefo:network:`` tags are logged and skipped.
    """
    out: dict[int, str] = {}
    for tag in tags:
        if not isinstance(tag, str) or not tag.startswith("synnefo:network:"):
            continue
        parts = tag.split(":")
        if len(parts) != 4 or not parts[2] or not parts[3]:
            log.warning("malformed firewall tag %r skipped", tag)
            continue
        ref, value = parts[2], parts[3]
        if ref.isascii() and ref.isdecimal():
            index: int | None = int(ref)
        else:
            index = next((i for i, n in enumerate(nic_names) if n == ref), None)
        if index is not None:
            out.setdefault(index, value)
    return out


def nics_from_instance(info: Mapping[str, Any]) -> list[NicDict]:
    """CONTRACT §4 NIC objects from a RAPI instance object (``GET /2/instances/NAME``)."""
    macs = info.get("nic.macs")
    if not isinstance(macs, list):
        return []
    names = info.get("nic.names")
    tags = info.get("tags")
    firewall = firewall_by_nic(
        tags if isinstance(tags, list) else [], names if isinstance(names, list) else []
    )
    nics = []
    for index, mac in enumerate(macs):
        network = _at(info.get("nic.networks.names"), index)
        ip = _at(info.get("nic.ips"), index)
        nic: NicDict = {
            "network": network if isinstance(network, str) else "",
            "mac": mac if isinstance(mac, str) else None,
            "ip": ip if isinstance(ip, str) and ip else None,
        }
        for key, source in (("link", "nic.links"), ("mode", "nic.modes"), ("name", "nic.names")):
            value = _at(info.get(source), index)
            if isinstance(value, str):
                nic[key] = value
        if index in firewall:
            nic["firewall"] = firewall[index]
        nics.append(nic)
    return nics


class RapiNicReader:
    """NICs over RAPI. Never raises: a failure is logged (rate-limited) and gives None,
    so the event is published without NICs rather than held back."""

    def __init__(self, client: RapiClient, *, timeout: float = 10.0, warn_every: float = 60.0):
        self.client = client
        self.timeout = timeout
        self.warn_every = warn_every
        self._last_warning = -float("inf")
        self._suppressed = 0

    async def read(self, instance: str) -> list[NicDict] | None:
        try:
            async with asyncio.timeout(self.timeout):
                info = await self.client.get_instance(instance)
        except RapiNotFound:
            log.info("instance %s is gone; publishing without its NICs", instance)
            return None
        except (RapiError, TimeoutError, ValueError) as exc:
            self._warn(instance, exc)
            return None
        return nics_from_instance(info)

    def _warn(self, instance: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning < self.warn_every:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} similar failures since the last warning)" * bool(
            self._suppressed
        )
        log.warning(
            "cannot read the NICs of %s from RAPI %s: %s; publishing without them%s",
            instance,
            self.client.base_url,
            one_line(exc, kind=False),
            more,
        )
        self._last_warning, self._suppressed = now, 0

    async def aclose(self) -> None:
        await self.client.aclose()
