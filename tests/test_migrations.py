"""The Alembic migrations against the models: from an empty database, ``upgrade`` to head
yields exactly ``Base.metadata``'s schema; ``downgrade`` to base leaves nothing behind; and
the round trip can be made again, also one revision at a time."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from dispatcher.db.models import Base
from dispatcher.migrate import alembic_config, current, downgrade, upgrade
from tests.support import pg_dsn, with_db


@pytest.fixture
async def empty_engine(base_db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a brand-new, empty database (not cloned from the migrated template)."""
    name = "mig_" + secrets.token_hex(6)
    admin_dsn = pg_dsn(with_db(base_db_url, "postgres"))
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    engine = create_async_engine(with_db(base_db_url, name), poolclass=NullPool)
    try:
        yield engine
    finally:
        await engine.dispose()
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def _revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def _head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, f"migrations must have a single head, not {heads}"
    return heads[0]


def _schema_diff(conn: Connection) -> list[Any]:
    ctx = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(ctx, Base.metadata))


async def _diff(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as conn:
        return await conn.run_sync(_schema_diff)


async def _leftovers(engine: AsyncEngine) -> list[tuple[str, str]]:
    """Every relation, type and function in the public schema other than Alembic's own
    bookkeeping table (and its primary key)."""
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        pg: asyncpg.Connection = raw.driver_connection
        rels = await pg.fetch(
            """
            SELECT c.relkind::text AS kind, c.relname AS name FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'public'
              AND c.relname NOT IN ('alembic_version', 'alembic_version_pkc')
            """
        )
        types = await pg.fetch(
            """
            SELECT 'type' AS kind, t.typname AS name FROM pg_type t
            JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c')
              AND NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.reltype = t.oid)
            """
        )
        funcs = await pg.fetch(
            """
            SELECT 'function' AS kind, p.proname AS name FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'
            """
        )
    return sorted((r["kind"], r["name"]) for r in [*rels, *types, *funcs])


async def _tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


MODEL_TABLES = set(Base.metadata.tables)


async def test_upgrade_from_empty_matches_the_models(empty_engine: AsyncEngine) -> None:
    assert await _tables(empty_engine) == set()
    assert await current(empty_engine) is None
    await upgrade(empty_engine)
    assert await current(empty_engine) == _head()
    assert await _tables(empty_engine) == MODEL_TABLES | {"alembic_version"}
    assert await _diff(empty_engine) == []


async def test_upgrade_at_head_is_a_no_op(empty_engine: AsyncEngine) -> None:
    await upgrade(empty_engine)
    before = await _leftovers(empty_engine)
    await upgrade(empty_engine)
    assert await current(empty_engine) == _head()
    assert await _leftovers(empty_engine) == before
    assert await _diff(empty_engine) == []


async def test_downgrade_to_base_leaves_nothing_and_upgrade_works_again(
    empty_engine: AsyncEngine,
) -> None:
    await upgrade(empty_engine)
    assert await _leftovers(empty_engine) != []
    await downgrade(empty_engine, "base")
    assert await _leftovers(empty_engine) == []
    assert await _tables(empty_engine) <= {"alembic_version"}
    assert await current(empty_engine) is None
    # and the whole way up once more
    await upgrade(empty_engine)
    assert await current(empty_engine) == _head()
    assert await _diff(empty_engine) == []
    await downgrade(empty_engine, "base")
    assert await _leftovers(empty_engine) == []


async def test_one_revision_at_a_time(empty_engine: AsyncEngine) -> None:
    revisions = _revisions()
    assert revisions, "no migrations found"
    assert revisions[-1] == _head()
    seen: list[list[tuple[str, str]]] = [await _leftovers(empty_engine)]
    for rev in revisions:
        await upgrade(empty_engine, rev)
        assert await current(empty_engine) == rev
        seen.append(await _leftovers(empty_engine))
    assert await _diff(empty_engine) == []
    # each step down restores exactly the schema of the revision below
    for i, rev in reversed(list(enumerate(revisions))):
        assert await current(empty_engine) == rev
        await downgrade(empty_engine, revisions[i - 1] if i > 0 else "base")
        assert await _leftovers(empty_engine) == seen[i]
    assert await current(empty_engine) is None


async def test_data_survives_nothing_but_schema_round_trips(empty_engine: AsyncEngine) -> None:
    # rows written at head are dropped with their tables on the way down, and a new
    # upgrade starts from empty tables (no stale rows, sequences restart)
    await upgrade(empty_engine)
    async with empty_engine.begin() as conn:
        raw = await conn.get_raw_connection()
        pg: asyncpg.Connection = raw.driver_connection
        first = await pg.fetchval(
            "INSERT INTO flavors (cpu, ram, disk, disk_template, deleted)"
            " VALUES (1, 128, 1, 'file', false) RETURNING id"
        )
    await downgrade(empty_engine, "base")
    await upgrade(empty_engine)
    async with empty_engine.begin() as conn:
        raw = await conn.get_raw_connection()
        pg = raw.driver_connection
        assert await pg.fetchval("SELECT count(*) FROM flavors") == 0
        again = await pg.fetchval(
            "INSERT INTO flavors (cpu, ram, disk, disk_template, deleted)"
            " VALUES (1, 128, 1, 'file', false) RETURNING id"
        )
    assert first == again == 1


async def test_the_comparison_sees_drift(empty_engine: AsyncEngine) -> None:
    # guard against a vacuous check: a schema that differs from the models must show up
    await upgrade(empty_engine)
    async with empty_engine.begin() as conn:
        raw = await conn.get_raw_connection()
        pg: asyncpg.Connection = raw.driver_connection
        await pg.execute("DROP INDEX ix_vm_events_machine_key")
        await pg.execute("ALTER TABLE backends ALTER COLUMN host TYPE text")
        await pg.execute("ALTER TABLE flavors DROP COLUMN deleted")
        await pg.execute("ALTER TABLE networks ALTER COLUMN created DROP DEFAULT")
        await pg.execute("CREATE TABLE stray (id int)")
    ops = [d[0] if isinstance(d, tuple) else d[0][0] for d in await _diff(empty_engine)]
    assert {"add_index", "modify_type", "add_column", "modify_default", "remove_table"} <= set(ops)
