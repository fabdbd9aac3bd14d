"""``dispatcher top`` for real: in a tmux terminal of 80x24 (keys sent, the pane captured)
against a running daemon and a simulated stream, and as the plain one-shot table."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dispatcher.db.engine import engine_scope
from dispatcher.pipeline.topology import routing_key_for
from dispatcher.simulation.publish import create_world, publish
from dispatcher.top.snapshot import DaemonMetrics, Rates, Snapshot, parse_metrics, rates
from tests.support import PYTHON, ROOT, Env, daemon, op_status, wait_until


class Tmux:
    """A private tmux server (its own socket), so nothing else on the machine is touched."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name]

    def __call__(self, *args: str) -> str:
        return subprocess.run(
            [*self.base, *args], check=True, capture_output=True, text=True, timeout=30
        ).stdout

    def start(self, command: str) -> None:
        self("new-session", "-d", "-s", "top", "-x", "80", "-y", "24", "sh")
        self("set-option", "-t", "top", "remain-on-exit", "on")
        self("respawn-pane", "-k", "-t", "top", command)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def screen_if(self, pred: Callable[[str], bool]) -> str:
        screen = self.screen()
        return screen if pred(screen) else ""

    def pane(self, fmt: str) -> str:
        return self("display-message", "-p", "-t", "top", fmt).strip()

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, timeout=30)


def _line(screen: str, start: str) -> str:
    return next((ln for ln in screen.splitlines() if ln.strip().startswith(start)), "")


async def test_the_live_screen_follows_a_stream(env: Env, tmp_path: Path) -> None:
    settings = env.settings()
    async with engine_scope(settings) as engine:
        world = await create_world(engine, 2)
    vm = world.vm_ids[0]
    inst = f"{env.prefix}-{vm}"

    async def send(body: dict[str, Any]) -> None:
        await publish(settings, [(routing_key_for(env.prefix, body["type"]), body)])

    def progress(pct: int, t: int) -> dict[str, Any]:
        return {"type": "ganeti-create-progress", "instance": inst, "rprogress": pct,
                "event_time": [1_795_000_000 + t, 0]}  # fmt: skip

    tmux = Tmux(f"dispatcher-test-{env.prefix}")
    with daemon(env) as d:
        script = tmp_path / "top.sh"
        exports = {**env.vars, "DISPATCHER_HTTP_LISTEN": f"127.0.0.1:{d.port}", "TERM": "xterm"}
        script.write_text(
            "".join(f"export {k}={shlex.quote(v)}\n" for k, v in exports.items())
            + f"cd {shlex.quote(str(ROOT))}\nexec {PYTHON} -m dispatcher top --interval 0.3\n"
        )
        try:
            tmux.start(f"sh {shlex.quote(str(script))}")
            build_line = f"BUILD {vm} "
            first = wait_until(
                lambda: tmux.screen_if(lambda s: _line(s, build_line).endswith(" 0%")),
                60, 0.2, "the BUILD line at 0%",
            )  # fmt: skip
            assert "dispatcher top" in first and "DAEMON NOT REACHABLE" not in first
            assert "sim.gnt.test" in first and "servers: BUILD 2" in first
            bars = [_line(first, build_line)]
            for t, pct in enumerate((30, 70), start=1):
                await send(progress(pct, t))

                def bar_at(pct: int = pct) -> str:
                    return tmux.screen_if(lambda s: _line(s, build_line).endswith(f" {pct}%"))

                screen = wait_until(bar_at, 60, 0.2, f"the bar at {pct}%")
                bars.append(_line(screen, build_line))
            # the bar itself moves: its filled part (drawn in its own glyphs) grows
            assert bars[0] != bars[1] != bars[2]
            await send(op_status(inst, "OP_INSTANCE_CREATE", 5, "success", (1_795_000_010, 0)))
            done = wait_until(
                lambda: tmux.screen_if(lambda s: "STARTED 1" in s), 60, 0.2, "STARTED"
            )
            assert _line(done, build_line) == "" and "servers: BUILD 1  STARTED 1" in done
            assert re.search(rf"\b{vm}\s+OP_INSTANCE_CREATE\s+success", done), done
            assert len(done.splitlines()) <= 24
            assert all(len(ln) <= 80 for ln in done.splitlines())
            tmux("send-keys", "-t", "top", "q")
            wait_until(lambda: tmux.pane("#{pane_dead}") == "1", 30, 0.1, "top to quit on q")
            # remain-on-exit: tmux reports the exit status on the dead pane
            assert "Pane is dead (status 0" in tmux.screen()
        finally:
            tmux.kill()


async def test_once_is_a_plain_table_with_banners(env: Env) -> None:
    async with engine_scope(env.settings()) as engine:
        await create_world(engine, 1)
    out = env.cli(
        "top", "--once", "--interval", "0.1", "--max-silence", "0.001",
        extra={"DISPATCHER_HTTP_LISTEN": "127.0.0.1:1"},
    ).stdout  # fmt: skip
    assert "\x1b[" not in out  # no terminal control when stdout is not a terminal
    assert "DAEMON NOT REACHABLE: http://127.0.0.1:1/metrics: ConnectError" in out
    assert "CLUSTER sim.gnt.test NOT HEARD: eventd silent for" in out
    assert re.search(r"ID\s+CLUSTER\s+STATE", out) and "servers: BUILD 1" in out
    # not a terminal: the same table without --once
    plain = subprocess.run(
        [PYTHON, "-m", "dispatcher", "top", "--interval", "0.1"],
        env={**os.environ, **env.vars}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert plain.returncode == 0 and "servers: BUILD 1" in plain.stdout
    assert "DAEMON NOT REACHABLE: no metrics listener" in plain.stdout


def test_rates_between_two_samples() -> None:
    text = (
        'dispatcher_messages_total{queue="op",outcome="applied"} 90\n'
        'dispatcher_messages_total{queue="op",outcome="duplicate"} 10\n'
        "dispatcher_event_lag_seconds_sum 30\n"
        "dispatcher_event_lag_seconds_count 60\n"
        'dispatcher_dead_letter_messages{queue="p-events-op"} 3\n'
    )
    first = parse_metrics(text)
    assert (first.messages, first.dead_letters) == (100, {"p-events-op": 3})
    before = Snapshot(taken=10.0, daemon=first)
    after = Snapshot(
        taken=12.0, daemon=DaemonMetrics(messages=150, lag_sum=40, lag_count=80, dead_letters={})
    )
    assert rates(before, after) == Rates(25.0, 0.5)  # 50 messages in 2 s, 10 s over 20
    assert rates(None, after) == Rates(None, None)
    restarted = Snapshot(taken=14.0, daemon=DaemonMetrics(5, 0, 0, {}))
    assert rates(after, restarted) == Rates(None, None)  # counters went back to zero
    idle = Snapshot(taken=14.0, daemon=after.daemon)
    assert rates(after, idle) == Rates(0.0, None)
