"""Compaction: merge a lake partition's small files, drop duplicate rows, fit old files to the rules.

fsspec + pyarrow, no Airflow. First the root is checked: it must be a lake (``_schema/`` or
partition folders right below it) and every folder holding files must be a pure partition path
(``record_type=…/event_date=…``), or nothing is touched. Then for each partition:

1. skip it when any file in it changed in the last ``min_age_seconds`` (a drain may be writing);
2. read the files to rewrite, fit each to the record type's published columns by the variant
   rule (:func:`.variants.fit_table`: no column changes type, no value is re-spelt; files of
   earlier versions get this version's names and lose their Null-typed columns), keep one row
   per ``(_source, _record_key)``: the one ingested first;
3. write the result as new files of about ``target_bytes`` into the same directory with
   :meth:`LakeWriter.write` (atomic and verified);
4. only then delete the files that were read.

A reader therefore never misses a row: between steps 3 and 4 it may see old and new files
together, i.e. duplicates, which ``_record_key`` removes. A compaction killed midway leaves at
worst such duplicates, which the next compaction removes; nothing is lost.

Files already at least ``0.75 * target_bytes`` and at the published columns are kept as they
are; only their key columns are read, so rows they hold are not written again.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import pyarrow as pa

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.lake.compact_scan import (
    LakeFile,
    Pair,
    check_root,
    find_partitions,
    is_data,
    key_rows,
    partition_of,
    read_schema,
    read_table,
)
from airflow_provider_ktexport.lake.layout import (
    RECORD_TYPE_KEY,
    dataset_dir,
    record_type_folder,
)
from airflow_provider_ktexport.lake.ledger import ParquetLedger
from airflow_provider_ktexport.lake.reader import published_types
from airflow_provider_ktexport.lake.variants import fit_table, fitted_columns, needs_fit, pad_table
from airflow_provider_ktexport.lake.writer import LakeWriter, WrittenFile

__all__ = ["CompactResult", "compact_lake"]

log = logging.getLogger(__name__)

#: A file this fraction of the target size or bigger is "done" unless its columns need fitting.
BIG_FILE_FRACTION = 0.75


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
    #: Per folder compacted (a record type's folder, or the root): its counts and the new files'
    #: columns, for lineage. Kept out of the summary (XCom).
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-serialisable summary."""
        out = asdict(self)
        del out["datasets"]
        return out


class _Compactor:
    def __init__(
        self,
        writer: LakeWriter,
        *,
        target_bytes: int,
        min_age_seconds: float,
        now: float,
        uniform_columns: bool = True,
    ) -> None:
        self.writer = writer
        self.uniform_columns = uniform_columns
        self.fs = writer.fs
        self.target_bytes = target_bytes
        self.min_age_seconds = min_age_seconds
        self.now = now
        self.result = CompactResult()

    def run(self, record_type: str | None) -> CompactResult:
        root = self.writer.root
        if not check_root(self.fs, root):
            log.info("Nothing to compact: %s is empty or missing", root)
            return self.result
        by_type: dict[str | None, list[tuple[str, dict[str, str], list[LakeFile]]]] = defaultdict(list)
        for directory, files in sorted(find_partitions(self.fs, root).items()):
            partition = partition_of(root, directory)
            if self.writer.partition_dir(partition) != directory:  # pragma: no cover - checked above
                raise KtExportConfigError(f"Refusing to compact {directory}: not a partition path of {root}")
            if record_type is not None and partition.get(RECORD_TYPE_KEY) != record_type_folder(record_type):
                continue
            by_type[partition.get(RECORD_TYPE_KEY)].append((directory, partition, files))
        for rtype, partitions in by_type.items():
            self.record_type(rtype, partitions)
        return self.result

    def record_type(
        self, rtype: str | None, partitions: list[tuple[str, dict[str, str], list[LakeFile]]]
    ) -> None:
        """Fix the record type's column types once (across all its partitions), then each partition."""
        schemas: dict[str, pa.Schema] = {}
        for _, _, files in partitions:
            for f in files:
                if is_data(f):
                    schemas[f.path] = read_schema(self.fs, f.path)
        oldest_first = [schemas[p] for p in sorted(schemas, key=posixpath.basename)]
        if rtype is None:
            types: dict[str, pa.DataType] = {}
            for schema in oldest_first:
                for fld in schema:
                    if not pa.types.is_null(fld.type):
                        types.setdefault(fld.name, fld.type)
        else:
            types = published_types(self.writer.schemas, rtype, oldest_first)
        full = fitted_columns(oldest_first, types) if self.uniform_columns else {}
        for directory, partition, files in partitions:
            self.partition(directory, partition, files, schemas, types, full)

    def partition(
        self,
        directory: str,
        partition: dict[str, str],
        files: list[LakeFile],
        schemas: dict[str, pa.Schema],
        types: dict[str, pa.DataType],
        full: dict[str, pa.DataType],
    ) -> None:
        data = sorted((f for f in files if is_data(f)), key=lambda f: posixpath.basename(f.path))
        if not data:
            return
        newest = max((f.mtime if f.mtime is not None else self.now) for f in files)
        if newest > self.now - self.min_age_seconds:
            log.info("Skipping %s: changed %.0f s ago (a drain may be writing)", directory, self.now - newest)
            self.result.partitions_skipped_recent += 1
            return
        big_limit = BIG_FILE_FRACTION * self.target_bytes

        def fine(f: LakeFile) -> bool:  # at the published types, and (if asked) every column there
            schema = schemas[f.path]
            return not needs_fit(schema, types) and (not full or set(schema.names) == set(full))

        keep = [f for f in data if f.size >= big_limit and fine(f)]
        rewrite = [f for f in data if f not in keep]
        if not rewrite:
            self.result.partitions_unchanged += 1
            return
        kept_first: dict[Pair, float] = {}
        for f in keep:  # rows already in a kept file are not written again (unless ingested earlier)
            for pair, ts in key_rows(self.fs, f, schemas[f.path]):
                if pair is not None and ts < kept_first.get(pair, float("inf")):
                    kept_first[pair] = ts
        masks = self._first_copies(rewrite, schemas, kept_first)
        if len(rewrite) == 1 and all(masks[0]) and fine(rewrite[0]):
            self.result.partitions_unchanged += 1  # one small file: rewriting would change nothing
            return
        self._rewrite(directory, partition, rewrite, masks, types, full, keep)

    def _first_copies(
        self, rewrite: list[LakeFile], schemas: dict[str, pa.Schema], kept_first: dict[Pair, float]
    ) -> list[list[bool]]:
        """Per file, per row: keep it (the first-ingested copy of its ``(_source, _record_key)``)."""
        rows = [list(key_rows(self.fs, f, schemas[f.path])) for f in rewrite]
        best: dict[Pair, tuple[float, int, int]] = {}
        for i, file_rows in enumerate(rows):
            for j, (pair, ts) in enumerate(file_rows):
                if pair is None:
                    continue
                rank = (ts, i, j)
                if pair not in best or rank < best[pair]:
                    best[pair] = rank
        masks = []
        for i, file_rows in enumerate(rows):
            mask = []
            for j, (pair, ts) in enumerate(file_rows):
                if pair is None:  # no key (should not happen): keep the row rather than guess
                    mask.append(True)
                else:
                    mask.append(best[pair][1:] == (i, j) and ts < kept_first.get(pair, float("inf")))
            masks.append(mask)
        return masks

    def _rewrite(
        self,
        directory: str,
        partition: dict[str, str],
        rewrite: list[LakeFile],
        masks: list[list[bool]],
        types: dict[str, pa.DataType],
        full: dict[str, pa.DataType],
        kept_files: list[LakeFile],
    ) -> None:
        pending: list[pa.Table] = []
        pending_bytes = 0.0
        written: list[WrittenFile] = []
        rows_in = 0
        for f, mask in zip(rewrite, masks, strict=True):
            table = read_table(self.fs, f.path)
            rows_in += table.num_rows
            kept = fit_table(table, types).filter(pa.array(mask, pa.bool_()))
            if table.num_rows:
                # Estimate the output size from the input's compressed size, pro rata.
                pending_bytes += f.size * kept.num_rows / table.num_rows
            if kept.num_rows:
                pending.append(kept)
            if pending_bytes >= self.target_bytes:
                written.append(self._write(pending, partition, full))
                pending, pending_bytes = [], 0.0
        if pending:
            written.append(self._write(pending, partition, full))
        # Flushes still in doubt that named the old files now name where their rows are.
        ParquetLedger(self.writer).replace_files(
            [f.path for f in rewrite], [w.path for w in written] + [f.path for f in kept_files]
        )
        # Every new file is written and verified: only now may the old ones go.
        for f in rewrite:
            try:
                self.fs.rm_file(f.path)
            except FileNotFoundError:  # someone else compacted it meanwhile; its rows are in their files
                pass
        self._count(directory, rewrite, rows_in, written)

    def _write(
        self, pending: list[pa.Table], partition: dict[str, str], full: dict[str, pa.DataType]
    ) -> WrittenFile:
        # Every name has one type in all fitted tables; a column some lack reads as nulls there.
        table = pa.concat_tables(pending, promote_options="default")
        return self.writer.write(pad_table(table, full) if full else table, partition)

    def _count(
        self, directory: str, rewrite: list[LakeFile], rows_in: int, written: list[WrittenFile]
    ) -> None:
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
        self._count_dataset(directory, rewrite, rows_in, written)
        log.info(
            "Compacted %s: %d files (%d rows) -> %d files (%d rows, %d duplicates removed)",
            directory,
            len(rewrite),
            rows_in,
            len(written),
            rows_out,
            rows_in - rows_out,
        )

    def _count_dataset(
        self, directory: str, rewrite: list[LakeFile], rows_in: int, written: list[WrittenFile]
    ) -> None:
        folder = self.writer.lake.join(dataset_dir(partition_of(self.writer.root, directory)))
        d = self.result.datasets.setdefault(
            self.writer.uri_of(folder),
            {"rows_in": 0, "rows_out": 0, "bytes_in": 0, "bytes_out": 0, "files_in": 0, "files_out": 0},
        )
        d["rows_in"] += rows_in
        d["rows_out"] += sum(w.rows for w in written)
        d["bytes_in"] += sum(f.size for f in rewrite)
        d["bytes_out"] += sum(w.bytes for w in written)
        d["files_in"] += len(rewrite)
        d["files_out"] += len(written)
        for w in written:
            if w.schema is not None:
                known = d.get("schema")
                if known is None:
                    d["schema"] = w.schema
                else:
                    extra = [f for f in w.schema if f.name not in set(known.names)]
                    if extra:
                        d["schema"] = pa.schema(list(known) + extra)


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
    uniform_columns: bool = True,
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
    :param uniform_columns: give every file of a record type all its columns (nulls where a file
        has no value), so readers that take one file's columns (pandas) or refuse others (Polars)
        read every value; a new column then makes the next run rewrite each partition once
    :raises KtExportConfigError: ``root`` is not a lake root, or a folder holding files below it is
        not a pure partition path; nothing was changed
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
        uniform_columns=uniform_columns,
    )
    return compactor.run(record_type)
