"""The daemon seen from outside: systemd notifications, metrics that follow the stream, and
logs that never carry a secret."""

from __future__ import annotations

import json
import re
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aio_pika

from tests.support import Daemon, Env, as_postgres, daemon, wait_until


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_notify_ready_after_consuming_watchdog_and_stopping(env: Env, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    d = Daemon(env, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "600000"}).start(wait_ready=False)
    got: list[tuple[float, str]] = []

    def drain() -> None:
        try:
            while True:
                got.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            pass

    try:

        def ready_seen() -> bool:
            drain()
            return any("READY=1" in m for _, m in got)

        wait_until(ready_seen, 60, 0.01, "READY=1")
        # READY=1 only once consuming: the readiness endpoint agrees at that moment
        assert d.ready()
        before_ready = [
            m for _, m in got[: next(i for i, (_, m) in enumerate(got) if "READY=1" in m)]
        ]
        assert all("READY=1" not in m for m in before_ready)

        def pings() -> int:
            drain()
            return sum(m.count("WATCHDOG=1") for _, m in got)

        first = pings()
        wait_until(lambda: pings() >= first + 3, 10, 0.05, "watchdog pings")
        d.signal(signal.SIGTERM)

        def stopping() -> bool:
            drain()
            return any("STOPPING=1" in m for _, m in got)

        wait_until(stopping, 10, 0.05, "STOPPING=1")
        assert d.proc is not None
        assert d.proc.wait(15) == 0
    finally:
        d.stop()
        sock.close()


async def test_metrics_follow_the_stream(env: Env, tmp_path: Path) -> None:
    expect = tmp_path / "expect.json"
    with daemon(env) as d:
        summary = json.loads(
            env.cli(
                "simulate", "--vms", "60", "--seed", "11", "--expect", str(expect), "--json"
            ).stdout
        )
        published, dupes = summary["published"], summary["duplicates"]

        def handled() -> float:
            return _metric_sum(d.metrics(), "dispatcher_messages_total")

        wait_until(lambda: handled() >= published, 60, 0.2, "all messages handled")
        text = d.metrics()
        assert handled() == published
        assert _metric_sum(text, "dispatcher_messages_total", outcome="duplicate") == dupes
        applied = _metric_sum(text, "dispatcher_messages_total", outcome="applied")
        ignored = _metric_sum(text, "dispatcher_messages_total", outcome="ignored")
        assert applied + ignored == published - dupes
        assert _metric_sum(text, "dispatcher_messages_total", outcome="dead_lettered") == 0
        assert _metric_sum(text, "dispatcher_batch_size_messages_count") >= 1
        assert _metric_sum(text, "dispatcher_batch_size_messages_sum") == published
        assert _metric_sum(text, "dispatcher_event_lag_seconds_count") == applied
        assert _metric_sum(text, "dispatcher_amqp_connected") == 1
        assert _metric_sum(text, "dispatcher_consuming") == 1
        # per-queue labels are the live queue names
        assert f'queue="{env.prefix}-events-op"' in text
        # a bad message moves the dead-letter counter
        conn = await aio_pika.connect(env.vars["DISPATCHER_AMQP_URL"])
        try:
            channel = await conn.channel()
            exchange = await channel.get_exchange("ganeti")
            await exchange.publish(
                aio_pika.Message(b"garbage"), routing_key=f"ganeti.{env.prefix}.event.op"
            )
        finally:
            await conn.close()
        wait_until(
            lambda: (
                _metric_sum(d.metrics(), "dispatcher_messages_total", outcome="dead_lettered") == 1
            ),
            30,
            0.1,
            "dead letter",
        )
        # the dead-letter queue's depth is sampled (every 15 s) into a gauge
        wait_until(
            lambda: (
                _metric_sum(
                    d.metrics(), "dispatcher_dead_letter_messages", queue=f"{env.prefix}-events-op"
                )
                == 1
            ),
            40,
            0.5,
            "dead-letter depth",
        )


async def _rabbit_user(user: str, password: str) -> None:
    for args in (["add_user", user, password], ["set_permissions", user, ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


async def test_no_secret_in_any_log_line(env: Env, tmp_path: Path) -> None:
    db_secret = "dbS3cret-" + secrets.token_hex(8)
    amqp_secret = "mqS3cret-" + secrets.token_hex(8)
    rapi_secret = "rapiS3cret-" + secrets.token_hex(8)
    role = "r_" + secrets.token_hex(4)
    user = "u_" + secrets.token_hex(4)
    as_postgres(
        env.database,
        f"CREATE ROLE {role} LOGIN PASSWORD '{db_secret}';"
        f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role};"
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role};",
    )
    await _rabbit_user(user, amqp_secret)
    (tmp_path / "db").write_text(db_secret)
    (tmp_path / "mq").write_text(amqp_secret)
    (tmp_path / "rapi").write_text(rapi_secret)
    base = env.vars["DISPATCHER_DATABASE_URL"]
    host_db = base.split("@", 1)[1]
    secret_env = Env(
        {
            **env.vars,
            "DISPATCHER_DATABASE_URL": f"postgresql+asyncpg://{role}@{host_db}",
            "DISPATCHER_DATABASE_PASSWORD_FILE": str(tmp_path / "db"),
            "DISPATCHER_AMQP_URL": f"amqp://{user}@127.0.0.1:5672/",
            "DISPATCHER_AMQP_PASSWORD_FILE": str(tmp_path / "mq"),
            "DISPATCHER_LOG_LEVEL": "DEBUG",
            "DISPATCHER_LOG_FORMAT": "json",
            "DISPATCHER_MAX_RETRIES": "1",
        },
        env.database,
    )
    outputs: list[str] = []
    try:
        summary = json.loads(
            secret_env.cli("simulate", "--vms", "5", "--seed", "5", "--json").stdout
        )
        poison = f"{env.prefix}-{summary['first_vm']}"
        with daemon(secret_env, DISPATCHER_FAULT_INJECT_INSTANCES=json.dumps([poison])) as d:
            await _bad_inputs(secret_env)
            wait_until(
                lambda: (
                    _metric_sum(d.metrics(), "dispatcher_messages_total", outcome="dead_lettered")
                    >= 4
                ),
                60,
                0.2,
                "dead letters",
            )
            # the database connection cut under the daemon: the retry path logs too
            as_postgres(
                "postgres",
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            )
            secret_env.cli("simulate", "--vms", "2", "--seed", "6")
            wait_until(lambda: "retried" in d.metrics(), 30, 0.2, "retry")
            out = secret_env.cli(
                "backend",
                "add",
                "c1.example",
                "--host",
                "127.0.0.1",
                "--username",
                "u",
                "--password-file",
                str(tmp_path / "rapi"),
                "--json",
            )
            outputs += [out.stdout, out.stderr]
            for args in (
                ["config", "show", "--json"],
                ["backend", "list", "--json"],
                ["queue", "inspect", f"{env.prefix}-events-op", "--json"],
            ):
                r = secret_env.cli(*args)
                outputs += [r.stdout, r.stderr]
        outputs.append(d.log())
        # a wrong password and an unreachable broker: the errors name neither secret
        wrong = secret_env.cli(
            "server",
            "list",
            check=False,
            extra={"DISPATCHER_DATABASE_PASSWORD_FILE": str(tmp_path / "mq")},
        )
        assert wrong.returncode == 1
        assert wrong.stderr.splitlines()[-1].startswith("dispatcher: database error")
        outputs += [wrong.stdout, wrong.stderr]
        down = secret_env.cli(
            "queue",
            "inspect",
            f"{env.prefix}-events-op",
            check=False,
            extra={"DISPATCHER_AMQP_URL": f"amqp://{user}@127.0.0.1:1/"},
        )
        assert down.returncode == 1
        outputs += [down.stdout, down.stderr]
    finally:
        subprocess.run(["rabbitmqctl", "-q", "delete_user", user], capture_output=True, timeout=60)
        as_postgres(
            "postgres",
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
        )
        as_postgres(env.database, f"DROP OWNED BY {role}; DROP ROLE {role}")
    text = "\n".join(outputs)
    assert '"level": "WARNING"' in text or '"level":"WARNING"' in text  # error paths logged
    for secret in (db_secret, amqp_secret, rapi_secret):
        assert secret not in text
        assert re.escape(secret) not in text


async def _bad_inputs(env: Env) -> None:
    conn = await aio_pika.connect(env.settings().amqp_urls[0])
    try:
        channel = await conn.channel()
        exchange = await channel.get_exchange("ganeti")
        bodies: list[tuple[str, Any]] = [
            ("op", b"{not json"),
            ("op", json.dumps({"type": "ganeti-op-status", "instance": "x"}).encode()),
            (
                "progress",
                json.dumps(
                    {
                        "type": "ganeti-create-progress",
                        "instance": "x",
                        "rprogress": "12",
                        "event_time": [1, 0],
                    }
                ).encode(),
            ),
            ("network", b"[]"),
            (
                "op",
                json.dumps(
                    {
                        "type": "ganeti-op-status",
                        "instance": "zz-1",
                        "operation": "OP",
                        "jobId": 1,
                        "status": "success",
                        "logmsg": None,
                        "event_time": [1, 0],
                    }
                ).encode(),
            ),
        ]
        for stream, body in bodies:
            await exchange.publish(
                aio_pika.Message(body), routing_key=f"ganeti.{env.prefix}.event.{stream}"
            )
    finally:
        await conn.close()
