"""The role scripts/services.sh provisions can do what the test teardown, the benchmark and
the demo ask of it: drop a database with ``WITH (FORCE)`` while a process of another role
(an autovacuum worker, in the failure CI met) is still in it."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.support import as_postgres, pg_dsn, with_db


def _as_role(dsn: str, role: str, password: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{parts.netloc.rsplit('@', 1)[-1]}"))


async def test_force_drop_ends_another_roles_session(base_db_url: str) -> None:
    name = "drop_" + secrets.token_hex(6)
    role = "r_" + secrets.token_hex(4)
    password = secrets.token_hex(12)
    admin = await asyncpg.connect(pg_dsn(with_db(base_db_url, "postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        as_postgres("postgres", f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        other = await asyncpg.connect(_as_role(pg_dsn(with_db(base_db_url, name)), role, password))
        try:
            assert await other.fetchval("SELECT 1") == 1
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            assert not await admin.fetchval(
                "SELECT count(*) FROM pg_database WHERE datname = $1", name
            )
            # the other session was ended by the drop, not left dangling
            try:
                await other.fetchval("SELECT 1")
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                pass
            else:
                raise AssertionError("the other role's session survived the drop")
        finally:
            await other.close(timeout=5)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        as_postgres("postgres", f"DROP ROLE IF EXISTS {role}")
