"""One screen of ``dispatcher top`` from a snapshot: pure, so the live screen and the
one-shot table (``--once``, or stdout not a terminal) are the same rendering. Sized for an
80x24 terminal: long lists are cut with a "+N more" line."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dispatcher.top.snapshot import Rates, Snapshot

MAX_BUILDING = 4


def _gib(mib: int) -> str:
    return f"{mib / 1024:.0f}G" if mib >= 10240 else f"{mib / 1024:.1f}G"


def banners(snap: Snapshot, silent_limit: float) -> list[str]:
    out = []
    if snap.database_error:
        out.append(f"DATABASE NOT REACHABLE: {snap.database_error}")
    if snap.daemon_error:
        out.append(f"DAEMON NOT REACHABLE: {snap.daemon_error}")
    for b in snap.backends:
        if not b.offline and b.silent_s > silent_limit:
            out.append(f"CLUSTER {b.clustername} NOT HEARD: eventd silent for {b.silent_s:.0f} s")
    return out


def _header(snap: Snapshot, r: Rates, now: datetime) -> Text:
    rate = f"{r.per_second:.1f}/s" if r.per_second is not None else "-"
    lag = f"{r.lag_s:.2f} s" if r.lag_s is not None else "-"
    text = Text(f"dispatcher top  {now:%H:%M:%S}Z  ", style="bold")
    text.append(f"messages {rate}  event lag {lag}", style="")
    if snap.daemon is not None:
        dl = "  ".join(
            f"{q.rsplit('-events-', 1)[-1]} {v:.0f}"
            for q, v in sorted(snap.daemon.dead_letters.items())
        )
        text.append(f"\ndead letters: {dl or '-'}")
    return text


def _backends(snap: Snapshot) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold", expand=False)
    for col in ("ID", "CLUSTER", "STATE", "MEM FREE", "DISK FREE", "VMS", "EVENTD"):
        t.add_column(col, no_wrap=True)
    t.columns[1].max_width = 22
    t.columns[1].overflow = "ellipsis"
    for b in snap.backends:
        state = "offline" if b.offline else ("drained" if b.drained else "online")
        t.add_row(
            str(b.id),
            b.clustername,
            Text(state, style="red" if b.offline else ("yellow" if b.drained else "green")),
            f"{_gib(b.mfree)}/{_gib(b.mtotal)}",
            f"{_gib(b.dfree)}/{_gib(b.dtotal)}" if b.dtotal else "-",
            str(b.servers),
            f"silent {b.silent_s:.0f}s",
        )
    return t


def _building(snap: Snapshot) -> Table:
    t = Table(box=None, pad_edge=False, show_header=False, expand=False)
    t.add_column(no_wrap=True)
    t.add_column(no_wrap=True, max_width=16, overflow="ellipsis")
    t.add_column(no_wrap=True)
    t.add_column(no_wrap=True, justify="right")
    for b in snap.building[:MAX_BUILDING]:
        bar = ProgressBar(total=100, completed=min(b.percent, 100), width=30)
        t.add_row(f"BUILD {b.id}", b.name, bar, f"{b.percent}%")
    if len(snap.building) > MAX_BUILDING:
        t.add_row("", f"+{len(snap.building) - MAX_BUILDING} more", "", "")
    return t


def _events(snap: Snapshot) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold", expand=False)
    for col in ("APPLIED", "SERVER", "OPCODE / TYPE", "STATUS"):
        t.add_column(col, no_wrap=True, overflow="ellipsis")
    t.columns[2].max_width = 30
    for e in snap.events:
        status_style = {"success": "green", "error": "red", "canceled": "red"}.get(e.status, "")
        t.add_row(
            f"{e.received.astimezone(UTC):%H:%M:%S}",
            str(e.server_id),
            e.what,
            Text(e.status, style=status_style),
        )
    return t


def render(
    snap: Snapshot, r: Rates, *, silent_limit: float, now: datetime | None = None
) -> RenderableType:
    now = now or datetime.now(UTC)
    parts: list[RenderableType] = [_header(snap, r, now)]
    parts += [Text(b, style="bold white on red") for b in banners(snap, silent_limit)]
    parts.append(_backends(snap))
    states = "  ".join(f"{k} {v}" for k, v in snap.states.items()) or "none"
    parts.append(Text(f"servers: {states}", style="bold"))
    if snap.building:
        parts.append(_building(snap))
    parts.append(_events(snap))
    return Group(*parts)
