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

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_ktexport.lake.columns import decode_record
from airflow_provider_ktexport.lake.keys import record_key
from airflow_provider_ktexport.lake.layout import (
    BATCH_ID_COLUMN,
    INGEST_DATE_KEY,
    INGESTED_AT_COLUMN,
    RAW_COLUMN,
    RECORD_KEY_COLUMN,
    RECORD_TYPE_KEY,
    REJECTED_DIR,
    RESERVED_PREFIX,
    SOURCE_COLUMN,
    TIMESTAMP,
    UNKNOWN_TYPE,
    LakeRoot,
    parse_hive_path,
    record_type_folder,
    record_type_of_folder,
    type_dir,
)
from airflow_provider_ktexport.lake.partitions import record_type_of
from airflow_provider_ktexport.lake.schema import PartitionTable, build_tables

__all__ = [
    "DATA_ERRORS",
    "MAX_DEPTH",
    "REJECTED_DIR",
    "REJECTS_SCHEMA",
    "Landing",
    "Reject",
    "land_records",
    "read_rejects",
    "rejects_table",
]

#: What building a record's row can raise because of the record's content (not of our code's
#: state): these route the record to the rejects table; anything else still fails the flush.
DATA_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    UnicodeError,
    ArithmeticError,
    msgspec.MsgspecError,
    pa.ArrowException,
)

#: Deepest nesting of objects and lists a record may have to become a row.
MAX_DEPTH = 64
#: What :func:`nests_deeper_than` keeps of a record: quotes and brackets, one kind of bracket.
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'"{}[]')
_ONE_BRACKET_KIND = bytes.maketrans(b"[]", b"{}")
_QUOTED = re.compile(rb'"[^"]*"')
#: Records up to this many bytes are screened by counting brackets before the exact check.
_SHORT = 4096

#: Longest error message kept per reject (the exact record text is kept whole).
_MAX_MESSAGE = 2000

_MIN_TIME = pa.scalar(datetime(1, 1, 1, tzinfo=UTC), TIMESTAMP)
_MAX_TIME = pa.scalar(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), TIMESTAMP)
_UNREADABLE = object()
# Long enough for any type the layout names (120 CJK characters are 720 bytes as \u escapes).
_TYPE_IN_TEXT = re.compile(rb'"type"\s*:\s*"((?:[^"\\]|\\.){1,4000})"')

REJECTS_SCHEMA = pa.schema(
    [
        pa.field(RAW_COLUMN, pa.string()),
        pa.field("_error_class", pa.string()),
        pa.field("_error", pa.string()),
        pa.field(RECORD_KEY_COLUMN, pa.string()),
        pa.field(BATCH_ID_COLUMN, pa.string()),
        pa.field(INGESTED_AT_COLUMN, TIMESTAMP),
        pa.field(SOURCE_COLUMN, pa.string()),
    ]
)


@dataclass(frozen=True)
class Reject:
    """A record that cannot be a row: its exact bytes, its batch, and why."""

    raw: bytes
    batch_id: str
    error_class: str
    error: str


@dataclass
class Landing:
    """A flush's records split into row tables and rejects; every record is in exactly one."""

    tables: list[PartitionTable]
    rejects: list[Reject]


def land_records(
    raw_records: Sequence[bytes],
    batch_ids: Sequence[str],
    **build_options: Any,
) -> Landing:
    """:func:`build_tables` with per-record isolation: the records at fault come back as rejects.

    :param build_options: passed to :func:`build_tables` (``source``, ``ingested_at``, ...)
    """
    rejects: list[Reject] = []
    keep = _within_depth(raw_records, batch_ids, rejects)
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


def nests_deeper_than(raw: bytes, limit: int) -> bool:
    """Whether objects and lists nest more than ``limit`` levels deep in a JSON text (strings skipped).

    Only C-speed steps, no loop per byte (a Python loop over every byte cost 0.3-0.5 ms per
    100-point trip, a third of the drain): escapes that could hide a quote go; every byte but
    quotes and brackets is deleted (``[`` ``]`` become ``{`` ``}``: in valid JSON brackets pair up
    in order, so one kind is enough); strings go with any brackets inside them; then each
    ``replace(b"{}", b"")`` peels exactly one level (it removes the innermost pairs only), and
    after ``limit`` peels anything left was deeper. No recursion, so no depth can crash it.
    """
    s = bytes(raw)
    if b"\\" in s:
        # Left to right, as JSON reads escapes: pairs of backslashes first, then escaped quotes.
        s = s.replace(b"\\\\", b"").replace(b'\\"', b"")
    s = s.translate(_ONE_BRACKET_KIND, _NOT_STRUCTURE)
    if s.count(b"{") <= limit:  # fewer openers (strings' included) than levels
        return False
    # Quotes alternate open, close. When they all pair up as adjacent "" from the left, no string
    # holds a bracket and the quotes can simply go; else cut the strings out (rare).
    s = s.translate(None, b'"') if 2 * s.count(b'""') == s.count(b'"') else _QUOTED.sub(b"", s)
    for _ in range(limit):
        if not s:
            return False
        s = s.replace(b"{}", b"")
    return bool(s)


def _within_depth(raws: Sequence[bytes], batch_ids: Sequence[str], rejects: list[Reject]) -> list[int]:
    """Positions of records nested at most :data:`MAX_DEPTH` deep; deeper ones become rejects.

    A fixed limit, not the interpreter's recursion limit (which a library may raise), decides,
    so the same record is a reject in every process. It runs before anything parses a record:
    pyarrow's JSON reader overflows the C stack on nesting some 30,000 deep whatever Python's
    recursion limit (measured: a segfault, which would stop the queue at every run), and msgspec
    does once a library raises that limit far enough. The check runs in C
    (:func:`nests_deeper_than`); a short record is first screened by counting its brackets, which
    is cheaper still and rules out nearly all of them (a long one goes straight to the check,
    whose first step counts its brackets anyway).
    """
    keep = []
    for j, raw in enumerate(raws):
        few = len(raw) <= _SHORT and raw.count(b"{") + raw.count(b"[") <= MAX_DEPTH
        if not few and nests_deeper_than(raw, MAX_DEPTH):
            rejects.append(
                _reject(
                    raw,
                    batch_ids[j],
                    "NestingTooDeep",
                    f"the record nests objects or lists more than {MAX_DEPTH} levels deep; columns are "
                    "flattened key paths, and no engine reads a path that long",
                )
            )
        else:
            keep.append(j)
    return keep


def _build(
    raws: Sequence[bytes], batch_ids: Sequence[str], keep: list[int], options: dict[str, Any]
) -> list[PartitionTable]:
    if len(keep) == len(raws):
        return build_tables(raws, batch_ids, **options)
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


def record_type_of_raw(raw: bytes) -> str:
    """The record's ``type`` for the rejects table's partition (by text search when it does not decode)."""
    value = _decoded(raw)
    if value is _UNREADABLE:
        match = _TYPE_IN_TEXT.search(raw)
        if match is None:
            return UNKNOWN_TYPE
        try:
            value = {"type": json.loads(b'"' + match.group(1) + b'"')}
        except ValueError:
            return UNKNOWN_TYPE
    return record_type_of(value) if type(value) is dict else UNKNOWN_TYPE


def _decoded(raw: bytes) -> Any:
    """The decoded record, or :data:`_UNREADABLE`; one nested too deep is never decoded.

    msgspec stops at the interpreter's recursion limit, so decoding a deep record would make its
    stored key depend on that limit, and a limit raised far enough lets it overflow the C stack.
    """
    if nests_deeper_than(raw, MAX_DEPTH):
        return _UNREADABLE
    try:
        return msgspec.json.decode(raw)
    except DATA_ERRORS:
        return _UNREADABLE


def _key_or_none(raw: bytes) -> str | None:
    value = _decoded(raw)
    if type(value) is not dict:
        return None
    try:
        return record_key(value)
    except DATA_ERRORS:
        return None


def rejects_table(
    rejects: Sequence[Reject],
    *,
    source: str,
    ingested_at: datetime,
) -> dict[str, pa.Table]:
    """The rejects as one table per record type (the partition value), in :data:`REJECTS_SCHEMA`.

    ``_raw`` is the record's exact text as the drain passed it: the drain masks the API key in
    every record before building anything (``KeyMask.records``), so no other text is changed.
    """
    by_type: dict[str, list[Reject]] = {}
    for r in rejects:
        by_type.setdefault(record_type_of_raw(r.raw), []).append(r)
    out = {}
    for rtype, group in by_type.items():
        n = len(group)
        out[rtype] = pa.Table.from_arrays(
            [
                pa.array([r.raw.decode("utf-8", "backslashreplace") for r in group], pa.string()),
                pa.array([r.error_class for r in group], pa.string()),
                pa.array([r.error for r in group], pa.string()),
                pa.array([_key_or_none(r.raw) for r in group], pa.string()),
                pa.array([r.batch_id for r in group], pa.string()),
                pa.repeat(pa.scalar(ingested_at, TIMESTAMP), n),
                pa.repeat(pa.scalar(source, pa.string()), n),
            ],
            schema=REJECTS_SCHEMA,
        )
    return out


#: The columns :func:`read_rejects` returns: the rejects table's, then its partition values.
_READ_SCHEMA = REJECTS_SCHEMA.append(pa.field(RECORD_TYPE_KEY, pa.string())).append(
    pa.field(INGEST_DATE_KEY, pa.string())
)


def read_rejects(fs_or_url: Any, root: str | None = None, *, record_type: str | None = None) -> pa.Table:
    """Every rejected record of the lake (or of one record type), with ``record_type`` and
    ``ingest_date`` columns from the paths; an empty table in :data:`REJECTS_SCHEMA` if none.

    :param fs_or_url: an fsspec filesystem (then pass ``root``) or a URL such as ``s3://bucket/lake``
    :param root: the lake root on the filesystem
    :param record_type: only the rejects of this record type
    """
    lake = LakeRoot.open(fs_or_url, root)
    base = lake.join(REJECTED_DIR)
    if record_type is not None:
        base = lake.join(REJECTED_DIR, type_dir(record_type_folder(record_type)))
    tables = [_read_rejects_file(lake, base, path, record_type) for path in _rejects_files(lake, base)]
    return pa.concat_tables(tables) if tables else _READ_SCHEMA.empty_table()


def _rejects_files(lake: LakeRoot, base: str) -> list[str]:
    try:
        found = lake.fs.find(base)
    except FileNotFoundError:
        return []
    return sorted(p for p in found if p.endswith(".parquet") and not posixpath.basename(p).startswith("."))


def _read_rejects_file(lake: LakeRoot, base: str, path: str, record_type: str | None) -> pa.Table:
    """One rejects file with its partition values (decoded) as columns, in :data:`_READ_SCHEMA`."""
    import pyarrow.parquet as pq

    with lake.fs.open(path, "rb") as fh:
        table = pq.read_table(fh, schema=REJECTS_SCHEMA)
    values = {
        k: record_type_of_folder(v) for k, v in parse_hive_path(posixpath.dirname(path[len(base) :])).items()
    }
    if record_type is not None:  # its folder is part of base, not of the path below it
        values[RECORD_TYPE_KEY] = record_type
    for key, value in values.items():
        table = table.append_column(key, pa.repeat(pa.scalar(value, pa.string()), table.num_rows))
    return table.select(_READ_SCHEMA.names)
