"""The one wall clock of the package: aware UTC datetimes (rows' timestamps, job status)."""
from __future__ import annotations

import datetime as dt
from typing import overload


def utcnow() -> dt.datetime:
    """Now, as an aware datetime in UTC."""
    return dt.datetime.now(dt.UTC)


@overload
def as_utc(value: dt.datetime) -> dt.datetime: ...
@overload
def as_utc(value: None) -> None: ...


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A datetime read back from the database, as UTC (SQLite returns them naive)."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value
