"""Compaction: merge a lake partition's small files, drop duplicate rows, reconcile column types.

fsspec + pyarrow, no Airflow. For each partition (a directory of ``part-*.parquet`` files):

1. skip it when any file in it changed in the last ``min_age_seconds`` (a drain may be writing);
2. read the files to rewrite, cast each to the record type's published schema (files written
   before a widening get the current types), keep the first row of every ``_record_key``;
3. write the result as new files of about ``target_bytes`` with :meth:`LakeWriter.write`
   (atomic and verified);
4. only then delete the files that were read.

A reader therefore never misses a row: between steps 3 and 4 it may see old and new files
together, i.e. duplicates, which ``_record_key`` removes. A compaction killed midway leaves at
worst such duplicates, which the next compaction removes; nothing is lost.

Files already at least ``0.75 * target_bytes`` with the published types are kept as they are;
only their ``_record_key`` column is read, so rows they hold are not written again.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_ktexport.lake.schema import widen
from airflow_provider_ktexport.lake.writer import (
    QUARANTINE_DIR,
    SCHEMA_DIR,
    LakeWriter,
    WrittenFile,
    _conform,
)

__all__ = ["CompactResult", "compact_lake"]

log = logging.getLogger(__name__)

#: A file this fraction of the target size or bigger is "done" unless its types need fixing.
BIG_FILE_FRACTION = 0.75
_KEY = "_record_key"


@dataclass
class CompactResult:
    """What a compaction did; ``summary()`` is the dict that goes to XCom."""

    partitions: int = 0  # partitions rewritten
    files_in: int = 0  # files read and replaced
    files_out: int = 0  # new files written
    rows_in: int = 0
    rows_out: int = 0
    duplicates_removed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    partitions_unchanged: int = 0  # nothing to do (one file, right types, no duplicates)
    partitions_skipped_recent: int = 0  # touched within min_age_seconds
    files: list[str] = field(default_factory=list)  # URIs of the new files

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        return asdict(self)


@dataclass
class _File:
    path: str
    size: int
    mtime: float | None


def _mtime(info: dict[str, Any]) -> float | None:
    """Modification time (epoch seconds) from an fsspec info dict, whatever the backend calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "mtime_ns", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return value / 1e9 if key == "mtime_ns" else float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _partitions(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, list[_File]]:
    """Every partition directory under ``root`` with all its files (data and temporary)."""
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out: dict[str, list[_File]] = defaultdict(list)
    for path, info in found.items():
        rel = path[len(root) :].strip("/")
        first = rel.split("/", 1)[0]
        if "/" not in rel or first in (SCHEMA_DIR, QUARANTINE_DIR) or first.startswith((".", "_")):
            continue
        directory = posixpath.dirname(path)
        out[directory].append(_File(path, int(info.get("size") or 0), _mtime(info)))
    return dict(out)


def _partition_of(root: str, directory: str) -> dict[str, str]:
    """``{"record_type": "telemetry", ...}`` from the path, values as stored (already sanitised)."""
    segments = directory[len(root) :].strip("/").split("/")
    return {k: v for k, sep, v in (s.partition("=") for s in segments) if sep}


def _is_data(f: _File) -> bool:
    name = posixpath.basename(f.path)
    return name.endswith(".parquet") and not name.startswith(".")


def _types_match(schema: pa.Schema, target: pa.Schema) -> bool:
    """Every column of ``schema`` already has the target's type (missing columns are fine)."""
    return all(target.get_field_index(f.name) < 0 or target.field(f.name).type == f.type for f in schema)


def _read(fs: fsspec.AbstractFileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh, columns=columns)


def _read_schema(fs: fsspec.AbstractFileSystem, path: str) -> pa.Schema:
    with fs.open(path, "rb") as fh:
        return pq.read_schema(fh)


def _first_occurrences(keys: Iterable[str | None], seen: set[str]) -> list[bool]:
    """Mask keeping a row unless its key was seen before (in this file or an earlier one)."""
    mask = []
    for key in keys:
        if key is None:  # no key (should not happen): keep the row rather than guess
            mask.append(True)
        elif key in seen:
            mask.append(False)
        else:
            seen.add(key)
            mask.append(True)
    return mask


class _Compactor:
    def __init__(
        self,
        writer: LakeWriter,
        *,
        target_bytes: int,
        min_age_seconds: float,
        now: float,
    ) -> None:
        self.writer = writer
        self.fs = writer.fs
        self.target_bytes = target_bytes
        self.min_age_seconds = min_age_seconds
        self.now = now
        self.result = CompactResult()
        self._schemas: dict[str, pa.Schema | None] = {}

    def published(self, record_type: str | None) -> pa.Schema | None:
        if record_type is None:
            return None
        if record_type not in self._schemas:
            self._schemas[record_type] = self.writer.load_schema(record_type)
        return self._schemas[record_type]

    def run(self, record_type: str | None) -> CompactResult:
        root = self.writer.root
        for directory, files in sorted(_partitions(self.fs, root).items()):
            partition = _partition_of(root, directory)
            if record_type is not None and partition.get("record_type") != record_type:
                continue
            self.partition(directory, partition, files)
        return self.result

    def partition(self, directory: str, partition: dict[str, str], files: list[_File]) -> None:
        data = sorted((f for f in files if _is_data(f)), key=lambda f: posixpath.basename(f.path))
        if not data:
            return
        newest = max((f.mtime if f.mtime is not None else self.now) for f in files)
        if newest > self.now - self.min_age_seconds:
            log.info("Skipping %s: changed %.0f s ago (a drain may be writing)", directory, self.now - newest)
            self.result.partitions_skipped_recent += 1
            return
        schemas = {f.path: _read_schema(self.fs, f.path) for f in data}
        target = self.published(partition.get("record_type"))
        for s in schemas.values():  # files older than the schema store, or partitions without a type
            target = s if target is None else widen(target, s)
        assert target is not None
        big_limit = BIG_FILE_FRACTION * self.target_bytes
        keep = [f for f in data if f.size >= big_limit and _types_match(schemas[f.path], target)]
        rewrite = [f for f in data if f not in keep]
        if not rewrite:
            self.result.partitions_unchanged += 1
            return
        seen: set[str] = set()
        for f in keep:  # rows already in a kept file are not written again
            if _KEY in schemas[f.path].names:
                seen.update(k for k in _read(self.fs, f.path, [_KEY]).column(_KEY).to_pylist() if k)
        if len(rewrite) == 1 and _types_match(schemas[rewrite[0].path], target):
            # One small file beside big ones (or alone): rewriting it would only fix duplicates.
            keys = self._keys(rewrite[0], schemas)
            if keys is None or (len(set(keys)) == len(keys) and seen.isdisjoint(keys)):
                self.result.partitions_unchanged += 1
                return
        self._rewrite(directory, partition, rewrite, target, seen)

    def _keys(self, f: _File, schemas: dict[str, pa.Schema]) -> list[str] | None:
        if _KEY not in schemas[f.path].names:
            return None
        return _read(self.fs, f.path, [_KEY]).column(_KEY).to_pylist()

    def _rewrite(
        self,
        directory: str,
        partition: dict[str, str],
        rewrite: list[_File],
        target: pa.Schema,
        seen: set[str],
    ) -> None:
        pending: list[pa.Table] = []
        pending_bytes = 0.0
        written: list[WrittenFile] = []
        rows_in = 0
        for f in rewrite:
            table = _read(self.fs, f.path)
            rows_in += table.num_rows
            table = _conform(table, target)
            if _KEY in table.column_names:
                mask = _first_occurrences(table.column(_KEY).to_pylist(), seen)
                kept = table.filter(pa.array(mask, pa.bool_()))
            else:
                kept = table
            if table.num_rows:
                # Estimate the output size from the input's compressed size, pro rata.
                pending_bytes += f.size * kept.num_rows / table.num_rows
            if kept.num_rows:
                pending.append(kept)
            if pending_bytes >= self.target_bytes:
                written.append(self.writer.write(pa.concat_tables(pending), partition))
                pending, pending_bytes = [], 0.0
        if pending:
            written.append(self.writer.write(pa.concat_tables(pending), partition))
        # Every new file is written and verified: only now may the old ones go.
        for f in rewrite:
            try:
                self.fs.rm_file(f.path)
            except FileNotFoundError:  # someone else compacted it meanwhile; its rows are in their files
                pass
        rows_out = sum(w.rows for w in written)
        r = self.result
        r.partitions += 1
        r.files_in += len(rewrite)
        r.files_out += len(written)
        r.rows_in += rows_in
        r.rows_out += rows_out
        r.duplicates_removed += rows_in - rows_out
        r.bytes_in += sum(f.size for f in rewrite)
        r.bytes_out += sum(w.bytes for w in written)
        r.files.extend(w.uri for w in written)
        log.info(
            "Compacted %s: %d files (%d rows) -> %d files (%d rows, %d duplicates removed)",
            directory,
            len(rewrite),
            rows_in,
            len(written),
            rows_out,
            rows_in - rows_out,
        )


def compact_lake(
    fs: fsspec.AbstractFileSystem,
    root: str,
    *,
    target_file_mb: float = 128,
    min_age_seconds: float = 600,
    record_type: str | None = None,
    compression: str = "zstd",
    uri_prefix: str | None = None,
    writer_id: str | None = None,
    now: float | None = None,
) -> CompactResult:
    """Compact every partition of the lake at ``root`` (or of one record type).

    :param fs: the lake's filesystem (local, s3fs, ...)
    :param root: the lake root on ``fs``
    :param target_file_mb: aim for files of about this many MB (compressed)
    :param min_age_seconds: leave partitions alone while any of their files is younger than this
    :param record_type: compact only this record type
    :param compression: Parquet codec of the new files
    :param uri_prefix: user-facing URL of ``root`` (for the URIs in the result)
    :param writer_id: the id the new files' schema is published under (default ``compactor``)
    :param now: the current time as epoch seconds (tests)
    :raises KtExportWriteError: a new file could not be written or verified; no old file was removed
        for that partition
    """
    if target_file_mb <= 0:
        raise ValueError(f"target_file_mb must be positive, got {target_file_mb!r}")
    if min_age_seconds < 0:
        raise ValueError(f"min_age_seconds must not be negative, got {min_age_seconds!r}")
    writer = LakeWriter(
        fs, root, compression=compression, writer_id=writer_id or "compactor", uri_prefix=uri_prefix
    )
    compactor = _Compactor(
        writer,
        target_bytes=int(target_file_mb * 1024 * 1024),
        min_age_seconds=min_age_seconds,
        now=time.time() if now is None else now,
    )
    return compactor.run(record_type)
