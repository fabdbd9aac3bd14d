"""Event times: the wire's microseconds since the epoch, the database's timestamps, and the
JSON output's ISO 8601 text (CONTRACT §6)."""

from __future__ import annotations

from datetime import UTC, datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_from_us(us: int | None) -> datetime | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def us_from_datetime(ts: datetime | None) -> int | None:
    if ts is None:
        return None
    # integer arithmetic: a float timestamp would lose microseconds
    delta = ts - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(ts: datetime | None) -> str | None:
    """``2024-05-01T12:00:00.123456Z``: UTC, with a ``Z``."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")
