"""eventd's heartbeat (an addition beside CONTRACT §4's types): its wire format, and a
daemon noticing a cluster whose eventd stopped: ``backend list``, ``/metrics`` and
``healthcheck --clusters`` against the real broker and database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dispatcher.core import heartbeat
from dispatcher.core.messages import InvalidMessage, parse
from dispatcher.db.engine import engine_scope
from dispatcher.pipeline.topology import routing_key_for
from dispatcher.simulation.publish import create_world, publish
from tests.support import PYTHON, ROOT, Env, daemon, op_status, wait_until


def test_wire_format_is_apart_from_the_event_types() -> None:
    body = heartbeat.heartbeat_body("c.example.org", "node1", 1_795_000_000_250_000, 30)
    assert json.loads(body) == {
        "type": "ganeti-eventd-heartbeat",
        "cluster": "c.example.org",
        "node": "node1",
        "event_time": [1_795_000_000, 250_000],
        "interval": 30,
    }
    hb = heartbeat.parse_heartbeat(body)
    assert hb.cluster == "c.example.org" and hb.event_time_s == 1_795_000_000.25
    # on an event queue it is an unknown type, dead-lettered as before
    with pytest.raises(InvalidMessage, match="unknown type 'ganeti-eventd-heartbeat'"):
        parse(body)
    with pytest.raises(InvalidMessage, match="cluster"):
        heartbeat.parse_heartbeat(b'{"type": "ganeti-eventd-heartbeat", "event_time": [1, 0]}')
    with pytest.raises(InvalidMessage, match="event_time"):
        heartbeat.parse_heartbeat(b'{"type": "ganeti-eventd-heartbeat", "cluster": "c"}')


def test_silence_counts_from_the_newest_sign_of_life() -> None:
    t = datetime(2026, 12, 4, tzinfo=UTC)
    s = timedelta(seconds=1)
    assert heartbeat.silence(t, t - 10 * s, t - 3 * s, t - 99 * s) == 3
    assert heartbeat.silence(t, t - 10 * s, None, t - 99 * s) == 10
    assert heartbeat.silence(t, None, None, t - 99 * s) == 99  # never heard: since created
    assert heartbeat.silence(t, t + s, None, t) == 0  # a clock ahead is not negative


def _healthcheck(env: Env, limit: float) -> subprocess.CompletedProcess[str]:
    return env.cli("healthcheck", "--clusters", "--max-silence", str(limit), check=False)


async def test_a_stopped_eventd_is_detected(env: Env, tmp_path: Path) -> None:
    cluster = f"{env.prefix}.gnt.test"
    backend_id = int(env.cli("backend", "add", cluster, "--host", "127.0.0.1").stdout)
    settings = env.settings()
    async with engine_scope(settings) as engine:
        world = await create_world(engine, 1)
    sim_backend = str(world.backend_id)
    assert env.json("backend", "show", str(backend_id))["last_heartbeat"] is None
    assert env.json("backend", "show", sim_backend)["eventd"].startswith("never heard")

    queue_dir = tmp_path / "queue"
    queue_dir.mkdir()
    eventd_env = {
        **os.environ,
        **env.vars,
        "DISPATCHER_EVENTD_HEARTBEAT_INTERVAL": "1",
        "DISPATCHER_EVENTD_NIC_SOURCE": "none",
    }
    with daemon(env) as d:
        proc = subprocess.Popen(
            [PYTHON, "-m", "dispatcher", "eventd", "--queue-dir", str(queue_dir),
             "--cluster", cluster, "--no-master-check"],
            env=eventd_env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            wait_until(
                lambda: env.json("backend", "show", str(backend_id))["last_heartbeat"],
                60, 0.3, "a heartbeat recorded",
            )  # fmt: skip
            # the other backend is heard of through an event applied to one of its servers
            inst = f"{env.prefix}-{world.vm_ids[0]}"
            body = op_status(inst, "OP_INSTANCE_CREATE", 4, "running", (1_795_000_000, 0))
            await publish(settings, [(routing_key_for(env.prefix, body["type"]), body)])
            wait_until(
                lambda: env.json("backend", "show", sim_backend)["last_event"],
                60, 0.3, "an applied event recorded",
            )  # fmt: skip
            assert env.json("backend", "show", str(backend_id))["last_event"] is None
            ok = _healthcheck(env, 30)
            assert ok.returncode == 0, ok.stderr
            line = f'dispatcher_cluster_eventd_silent_seconds{{cluster="{cluster}"}}'
            wait_until(lambda: line in d.metrics(), 30, 0.3, "the silence gauge")
            stamp = f'dispatcher_cluster_last_heartbeat_timestamp_seconds{{cluster="{cluster}"}}'
            assert stamp in d.metrics()
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        last = env.json("backend", "show", str(backend_id))["last_heartbeat"]

        def silent() -> str:
            check = _healthcheck(env, 3)
            return check.stderr if check.returncode == 1 and f"({cluster})" in check.stderr else ""

        stderr = wait_until(silent, 60, 0.5, "the silence detected")
        assert f"backend {backend_id} ({cluster}): eventd silent for" in stderr
        doc = env.json("backend", "show", str(backend_id))
        assert doc["last_heartbeat"] == last and doc["eventd_silent_s"] > 3
        assert doc["eventd"].startswith("silent for ")
        listing = env.cli("backend", "list").stdout.splitlines()
        assert listing[0].split()[-1] == "EVENTD"
        assert any(cluster in row and "silent for" in row for row in listing[1:])

        def gauge() -> float:
            for row in d.metrics().splitlines():
                if row.startswith(line):
                    return float(row.split()[-1])
            return 0.0

        wait_until(lambda: gauge() > 3, 30, 0.3, "the gauge over the limit")
    # an offline backend is not expected to speak
    for b in (str(backend_id), sim_backend):
        env.cli("backend", "modify", b, "--offline")
    assert _healthcheck(env, 3).returncode == 0
