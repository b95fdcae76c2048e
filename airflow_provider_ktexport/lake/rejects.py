"""Per-record isolation: one bad record never fails a flush (docs/architecture.md section 3).

A record that is valid JSON inside a valid batch body can still be impossible to land as a row:
a number out of double range, nesting deeper than the recursion limits, a lone UTF-16 surrogate,
a time whose UTC instant leaves years 1-9999, a record that is not an object. :func:`land_records`
builds the flush's tables as usual and, only when that fails or a table holds such a time, finds
the records at fault and returns them as :class:`Reject` (exact text, error class and message)
beside the tables of everything else. The drain writes rejects to the rejects table
(``_rejected/record_type=<type>/ingest_date=<day>/part-*.parquet``, :func:`rejects_table`), verified
like any file, and then acknowledges their batches: nothing is lost, because the record is kept.

Finding the culprits costs nothing on a clean flush. On a failed one, a screen decodes each record
alone (it catches the known kinds in one pass), then the rest is built again; anything still
failing is found by halving (a few builds per bad record), so an unknown kind of bad record is
isolated too.
"""

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_ktexport.lake.columns import decode_record
from airflow_provider_ktexport.lake.keys import record_key
from airflow_provider_ktexport.lake.layout import (
    BATCH_ID_COLUMN,
    RECORD_KEY_COLUMN,
    REJECTED_DIR,
    RESERVED_PREFIX,
    TIMESTAMP,
)
from airflow_provider_ktexport.lake.record_limits import (
    DATA_ERRORS,
    MAX_DEPTH,
    nests_deeper_than,
    too_deep_positions,
)
from airflow_provider_ktexport.lake.rejects_table import (
    REJECTS_SCHEMA,
    Reject,
    read_rejects,
    record_type_of_raw,
    rejects_table,
)
from airflow_provider_ktexport.lake.schema import PartitionTable, build_tables

__all__ = [
    "DATA_ERRORS",
    "MAX_DEPTH",
    "REJECTED_DIR",
    "REJECTS_SCHEMA",
    "Landing",
    "Reject",
    "land_records",
    "nests_deeper_than",
    "read_rejects",
    "record_type_of_raw",
    "rejects_table",
]

#: Longest error message kept per reject (the exact record text is kept whole).
_MAX_MESSAGE = 2000

_MIN_TIME = pa.scalar(datetime(1, 1, 1, tzinfo=UTC), TIMESTAMP)
_MAX_TIME = pa.scalar(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), TIMESTAMP)


@dataclass
class Landing:
    """A flush's records split into row tables and rejects; every record is in exactly one."""

    tables: list[PartitionTable]
    rejects: list[Reject]


def land_records(
    raw_records: Sequence[bytes],
    batch_ids: Sequence[str],
    *,
    too_deep: Collection[int] | None = None,
    **build_options: Any,
) -> Landing:
    """:func:`build_tables` with per-record isolation: the records at fault come back as rejects.

    :param too_deep: positions of the records nested deeper than :data:`MAX_DEPTH`, when the
        caller has screened them already (:func:`.record_limits.too_deep_positions`); None: they
        are screened here
    :param build_options: passed to :func:`build_tables` (``source``, ``ingested_at``, ...)
    """
    rejects: list[Reject] = []
    deep = too_deep_positions(raw_records) if too_deep is None else too_deep
    keep = _within_depth(raw_records, batch_ids, deep, rejects)
    tables = _try_build(raw_records, batch_ids, keep, build_options)
    if tables is None:
        keep = _screen(raw_records, batch_ids, keep, rejects)
        tables = _try_build(raw_records, batch_ids, keep, build_options)
        if tables is None:
            keep = _halve(raw_records, batch_ids, keep, build_options, rejects)
            tables = _build(raw_records, batch_ids, keep, build_options)
    keep, tables = _reject_out_of_range(raw_records, batch_ids, keep, tables, build_options, rejects)
    return Landing(tables, rejects)


def _reject_out_of_range(
    raws: Sequence[bytes],
    batch_ids: Sequence[str],
    keep: list[int],
    tables: list[PartitionTable],
    options: dict[str, Any],
    rejects: list[Reject],
) -> tuple[list[int], list[PartitionTable]]:
    """Reject the records holding a time outside years 1-9999 until the built tables hold none.

    One pass is not enough: a column is typed from all its values, so a text that read as string
    beside another record's value can be a timestamp once that record is gone, and a year-0 time
    in it would land. Each round rejects at least one record, so this ends.
    """
    while out_of_range := _out_of_range_rows(tables):
        bad = _positions_of(raws, batch_ids, keep, out_of_range)
        if not bad:  # pragma: no cover - every flagged row comes from a kept record
            raise RuntimeError("rows with out-of-range times matched no record of the flush")
        for j in sorted(bad):
            rejects.append(
                _reject(
                    raws[j],
                    batch_ids[j],
                    "OutOfRangeTime",
                    "a time value's UTC instant is outside years 1-9999, which Parquet readers "
                    "(Spark, pandas, Athena) cannot represent",
                )
            )
        keep = [j for j in keep if j not in bad]
        tables = _build(raws, batch_ids, keep, options)
    return keep, tables


def _within_depth(
    raws: Sequence[bytes], batch_ids: Sequence[str], too_deep: Collection[int], rejects: list[Reject]
) -> list[int]:
    """Positions of the records not in ``too_deep``; those become rejects.

    A fixed limit, not the interpreter's recursion limit (which a library may raise), decides,
    so the same record is a reject in every process. It is decided before anything parses a
    record: pyarrow's JSON reader overflows the C stack on nesting some 30,000 deep whatever
    Python's recursion limit (measured: a segfault, which would stop the queue at every run), and
    msgspec does once a library raises that limit far enough (:func:`.record_limits.too_deep`).
    """
    if not too_deep:
        return list(range(len(raws)))
    deep = set(too_deep)
    for j in sorted(deep):
        rejects.append(
            _reject(
                raws[j],
                batch_ids[j],
                "NestingTooDeep",
                f"the record nests objects or lists more than {MAX_DEPTH} levels deep; columns are "
                "flattened key paths, and no engine reads a path that long",
            )
        )
    return [j for j in range(len(raws)) if j not in deep]


def _build(
    raws: Sequence[bytes], batch_ids: Sequence[str], keep: list[int], options: dict[str, Any]
) -> list[PartitionTable]:
    if len(keep) == len(raws):
        return build_tables(raws, batch_ids, **options)
    types = options.get("record_types")
    if types is not None:
        options = {**options, "record_types": [types[j] for j in keep]}
    return build_tables([raws[j] for j in keep], [batch_ids[j] for j in keep], **options)


def _try_build(
    raws: Sequence[bytes], batch_ids: Sequence[str], keep: list[int], options: dict[str, Any]
) -> list[PartitionTable] | None:
    try:
        return _build(raws, batch_ids, keep, options)
    except DATA_ERRORS:
        return None


def _screen(
    raws: Sequence[bytes], batch_ids: Sequence[str], keep: list[int], rejects: list[Reject]
) -> list[int]:
    """Decode each record alone: the usual culprits fail here, in one pass."""
    good = []
    for j in keep:
        try:
            decode_record(raws[j])
        except DATA_ERRORS as exc:
            rejects.append(_reject_error(raws[j], batch_ids[j], exc))
        else:
            good.append(j)
    return good


def _halve(
    raws: Sequence[bytes],
    batch_ids: Sequence[str],
    keep: list[int],
    options: dict[str, Any],
    rejects: list[Reject],
) -> list[int]:
    """The records of ``keep`` that build, found by halving; the others become rejects."""
    good: list[int] = []
    todo = [keep]
    while todo:  # iterative: the records at fault may be the deeply nested ones
        part = todo.pop()
        try:
            _build(raws, batch_ids, part, options)
        except DATA_ERRORS as exc:
            if len(part) == 1:
                rejects.append(_reject_error(raws[part[0]], batch_ids[part[0]], exc))
            else:
                mid = len(part) // 2
                todo.extend((part[mid:], part[:mid]))
            continue
        good.extend(part)
    good.sort()
    return good


def _out_of_range_rows(tables: list[PartitionTable]) -> set[tuple[str, str]]:
    """(batch id, record key) of rows holding a time outside years 1-9999 in UTC."""
    found: set[tuple[str, str]] = set()
    for part in tables:
        table = part.table
        for field in table.schema:
            if not pa.types.is_timestamp(field.type) or field.name.startswith(RESERVED_PREFIX):
                continue
            col = table.column(field.name)
            bad = pc.or_(pc.less(col, _MIN_TIME), pc.greater(col, _MAX_TIME))
            rows = pc.indices_nonzero(pc.fill_null(bad, False))
            if len(rows):
                sub = table.take(rows)
                found.update(
                    zip(
                        sub.column(BATCH_ID_COLUMN).to_pylist(),
                        sub.column(RECORD_KEY_COLUMN).to_pylist(),
                        strict=True,
                    )
                )
    return found


def _positions_of(
    raws: Sequence[bytes], batch_ids: Sequence[str], keep: list[int], rows: set[tuple[str, str]]
) -> set[int]:
    """Positions of the records behind (batch id, record key) rows; only those batches are keyed."""
    batches = {b for b, _ in rows}
    return {
        j
        for j in keep
        if batch_ids[j] in batches and (batch_ids[j], record_key(decode_record(raws[j]))) in rows
    }


def _reject_error(raw: bytes, batch_id: str, exc: BaseException) -> Reject:
    return _reject(raw, batch_id, type(exc).__name__, _explain(raw, exc))


def _reject(raw: bytes, batch_id: str, error_class: str, message: str) -> Reject:
    return Reject(bytes(raw), batch_id, error_class, message[:_MAX_MESSAGE])


def _explain(raw: bytes, exc: BaseException) -> str:
    """The error in words a user can act on (msgspec calls a lone surrogate 'truncated')."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, RecursionError):
        return f"the record is nested too deeply to flatten ({text})"
    if "truncated" in text:
        try:
            json.loads(raw)
        except (ValueError, RecursionError):
            return text
        return (
            "the record holds a lone UTF-16 surrogate escape (e.g. \\ud800), which is not valid "
            f"Unicode text and cannot be stored as a Parquet string ({text})"
        )
    return text
