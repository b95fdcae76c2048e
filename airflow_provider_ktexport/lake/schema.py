"""Records (raw JSON bytes) -> typed Arrow tables, one schema per record type.

Pure functions, no I/O. The rules are documented for users in ``docs/schema-mapping.md``:

- nested objects are flattened into columns joined by ``__``; every key is escaped by one
  reversible percent rule (:mod:`.naming`), so no two paths share a column and no data column
  can be mistaken for a partition key or a ``_`` metadata column;
- a column's type comes from a lattice (:mod:`.types`) in the flush where it first appears and is
  then fixed: the lake's published schema is passed in, and a later value that does not fit its
  column exactly goes to a variant column beside it (``<name>___string``...);
- nothing is dropped, rounded or nulled; a field seen only as null makes no column.

Columns come from Arrow's JSON reader over the raw bytes when it provably gives the documented
result (:mod:`.arrowjson`), else from the decoded dicts; both give the same table
(:mod:`.columns`). Record keys are in :mod:`.keys`, partition values in :mod:`.partitions`; this
module groups records by type, types their columns and cuts the tables into partitions.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_ktexport.lake.columns import decode_record, dict_columns, reader_columns
from airflow_provider_ktexport.lake.keys import RECORD_KEY_HASH, canonical_json, record_key
from airflow_provider_ktexport.lake.layout import (
    BATCH_ID_COLUMN,
    EVENT_DATE_KEY,
    INGEST_DATE_KEY,
    INGESTED_AT_COLUMN,
    RAW_COLUMN,
    RECORD_KEY_COLUMN,
    RECORD_TYPE_KEY,
    SOURCE_COLUMN,
    TIMESTAMP,
    record_type_folder,
)
from airflow_provider_ktexport.lake.memory import use_engine_memory_pool
from airflow_provider_ktexport.lake.naming import (
    PARTITION_KEYS,
    PATH_METADATA_KEY,
    base_name,
    column_name,
    column_path,
    field_path,
    is_safe_partition_value,
    path_metadata,
    published_names,
    sanitize_partition_value,
    variant_name,
    variant_type,
)
from airflow_provider_ktexport.lake.partitions import event_date, event_dates
from airflow_provider_ktexport.lake.types import build_fitted, widen_type

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
    "variant_name",
    "widen_type",
]

#: Metadata columns added to every row, in table order (``_raw`` only when asked for).
META_COLUMNS: dict[str, pa.DataType] = {
    RECORD_KEY_COLUMN: pa.string(),
    BATCH_ID_COLUMN: pa.string(),
    INGESTED_AT_COLUMN: TIMESTAMP,
    SOURCE_COLUMN: pa.string(),
    RAW_COLUMN: pa.string(),
}


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


def _type_of(raw: Any) -> str:
    """The record type's folder (remembered per type text by :func:`.layout.record_type_folder`)."""
    try:
        t = _HEAD.decode(raw).type
    except msgspec.DecodeError:
        t = decode_record(raw).get("type")  # raises the dict path's error for a bad record
    return record_type_folder(t)


def _published(known: pa.Schema | None) -> tuple[dict[str, pa.DataType], dict[str, tuple[pa.DataType, ...]]]:
    """The published type of each base column, and the variant types published beside each."""
    types: dict[str, pa.DataType] = {}
    variants: dict[str, tuple[pa.DataType, ...]] = {}
    if known is None:
        return types, variants
    for f in known:
        if f.name in META_COLUMNS:
            continue
        vtype = variant_type(f.name)
        if vtype is None:
            types[f.name] = f.type
        else:
            base = base_name(f.name)
            variants[base] = (*variants.get(base, ()), vtype)
    return types, variants


def build_tables(
    raw_records: Sequence[bytes],
    batch_ids: Sequence[str],
    *,
    source: str,
    ingested_at: datetime,
    partition_by: Sequence[str] = (RECORD_TYPE_KEY, EVENT_DATE_KEY),
    include_raw: bool = False,
    known_schema: Callable[[str], pa.Schema | None] = lambda t: None,
    record_types: Sequence[str | None] | None = None,
) -> list[PartitionTable]:
    """Decode, flatten and type records into one Arrow table per partition.

    :param raw_records: each record's own JSON bytes
    :param batch_ids: the batch id of each record (same length as ``raw_records``)
    :param source: the value of ``_source`` (the connection id)
    :param ingested_at: the value of ``_ingested_at`` (and of the ``ingest_date`` partition)
    :param partition_by: partition keys, among ``record_type``, ``event_date``, ``ingest_date``
    :param include_raw: add ``_raw``, each record's original JSON text
    :param known_schema: the lake's published schema of a record type (or None); its columns keep
        their types, values that do not fit go to variant columns (docs/schema-mapping.md)
    :param record_types: each record's type folder (:func:`.layout.record_type_folder` of its
        ``type``) where the caller read it already (the drain's buffer does), None where not: a
        record's ``type`` is then read here (for a 10 KB record, a scan of all of it)
    :raises ValueError: a record is not a JSON object
    """
    # Arrow's default pool (mimalloc) faults every flush's memory in anew: lake/memory.py.
    use_engine_memory_pool()
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
            record_types=record_types,
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
    record_types: Sequence[str | None] | None,
) -> list[PartitionTable]:
    if len(raw_records) != len(batch_ids):
        raise ValueError("raw_records and batch_ids differ in length")
    if record_types is not None and len(record_types) != len(raw_records):
        raise ValueError("raw_records and record_types differ in length")
    for key in partition_by:
        if key not in PARTITION_KEYS:
            raise ValueError(f"unknown partition key {key!r}; use some of {PARTITION_KEYS}")
    if ingested_at.tzinfo is None:
        ingested_at = ingested_at.replace(tzinfo=UTC)
    ingest_day = ingested_at.astimezone(UTC).strftime("%Y-%m-%d")
    by_type: dict[str, list[int]] = {}
    if record_types is None:
        record_types = [None] * len(raw_records)
    for i, (raw, known_type) in enumerate(zip(raw_records, record_types, strict=True)):
        by_type.setdefault(_type_of(raw) if known_type is None else known_type, []).append(i)

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
        fixed = {RECORD_TYPE_KEY: rtype, INGEST_DATE_KEY: ingest_day}
        for day, positions in _split(days, EVENT_DATE_KEY in partition_by):
            part = tuple(fixed.get(k, day) for k in partition_by)
            sub = table if len(positions) == len(idx) else table.take(positions)
            result.append(
                PartitionTable(
                    record_type=rtype,
                    partition=dict(zip(partition_by, part, strict=True)),
                    table=sub,
                    batch_ids=frozenset(pc.unique(sub.column(BATCH_ID_COLUMN)).to_pylist()),
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
    """One record type's rows as a table at the published schema (plus new columns), and each row's event day."""
    n = len(raws)
    types, variants = _published(known)
    # Where an int64 column is published, the JSON reader's doubles hide which numbers were ints.
    value_paths = frozenset(column_path(name) for name, t in types.items() if t == pa.int64())
    found = reader_columns(raws, value_paths)
    values, keys = found if found is not None else dict_columns(raws)
    columns: dict[str, tuple[pa.Field, pa.Array]] = {}
    by_path: dict[tuple[str, ...], list[pa.Array]] = {}
    unsafe: set[int] = set()
    names = published_names(types)  # a case twin's published name is not its plain name
    for path, vals in values.items():
        name = names.get(path) or column_name(path)
        pieces, bad = build_fitted(vals, types.get(name), variants.get(name, ()))
        unsafe.update(bad)
        for vtype, arr in pieces:
            col = name if vtype is None else variant_name(name, vtype)
            columns[col] = (pa.field(col, arr.type, metadata=path_metadata(path)), arr)
            by_path.setdefault(path, []).append(arr)
    del values
    for j in unsafe:
        keys[j] = record_key(decode_record(raws[j]))

    meta_arrays = _meta_arrays(
        raws, batch_ids, keys, include_raw=include_raw, source=source, ingested_at=ingested_at, known=known
    )
    fields, arrays = _assemble(columns, meta_arrays, known, n)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)), event_dates(by_path, n)


def _meta_arrays(
    raws: list[Any],
    batch_ids: list[str],
    keys: list[str],
    *,
    include_raw: bool,
    source: str,
    ingested_at: datetime,
    known: pa.Schema | None,
) -> dict[str, pa.Array]:
    """The metadata columns of the rows (``_raw`` only when asked for, or nulls when published)."""
    n = len(raws)
    meta_arrays: dict[str, pa.Array] = {
        RECORD_KEY_COLUMN: pa.array(keys, pa.string()),
        BATCH_ID_COLUMN: pa.array(batch_ids, pa.string()),
        INGESTED_AT_COLUMN: pa.repeat(pa.scalar(ingested_at, TIMESTAMP), n),
        SOURCE_COLUMN: pa.repeat(pa.scalar(source, pa.string()), n),
    }
    if include_raw:
        meta_arrays[RAW_COLUMN] = pa.array([bytes(raw).decode("utf-8") for raw in raws], pa.string())
    elif known is not None and RAW_COLUMN in known.names:
        meta_arrays[RAW_COLUMN] = pa.nulls(n, pa.string())
    return meta_arrays


def _assemble(
    columns: dict[str, tuple[pa.Field, pa.Array]],
    meta_arrays: dict[str, pa.Array],
    known: pa.Schema | None,
    n: int,
) -> tuple[list[pa.Field], list[pa.Array]]:
    """The table's fields and arrays: published columns first in their order (nulls where this
    batch has none), then new data columns by name, then metadata columns not published yet."""
    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    seen: set[str] = set()
    if known is not None:
        for kf in known:
            if pa.types.is_null(kf.type):  # a schema of an earlier version: no Null-typed columns now
                continue
            seen.add(kf.name)
            if kf.name in columns:
                f, arr = columns[kf.name]
            elif kf.name in meta_arrays:
                arr = meta_arrays[kf.name]
                f = pa.field(kf.name, arr.type)
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
    return fields, arrays
