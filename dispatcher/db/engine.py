"""Engine lifecycle: one ``AsyncEngine`` per process, disposed on exit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dispatcher.settings import Settings


def make_engine(settings: Settings, *, pool_size: int | None = None) -> AsyncEngine:
    return create_async_engine(
        settings.database_url.get_secret_value(),
        pool_size=pool_size or settings.database_pool_size,
        max_overflow=2,
        pool_pre_ping=True,
        # a password-bearing URL must not surface in SQLAlchemy's own reprs/logs
        hide_parameters=True,
        connect_args={"timeout": 10, "command_timeout": 60},
    )


@asynccontextmanager
async def engine_scope(
    settings: Settings, *, pool_size: int | None = None
) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(settings, pool_size=pool_size)
    try:
        yield engine
    finally:
        await engine.dispose()
