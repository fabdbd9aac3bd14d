"""Fixtures: the real RabbitMQ and PostgreSQL (started by scripts/services.sh when not yet
running), a migrated template database, and per-test databases and queue prefixes."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support import (
    PYTHON,
    ROOT,
    SERVICES,
    Env,
    pg_dsn,
    run_script,
    script_env,
    unique_prefix,
    with_db,
)

ADMIN_DB = "postgres"
# per session: concurrent pytest sessions must not clone each other's half-migrated template
TEMPLATE = f"dispatcher_test_tpl_{os.getpid()}"


@pytest.fixture(scope="session")
def service_env() -> dict[str, str]:
    run_script(SERVICES, "start", timeout=600)
    env = script_env(SERVICES)
    env.setdefault(
        "DISPATCHER_TEST_DATABASE_URL", os.environ.get("DISPATCHER_TEST_DATABASE_URL", "")
    )
    return env


@pytest.fixture(scope="session")
def base_db_url(service_env: dict[str, str]) -> str:
    return service_env["DISPATCHER_DATABASE_URL"]


@pytest.fixture(scope="session")
async def template_db(base_db_url: str) -> AsyncIterator[str]:
    """A database migrated to head once per session; tests clone it."""
    admin = await asyncpg.connect(pg_dsn(with_db(base_db_url, ADMIN_DB)))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    finally:
        await admin.close()
    env = {**os.environ, "DISPATCHER_DATABASE_URL": with_db(base_db_url, TEMPLATE)}
    subprocess.run(
        [PYTHON, "-m", "dispatcher", "migrate"], env=env, check=True, capture_output=True, cwd=ROOT
    )
    yield TEMPLATE
    admin = await asyncpg.connect(pg_dsn(with_db(base_db_url, ADMIN_DB)))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def env(
    service_env: dict[str, str], base_db_url: str, template_db: str
) -> AsyncIterator[Env]:
    name = "t_" + secrets.token_hex(6)
    admin = await asyncpg.connect(pg_dsn(with_db(base_db_url, ADMIN_DB)))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    prefix = unique_prefix()
    e = Env(
        vars={
            "DISPATCHER_DATABASE_URL": with_db(base_db_url, name),
            "DISPATCHER_AMQP_URL": service_env["DISPATCHER_AMQP_URL"],
            "DISPATCHER_PREFIX": prefix,
            "DISPATCHER_HTTP_LISTEN": "",
            "DISPATCHER_LOG_LEVEL": "INFO",
        },
        database=name,
    )
    yield e
    await delete_queues(service_env["DISPATCHER_AMQP_URL"], prefix)
    admin = await asyncpg.connect(pg_dsn(with_db(base_db_url, ADMIN_DB)))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def delete_queues(amqp_url: str, prefix: str) -> None:
    import aio_pika

    try:
        conn = await aio_pika.connect(amqp_url, timeout=10)
    except Exception:  # noqa: BLE001 - a test that stopped the broker cleans up nothing
        return
    try:
        channel = await conn.channel()
        names = [f"{prefix}-heartbeat"]
        for stream in ("op", "net", "network", "progress"):
            names += [f"{prefix}-events-{stream}", f"{prefix}-events-{stream}-dl"]
        for name in names:
            try:
                await channel.queue_delete(name)
            except Exception:  # noqa: BLE001 - absent queue closes the channel
                channel = await conn.channel()
    finally:
        await conn.close()
