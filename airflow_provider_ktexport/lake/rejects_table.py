"""The rejects table: records that cannot be rows, kept with their exact text, and read back.

``_rejected/record_type=<folder>/ingest_date=<day>/part-*.parquet`` (:mod:`.layout`) in
:data:`REJECTS_SCHEMA`; :func:`rejects_table` builds a flush's rejects into one table per record
type, :func:`read_rejects` reads them back with their partition values. Which records are rejects
is :mod:`.rejects`' job.
"""

import json
import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import pyarrow as pa

from airflow_provider_ktexport.lake.keys import record_key
from airflow_provider_ktexport.lake.layout import (
    BATCH_ID_COLUMN,
    INGEST_DATE_KEY,
    INGESTED_AT_COLUMN,
    RAW_COLUMN,
    RECORD_KEY_COLUMN,
    RECORD_TYPE_KEY,
    REJECTED_DIR,
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
from airflow_provider_ktexport.lake.record_limits import DATA_ERRORS, MAX_DEPTH, nests_deeper_than

__all__ = ["REJECTS_SCHEMA", "Reject", "read_rejects", "record_type_of_raw", "rejects_table"]

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
