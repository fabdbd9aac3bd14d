"""Which database failures are worth waiting out (transient) rather than a fault of the
message being processed."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

import asyncpg
from sqlalchemy import exc as sa_exc

_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is a subclass)
    TimeoutError,
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # connection closed under us
    asyncpg.exceptions.OperatorInterventionError,  # 57: admin shutdown, terminate, restart
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections
    asyncpg.exceptions.TransactionRollbackError,  # 40: deadlock, serialization
    asyncpg.exceptions.CannotConnectNowError,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)


# SQLSTATE 42P01, 42703, 42883, 42704, 3F000: the schema is not the one the code was written
# for (not migrated, or changed under a running daemon). No message is at fault.
_SCHEMA: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.UndefinedTableError,
    asyncpg.exceptions.UndefinedColumnError,
    asyncpg.exceptions.UndefinedFunctionError,
    asyncpg.exceptions.UndefinedObjectError,
    asyncpg.exceptions.InvalidSchemaNameError,
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: SQLAlchemy's ``orig``, then causes and contexts."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        orig = getattr(cur, "orig", None)
        cur = orig if isinstance(orig, BaseException) else (cur.__cause__ or cur.__context__)


def is_transient(exc: BaseException) -> bool:
    return any(
        isinstance(e, _TRANSIENT) or (isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated)
        for e in _chain(exc)
    )


class DbProblem(StrEnum):
    """Why a batch is held instead of being applied (never the message's fault)."""

    UNREACHABLE = "database unavailable"
    SCHEMA = "database schema does not match this dispatcher (run `dispatcher migrate`)"


def db_problem(exc: BaseException) -> DbProblem | None:
    if is_transient(exc):
        return DbProblem.UNREACHABLE
    if any(isinstance(e, _SCHEMA) for e in _chain(exc)):
        return DbProblem.SCHEMA
    return None
