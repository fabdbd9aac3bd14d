"""CONTRACT §3: the topology is declared idempotently; a queue that exists with other
arguments stops the daemon with one line naming the queue and the setting to change."""

from __future__ import annotations

import os
import subprocess

import aio_pika

from tests.conftest import delete_queues
from tests.support import PYTHON, ROOT, Env


async def _declared(env: Env) -> dict[str, int]:
    conn = await aio_pika.connect(env.vars["DISPATCHER_AMQP_URL"])
    try:
        out = {}
        for stream in ("op", "net", "network", "progress"):
            for name in (f"{env.prefix}-events-{stream}", f"{env.prefix}-events-{stream}-dl"):
                channel = await conn.channel()
                q = await channel.declare_queue(name, passive=True)
                out[name] = q.declaration_result.message_count or 0
        return out
    finally:
        await conn.close()


async def test_declared_twice_with_both_queue_types(env: Env) -> None:
    for queue_type in ("quorum", "classic"):
        prefix_env = Env(
            {
                **env.vars,
                "DISPATCHER_PREFIX": env.prefix + queue_type[0],
                "DISPATCHER_QUEUE_TYPE": queue_type,
            },
            env.database,
        )
        try:
            for _ in range(2):  # idempotent
                prefix_env.cli("simulate", "--vms", "1", "--seed", "3")
            declared = await _declared(prefix_env)
            assert len(declared) == 8
            assert declared[f"{prefix_env.prefix}-events-op"] > 0
        finally:
            await delete_queues(env.vars["DISPATCHER_AMQP_URL"], prefix_env.prefix)


async def test_mismatched_queue_stops_the_daemon_with_one_line(env: Env) -> None:
    conn = await aio_pika.connect(env.vars["DISPATCHER_AMQP_URL"])
    try:
        channel = await conn.channel()
        await channel.declare_queue(f"{env.prefix}-events-op", durable=True)  # classic, no DLX
    finally:
        await conn.close()
    proc = subprocess.run(
        [PYTHON, "-m", "dispatcher", "run"],
        env={**os.environ, **env.vars, "DISPATCHER_QUEUE_TYPE": "quorum"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("dispatcher: queue ")
    assert f"{env.prefix}-events-op" in last and "DISPATCHER_QUEUE_TYPE" in last
    # the queue it refused is still there: it never deletes queues on its own
    conn = await aio_pika.connect(env.vars["DISPATCHER_AMQP_URL"])
    try:
        channel = await conn.channel()
        await channel.declare_queue(f"{env.prefix}-events-op", passive=True)
    finally:
        await conn.close()
