"""The latency options (bench/README.md, "latency attempts"): ``DISPATCHER_EVENT_LOOP=uvloop``
and ``DISPATCHER_BATCH_WAIT``. Each must keep CONTRACT §5.1/§5.2 as the defaults do: a
shuffled stream with re-emitted messages, consumed by a daemon with the option, ends with
every distinct message applied once, every delivery acked (the queues drain to 0) and the
in-order state."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support import PYTHON, ROOT, Env
from tests.test_faults import Stream, Tally, conclude, settle, start_daemons, stop_and_check_drained


def test_uvloop_not_installed_is_a_usage_error(tmp_path: Path) -> None:
    # sys.modules[name] = None makes the import system report the module as absent
    code = (
        "import sys; sys.modules['uvloop'] = None\n"
        "from dispatcher.cli import main\n"
        "sys.exit(main(['run']))\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code],
        env={"PATH": "/usr/bin:/bin", "DISPATCHER_EVENT_LOOP": "uvloop", "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "DISPATCHER_EVENT_LOOP" in lines[0] and "uvloop is not installed" in lines[0]


def test_unknown_event_loop_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [PYTHON, "-m", "dispatcher", "run"],
        env={"PATH": "/usr/bin:/bin", "DISPATCHER_EVENT_LOOP": "trio", "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "DISPATCHER_EVENT_LOOP" in proc.stderr


@pytest.mark.parametrize(
    ("option", "log_line"),
    [
        ({"DISPATCHER_EVENT_LOOP": "uvloop"}, "event loop: uvloop.Loop"),
        ({"DISPATCHER_BATCH_WAIT": "0.02"}, "event loop: asyncio."),
    ],
    ids=["uvloop", "batch-wait"],
)
async def test_stream_with_option(
    env: Env,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: dict[str, str],
    log_line: str,
) -> None:
    tally = Tally()
    daemons = start_daemons(env, 1, **option)
    try:
        stream = Stream.start(env, tmp_path, vms=300, seed=23)
        expected = stream.expected()
        await settle(env, expected, daemons, tally)
        await stop_and_check_drained(env, daemons, tally)
    finally:
        for d in daemons:
            d.kill()
    assert log_line in daemons[0].log()
    # one daemon, no fault: every delivery was counted, each duplicate as a duplicate
    assert tally.handled() == stream.sent
    assert tally.summary()["duplicate"] == stream.sent - stream.distinct
    name = f"option-{next(iter(option))}"
    await conclude(env, capsys, name, stream, expected, tally, exact=True)
