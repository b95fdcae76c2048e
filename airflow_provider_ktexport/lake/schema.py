"""Records (raw JSON bytes) -> typed Arrow tables, one schema per record type.

Pure functions, no I/O. The rules are documented for users in ``docs/schema-mapping.md``:

- nested objects are flattened into columns joined by ``__``; every key is escaped by one
  reversible percent rule (:mod:`.naming`), so no two paths share a column and no data column
  can be mistaken for a partition key or a ``_`` metadata column;
- column types come from a lattice (:mod:`.types`), widened against the lake's published schema
  so types only ever widen;
- nothing is dropped or nulled: a value that does not fit its column's type is stored as its
  JSON text in a string column.

Columns come from Arrow's JSON reader over the raw bytes when it provably gives the documented
result (:mod:`.arrowjson`), else from the decoded dicts; both give the same table. Each record
is decoded once for its key and dropped at once, so a flush never holds all its dicts.
"""

from __future__ import annotations

import gc
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_ktexport.lake import arrowjson
from airflow_provider_ktexport.lake.naming import (
    PARTITION_KEYS,
    PATH_METADATA_KEY,
    assign_names,
    column_name,
    column_path,
    escape_segment,
    field_path,
    is_plain,
    is_safe_partition_value,
    path_metadata,
    sanitize_partition_value,
)
from airflow_provider_ktexport.lake.types import (
    SORTED_ENCODER,
    TIMESTAMP,
    build_column,
    canonical_text,
    widen,
    widen_type,
)

__all__ = [
    "META_COLUMNS",
    "PARTITION_KEYS",
    "PATH_METADATA_KEY",
    "RECORD_KEY_HASH",
    "TIMESTAMP",
    "PartitionTable",
    "build_tables",
    "canonical_json",
    "column_name",
    "column_path",
    "event_date",
    "field_path",
    "is_safe_partition_value",
    "record_key",
    "sanitize_partition_value",
    "widen",
    "widen_type",
]

RECORD_KEY_HASH = "blake2b-128"
#: Metadata columns added to every row, in table order (``_raw`` only when asked for).
META_COLUMNS: dict[str, pa.DataType] = {
    "_record_key": pa.string(),
    "_batch_id": pa.string(),
    "_ingested_at": TIMESTAMP,
    "_source": pa.string(),
    "_raw": pa.string(),
}
_RESERVED = {m.lower() for m in META_COLUMNS}
EVENT_TIME_FIELDS = ("date", "eventDate", "dateEnd", "received")
# event_date is a partition choice, not a stored value: it also takes a bare date, or a time
# without zone (read as UTC).
_ISO_LOOSE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$"
)
_MISSING = object()


# -- canonical JSON and record keys ----------------------------------------------------------------


def canonical_json(record: object) -> bytes:
    """The record's canonical JSON: keys sorted, separators ``(",", ":")``, UTF-8, no ASCII escaping.

    Floats are written as Python's ``json`` module writes them (``1e+16``, ``0.1``).
    """
    return canonical_text(record).encode("utf-8")


def record_key(record: object) -> str:
    """32 hex characters: blake2b (digest_size=16) of :func:`canonical_json`; never changes between versions."""
    return hashlib.blake2b(canonical_json(record), digest_size=16).hexdigest()


def _fast_key(record: dict[str, Any]) -> str:
    # msgspec's sorted encoding; rows where it differs from canonical_json (a float written with
    # an exponent) are found while building the columns and keyed again by record_key.
    return hashlib.blake2b(SORTED_ENCODER.encode(record), digest_size=16).hexdigest()


# -- partitions ----------------------------------------------------------------------------------------


def _parse_loose(value: object) -> datetime | None:
    if type(value) is not str or not _ISO_LOOSE.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: the UTC instant is outside years 1-9999
        return None


def event_date(record: dict[str, Any]) -> str:
    """UTC day ``YYYY-MM-DD`` of the first of date, eventDate, dateEnd, received that parses; else ``unknown``.

    Never the ingestion day: a redelivered copy lands in the same partition as the first.
    """
    for name in EVENT_TIME_FIELDS:
        parsed = _parse_loose(record.get(name))
        if parsed is not None:
            return parsed.strftime("%Y-%m-%d")
    return "unknown"


def record_type_of(record: dict[str, Any]) -> str:
    """The sanitised record type: the record's ``type`` if a non-empty string, else ``unknown``."""
    t = record.get("type")
    return sanitize_partition_value(t) if type(t) is str and t else "unknown"


_YEAR_1000 = pa.scalar(datetime(1000, 1, 1, tzinfo=UTC), TIMESTAMP)
_YEAR_1 = pa.scalar(datetime(1, 1, 1, tzinfo=UTC), TIMESTAMP)


def _days_of_times(arr: pa.Array) -> pa.Array:
    """``event_date``'s day of each time of a timestamp column (null where Python could not say)."""
    days = pc.strftime(arr, format="%Y-%m-%d")
    # Python's strftime writes years below 1000 without zero padding, and a time whose UTC
    # instant leaves years 1-9999 does not parse at all: such rare rows go through Python.
    odd = pc.fill_null(pc.less(arr, _YEAR_1000), False)
    if not pc.any(odd).as_py():
        return days
    out = days.to_pylist()
    for j in pc.indices_nonzero(odd).to_pylist():
        out[j] = None if pc.less(arr[j], _YEAR_1).as_py() else arr[j].as_py().strftime("%Y-%m-%d")
    return pa.array(out, pa.string())


def _event_dates(columns: dict[tuple[str, ...], pa.Array], n: int) -> pa.Array:
    """:func:`event_date` of every row, from the built columns (vectorised for timestamp columns)."""
    days: pa.Array = pa.nulls(n, pa.string())
    for name in EVENT_TIME_FIELDS:
        arr = columns.get((name,))
        if arr is None:
            continue
        if pa.types.is_timestamp(arr.type):
            # Arrow's cast accepted these strict RFC 3339 texts; fromisoformat reads them alike.
            days = pc.coalesce(days, _days_of_times(arr))
        elif pa.types.is_string(arr.type):
            todo = pc.indices_nonzero(pc.fill_null(pc.and_(days.is_null(), arr.is_valid()), False))
            if len(todo):
                out = days.to_pylist()
                for j, value in zip(todo.to_pylist(), arr.take(todo).to_pylist(), strict=True):
                    parsed = _parse_loose(value)
                    if parsed is not None:
                        out[j] = parsed.strftime("%Y-%m-%d")
                days = pa.array(out, pa.string())
        if days.null_count == 0:
            break
    return pc.fill_null(days, "unknown")


# -- flattening (the dict path) -------------------------------------------------------------------------


class _Columns:
    """Flattens one record type's records straight into per-column value lists (padded with None).

    A trie of raw keys caches each key path's escaped name and its value list, so a path is
    escaped once per call and each leaf costs one dict lookup and one append.
    """

    def __init__(self) -> None:
        self.paths: dict[str, tuple[str, ...]] = {}
        self.cols: dict[str, list[Any]] = {}
        self._root: dict[str, list[Any]] = {}

    def _entry(self, node: dict[str, Any], key: str, parent: list[Any] | None) -> list[Any]:
        if parent is None:
            path: tuple[str, ...] = (key,)
            name = column_name(path)
        else:
            path = (*parent[2], key)
            name = parent[0] + "__" + (key if is_plain(key) else escape_segment(key))
        ent: list[Any] = [name, {}, path, None]  # name, children, path, values
        node[key] = ent
        return ent

    def _values(self, ent: list[Any]) -> list[Any]:
        lst: list[Any] = []
        ent[3] = self.cols[ent[0]] = lst
        self.paths[ent[0]] = ent[2]
        return lst

    def add(self, record: dict[str, Any], j: int) -> None:
        """Append row ``j`` (0-based) from ``record``."""
        self._walk(record, self._root, None, j)

    def _walk(self, obj: dict[str, Any], node: dict[str, Any], parent: list[Any] | None, j: int) -> None:
        for k, v in obj.items():
            ent = node.get(k)
            if ent is None:
                ent = self._entry(node, k, parent)
            if v.__class__ is dict and v:
                self._walk(v, ent[1], ent, j)
                continue
            lst = ent[3]
            if lst is None:
                lst = self._values(ent)
            if len(lst) != j:
                lst.extend([None] * (j - len(lst)))
            lst.append(v)

    def finish(self, n: int) -> dict[tuple[str, ...], list[Any]]:
        """The columns by key path, each padded to ``n`` rows."""
        for lst in self.cols.values():
            if len(lst) != n:
                lst.extend([None] * (n - len(lst)))
        return {self.paths[name]: lst for name, lst in self.cols.items()}


def _decode(raw: Any) -> dict[str, Any]:
    try:
        record = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"record is not valid JSON: {exc}") from exc
    if type(record) is not dict:
        raise ValueError(f"record is not a JSON object but {type(record).__name__}")
    return record


def _dict_columns(raws: Sequence[Any]) -> tuple[dict[tuple[str, ...], list[Any]], list[str]]:
    """The dict path: decode, key and flatten record by record (each dict dropped at once)."""
    flattener = _Columns()
    keys: list[str] = []
    for j, raw in enumerate(raws):
        record = _decode(raw)
        keys.append(_fast_key(record))
        flattener.add(record, j)
    return flattener.finish(len(raws)), keys


def _probe(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if type(value) is not dict:
            return _MISSING
        value = value.get(key, _MISSING)
    return value


def _reader_columns(raws: Sequence[Any]) -> tuple[dict[tuple[str, ...], Any], list[str]] | None:
    """The reader path (see :mod:`.arrowjson`); None when it cannot give the dict path's table."""
    found = arrowjson.read_columns(raws)
    if found is None:
        return None
    leaves, probes = found
    columns: dict[tuple[str, ...], Any] = dict(leaves)
    probed: list[tuple[tuple[str, ...], Any, list[Any]]] = [(path, kind, []) for path, kind in probes.items()]
    keys: list[str] = []
    for raw in raws:
        record = _decode(raw)
        keys.append(_fast_key(record))
        for path, kind, values in probed:
            value = _probe(record, path)
            if kind == arrowjson.LIST:
                values.append(None if value is _MISSING else value)
            else:  # an object path: the dict path makes a column of its null and {} values
                values.append(value if value is None or value == {} else _MISSING)
    for path, kind, values in probed:
        if kind == arrowjson.LIST:
            columns[path] = values
        elif any(v is not _MISSING for v in values):
            columns[path] = [None if v is _MISSING else v for v in values]
    return columns, keys


# -- building tables --------------------------------------------------------------------------------------


@dataclass
class PartitionTable:
    """The rows of one partition of one record type, at that record type's schema."""

    record_type: str
    partition: dict[str, str]
    table: pa.Table
    batch_ids: frozenset[str]


class _Head(msgspec.Struct):
    """Only the ``type`` of a record: grouping by type without building its dict."""

    type: Any = None


_HEAD = msgspec.json.Decoder(_Head)


def _type_of(raw: Any, cache: dict[str, str]) -> str:
    try:
        t = _HEAD.decode(raw).type
    except msgspec.DecodeError:
        t = _decode(raw).get("type")  # raises the dict path's error for a bad record
    if type(t) is not str or not t:
        return "unknown"
    rtype = cache.get(t)
    if rtype is None:
        rtype = cache[t] = sanitize_partition_value(t)
    return rtype


def _known_paths(known: pa.Schema | None) -> dict[tuple[str, ...], str]:
    if known is None:
        return {}
    return {field_path(f): f.name for f in known if f.name not in META_COLUMNS}


def build_tables(
    raw_records: Sequence[bytes],
    batch_ids: Sequence[str],
    *,
    source: str,
    ingested_at: datetime,
    partition_by: Sequence[str] = ("record_type", "event_date"),
    include_raw: bool = False,
    known_schema: Callable[[str], pa.Schema | None] = lambda t: None,
) -> list[PartitionTable]:
    """Decode, flatten and type records into one Arrow table per partition.

    :param raw_records: each record's own JSON bytes
    :param batch_ids: the batch id of each record (same length as ``raw_records``)
    :param source: the value of ``_source`` (the connection id)
    :param ingested_at: the value of ``_ingested_at`` (and of the ``ingest_date`` partition)
    :param partition_by: partition keys, among ``record_type``, ``event_date``, ``ingest_date``
    :param include_raw: add ``_raw``, each record's original JSON text
    :param known_schema: the lake's published schema of a record type (or None); the tables are
        built at its types widened by the new data, so a type never narrows
    :raises ValueError: a record is not a JSON object
    """
    # Millions of short-lived, acyclic objects (decoded records, column lists) trigger the
    # cyclic GC over and over: measured 4x slower decoding with it on. Nothing here makes cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_tables(
            raw_records,
            batch_ids,
            source=source,
            ingested_at=ingested_at,
            partition_by=partition_by,
            include_raw=include_raw,
            known_schema=known_schema,
        )
    finally:
        if was_enabled:
            gc.enable()


def _build_tables(
    raw_records: Sequence[bytes],
    batch_ids: Sequence[str],
    *,
    source: str,
    ingested_at: datetime,
    partition_by: Sequence[str],
    include_raw: bool,
    known_schema: Callable[[str], pa.Schema | None],
) -> list[PartitionTable]:
    if len(raw_records) != len(batch_ids):
        raise ValueError("raw_records and batch_ids differ in length")
    for key in partition_by:
        if key not in PARTITION_KEYS:
            raise ValueError(f"unknown partition key {key!r}; use some of {PARTITION_KEYS}")
    if ingested_at.tzinfo is None:
        ingested_at = ingested_at.replace(tzinfo=UTC)
    ingest_day = ingested_at.astimezone(UTC).strftime("%Y-%m-%d")
    type_cache: dict[str, str] = {}
    by_type: dict[str, list[int]] = {}
    for i, raw in enumerate(raw_records):
        by_type.setdefault(_type_of(raw, type_cache), []).append(i)

    result: list[PartitionTable] = []
    for rtype, idx in by_type.items():
        raws = [raw_records[i] for i in idx]
        table, days = _type_table(
            raws,
            [batch_ids[i] for i in idx],
            include_raw=include_raw,
            source=source,
            ingested_at=ingested_at,
            known=known_schema(rtype),
        )
        fixed = {"record_type": rtype, "ingest_date": ingest_day}
        for day, positions in _split(days, "event_date" in partition_by):
            part = tuple(fixed.get(k, day) for k in partition_by)
            sub = table if len(positions) == len(idx) else table.take(positions)
            result.append(
                PartitionTable(
                    record_type=rtype,
                    partition=dict(zip(partition_by, part, strict=True)),
                    table=sub,
                    batch_ids=frozenset(pc.unique(sub.column("_batch_id")).to_pylist()),
                )
            )
    return result


def _split(days: pa.Array, by_day: bool) -> list[tuple[str, pa.Array]]:
    """(day, row positions) per distinct day, in order of first appearance."""
    if not by_day:
        return [("", pa.array(range(len(days)), pa.int64()))]
    encoded = days.dictionary_encode()
    if len(encoded.dictionary) == 1:
        return [(encoded.dictionary[0].as_py(), pa.array(range(len(days)), pa.int64()))]
    return [
        (day, pc.indices_nonzero(pc.equal(encoded.indices, k)))
        for k, day in enumerate(encoded.dictionary.to_pylist())
    ]


def _type_table(
    raws: list[Any],
    batch_ids: list[str],
    *,
    include_raw: bool,
    source: str,
    ingested_at: datetime,
    known: pa.Schema | None,
) -> tuple[pa.Table, pa.Array]:
    """One record type's rows as a table at the widened (known + inferred) schema, and each row's event day."""
    n = len(raws)
    found = _reader_columns(raws)
    values, keys = found if found is not None else _dict_columns(raws)
    paths = {column_name(path): path for path in values}
    names = assign_names(paths, _known_paths(known), _RESERVED)
    columns: dict[str, tuple[pa.Field, pa.Array]] = {}
    by_path: dict[tuple[str, ...], pa.Array] = {}
    unsafe: set[int] = set()
    for canon, path in paths.items():
        name = names[canon]
        known_type = known.field(name).type if known is not None and name in known.names else None
        target, arr, bad = build_column(values[path], known_type)
        unsafe.update(bad)
        columns[name] = (pa.field(name, target, metadata=path_metadata(path)), arr)
        by_path[path] = arr
    del values
    for j in unsafe:
        keys[j] = record_key(_decode(raws[j]))

    meta_arrays: dict[str, pa.Array] = {
        "_record_key": pa.array(keys, pa.string()),
        "_batch_id": pa.array(batch_ids, pa.string()),
        "_ingested_at": pa.repeat(pa.scalar(ingested_at, TIMESTAMP), n),
        "_source": pa.repeat(pa.scalar(source, pa.string()), n),
    }
    if include_raw:
        meta_arrays["_raw"] = pa.array([bytes(raw).decode("utf-8") for raw in raws], pa.string())
    elif known is not None and "_raw" in known.names:
        meta_arrays["_raw"] = pa.nulls(n, pa.string())

    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    seen: set[str] = set()
    if known is not None:
        for kf in known:
            seen.add(kf.name)
            if kf.name in columns:
                f, arr = columns[kf.name]
            elif kf.name in meta_arrays:
                arr = meta_arrays[kf.name]
                f = pa.field(kf.name, widen_type(kf.type, arr.type))
                arr = arr.cast(f.type) if arr.type != f.type else arr
            else:  # a column this batch does not have: nulls at the published type
                f, arr = kf, pa.nulls(n, kf.type)
            fields.append(f)
            arrays.append(arr)
    for name in sorted(columns):
        if name not in seen:
            f, arr = columns[name]
            fields.append(f)
            arrays.append(arr)
    for name, arr in meta_arrays.items():
        if name not in seen:
            fields.append(pa.field(name, arr.type))
            arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), _event_dates(by_path, n)
