"""Schema migrations through Alembic, driven from code (``dispatcher migrate``).

The migration scripts live in the repository's ``migrations/`` and are shipped inside the
wheel as ``dispatcher/_migrations``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine


def script_location() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("the migrations directory is missing from this installation")


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["connection"] = connection
    cfg.attributes["url"] = url
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.upgrade(alembic_config(c), revision))


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), revision))


async def current(engine: AsyncEngine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    def _rev(c: Connection) -> str | None:
        # alembic announces its DDL mode at INFO on every configure(): noise for a check
        noisy = logging.getLogger("alembic.runtime.migration")
        level = noisy.level
        noisy.setLevel(max(level, logging.WARNING))
        try:
            return MigrationContext.configure(c).get_current_revision()
        finally:
            noisy.setLevel(level)

    async with engine.connect() as conn:
        return await conn.run_sync(_rev)


class SchemaMismatch(Exception):
    """The database's schema revision is not the one this code was written for."""


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The newest revision this installation's migrations know."""
    heads = _script().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads, expected one")
    return heads[0]


def is_newer(revision: str | None) -> bool:
    """A revision this code's migrations do not know: a newer dispatcher wrote it."""
    # exact ids: get_revision() would also accept a prefix of one
    return revision is not None and revision not in {s.revision for s in _script().walk_revisions()}


def mismatch(revision: str | None) -> str | None:
    """None when ``revision`` is this code's head, else the one line an operator needs."""
    want = head()
    if revision == want:
        return None
    if not is_newer(revision):
        shown = revision or "none (never migrated)"
        return (
            f"database at revision {shown}, this dispatcher needs {want}: run `dispatcher migrate`"
        )
    return (
        f"database at revision {revision}, newer than this dispatcher's {want}"
        " (a newer dispatcher migrated it): upgrade this dispatcher"
    )


async def require_head(engine: AsyncEngine) -> None:
    """Refuse to work on a schema this code does not know: a daemon on an unmigrated or
    newer database would otherwise turn valid events into dead letters."""
    problem = mismatch(await current(engine))
    if problem is not None:
        raise SchemaMismatch(problem)
