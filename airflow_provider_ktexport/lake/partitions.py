"""Partition values of a built table: its rows' event days, vectorised.

The event day rule is :func:`.layout.event_date` (the UTC day of the first of ``date``,
``eventDate``, ``dateEnd``, ``received`` that parses, never the ingestion day, so a redelivered
copy lands in the same partition as the first). :func:`event_dates` computes it for a whole
built table (vectorised where the column is a timestamp) and must agree with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_ktexport.lake.layout import (
    EVENT_TIME_FIELDS,
    TIMESTAMP,
    UNKNOWN_DAY,
    event_date,
    record_type_folder,
    utc_day,
)
from airflow_provider_ktexport.lake.naming import column_name

__all__ = [
    "EVENT_TIME_COLUMNS",
    "EVENT_TIME_FIELDS",
    "event_date",
    "event_dates",
    "oldest_event_us",
    "record_type_of",
]

#: Their column names (plain: a key keeps its spelling).
EVENT_TIME_COLUMNS = tuple(column_name((f,)) for f in EVENT_TIME_FIELDS)


def record_type_of(record: dict[str, Any]) -> str:
    """The record type's folder (:func:`.layout.record_type_folder`): what the engine keys a type by."""
    return record_type_folder(record.get("type"))


_YEAR_1000 = pa.scalar(datetime(1000, 1, 1, tzinfo=UTC), TIMESTAMP)
_YEAR_1 = pa.scalar(datetime(1, 1, 1, tzinfo=UTC), TIMESTAMP)


def _days_of_times(arr: pa.Array) -> pa.Array:
    """``event_date``'s day of each time of a timestamp column (null where Python could not say)."""
    # A cast to date32 and on to text writes the same days as strftime (both zero-pad the year) at a
    # fifteenth of its cost: pc.strftime formats each value through a locale-aware writer.
    days = arr.cast(pa.date32()).cast(pa.string())
    # Python's strftime writes years below 1000 without zero padding, and a time whose UTC
    # instant leaves years 1-9999 does not parse at all: such rare rows go through Python.
    odd = pc.fill_null(pc.less(arr, _YEAR_1000), False)
    if not pc.any(odd).as_py():
        return days
    out = days.to_pylist()
    for j in pc.indices_nonzero(odd).to_pylist():
        out[j] = None if pc.less(arr[j], _YEAR_1).as_py() else arr[j].as_py().strftime("%Y-%m-%d")
    return pa.array(out, pa.string())


def event_dates(columns: dict[tuple[str, ...], list[pa.Array]], n: int) -> pa.Array:
    """:func:`event_date` of every row, from the built columns (vectorised for timestamp columns).

    ``columns`` holds each key path's column and its variant columns; a row has its value in one
    of them, so their days are simply merged.
    """
    days: pa.Array = pa.nulls(n, pa.string())
    for name in EVENT_TIME_FIELDS:
        for arr in columns.get((name,), ()):
            days = _days_of(arr, days)
        if days.null_count == 0:
            break
    return pc.fill_null(days, UNKNOWN_DAY)


def _days_of(arr: pa.Array, days: pa.Array) -> pa.Array:
    """``days`` with its nulls filled from the times in ``arr`` where they parse."""
    if pa.types.is_timestamp(arr.type):
        # Arrow's cast accepted these strict RFC 3339 texts; fromisoformat reads them alike.
        days = pc.coalesce(days, _days_of_times(arr))
    elif pa.types.is_string(arr.type):
        todo = pc.indices_nonzero(pc.fill_null(pc.and_(days.is_null(), arr.is_valid()), False))
        if len(todo):
            out = days.to_pylist()
            for j, value in zip(todo.to_pylist(), arr.take(todo).to_pylist(), strict=True):
                day = utc_day(value)
                if day is not None:
                    out[j] = day
            days = pa.array(out, pa.string())
    return days


def oldest_event_us(tables: Iterable[pa.Table]) -> int | None:
    """The earliest event time of built tables in microseconds since the epoch, in Arrow only
    (a Python datetime cannot hold every instant a timestamp column can)."""
    oldest: int | None = None
    for table in tables:
        for name in EVENT_TIME_COLUMNS:
            if name in table.column_names and pa.types.is_timestamp(table.schema.field(name).type):
                col = table.column(name).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
                value = pc.min(col).as_py()
                if value is not None and (oldest is None or value < oldest):
                    oldest = value
                break
    return oldest
