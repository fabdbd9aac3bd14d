"""The daemon's lifecycle under a real stream: two replicas sharing the queues end in exactly
the in-order state (CONTRACT §5.2), and SIGTERM mid-stream is a clean stop: exit 0 within
seconds, and after a restart every message's effect is present once and the queues drain
to 0 (§5.1). Helpers (stream, comparison, counters) are shared with ``test_faults``."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.support import Env, Gate, async_wait_until
from tests.test_faults import (
    Stream,
    Tally,
    depths,
    final_check,
    history_rows,
    report,
    settle,
    start_daemons,
    stop_and_check_drained,
)


async def test_two_daemons_share_one_stream(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = Tally()
    daemons = start_daemons(env, 2)
    try:
        # published while both consume: shuffled (window 50) and 15 % re-emitted
        stream = Stream.start(env, tmp_path, vms=500, seed=11)
        expected = stream.expected()
        await settle(env, expected, daemons, tally)
        shares = [tally.scrape(d) for d in daemons]
        await stop_and_check_drained(env, daemons, tally)
    finally:
        for d in daemons:
            d.kill()
    assert all(n > 0 for n in shares), f"one replica got nothing: {shares}"
    counts = tally.summary()
    # no failure anywhere: each delivery handled exactly once, by one of the two
    assert tally.handled() == stream.sent
    assert counts["applied"] + counts["ignored"] == stream.distinct
    assert counts["duplicate"] == stream.sent - stream.distinct
    assert counts["dead_lettered"] == 0 and counts["retried"] == 0
    rows = await history_rows(env)
    assert rows == stream.distinct
    bad = final_check(env, expected)
    report(
        capsys,
        "two-daemons",
        sent=stream.sent,
        distinct=stream.distinct,
        shares=shares,
        **counts,
        history_rows=rows,
        servers=len(expected["servers"]),
        networks=len(expected["networks"]),
        mismatches=bad,
    )


async def test_sigterm_mid_stream_then_restart(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = Stream.start(env, tmp_path, vms=500, seed=12)  # the backlog, published first
    expected = stream.expected()
    tally = Tally()
    # mid-stream by construction: the daemon holds its first batch at the gate, its
    # prefetch (1,024) far below the backlog, when SIGTERM arrives; the grace is long, so
    # that the time the gate stays shut after the signal cannot use it up
    gate = await Gate(env).close()
    try:
        first = start_daemons(env, 1, DISPATCHER_SHUTDOWN_GRACE="120")[0]
        try:
            await gate.blocked()
            tally.scrape(first)
            first.signal(signal.SIGTERM)
            await async_wait_until(
                lambda: asyncio.to_thread(lambda: "stop requested" in first.log()),
                30,
                0.05,
                "the daemon to take the stop",
            )
            waiting = await depths(env)
            await gate.open()
            released = time.monotonic()
            assert first.proc is not None
            code = first.proc.wait(timeout=60)
            took = time.monotonic() - released
        finally:
            first.kill()
    finally:
        await gate.open()
    log = first.log()
    assert code == 0, log[-2000:]
    # the batch in hand and the rest of the prefetch were finished, not abandoned
    assert "shutdown grace elapsed" not in log, log[-2000:]
    assert "stop requested" in log and "stopped" in log
    assert sum(waiting.values()) > 0, "the stream was over before the stop"
    second = start_daemons(env, 1)[0]
    try:
        await settle(env, expected, [second], tally)
        await stop_and_check_drained(env, [second], tally)
    finally:
        second.kill()
    # every distinct message's effect once: one history row each, none missing, the
    # state equal to the in-order fold, nothing left unacked in any queue
    rows = await history_rows(env)
    assert rows == stream.distinct
    bad = final_check(env, expected)
    left = await depths(env, dead_letters=True)
    assert not any(left.values()), left
    counts = tally.summary()
    assert counts["dead_lettered"] == 0 and counts["retried"] == 0
    report(
        capsys,
        "sigterm",
        sent=stream.sent,
        distinct=stream.distinct,
        stop_seconds=round(took, 2),  # gate opened → exit
        ready_at_stop=sum(waiting.values()),
        **counts,
        history_rows=rows,
        servers=len(expected["servers"]),
        networks=len(expected["networks"]),
        mismatches=bad,
    )
