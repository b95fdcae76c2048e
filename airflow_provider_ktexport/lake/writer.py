"""Parquet files in the lake: one verified file per partition and flush, its schema published first.

fsspec only, no Airflow. A file becomes visible whole or not at all (:mod:`.atomic`), at the path
:mod:`.layout` gives its partition. Every write is verified before it is reported, because the
drain acknowledges batches on the strength of it: the footer and row count on the bytes built,
then the stored size (one HEAD on an object store: a file costs two requests; a stat on a local
disk).

A :class:`LakeWriter` puts together what a drain needs of a Parquet lake: the schema store
(:mod:`.schema_store`), the quarantine of undecodable bodies (:mod:`.quarantine`) and the
destination probe (:mod:`.probe`). Readers never build one (:mod:`.reader` asks :mod:`.layout`).
"""

from __future__ import annotations

import logging
import os
import posixpath
import threading
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake import probe
from airflow_provider_ktexport.lake.atomic import AtomicStore
from airflow_provider_ktexport.lake.layout import (
    RECORD_TYPE_KEY,
    LakeRoot,
    UnsafePartitionError,
    hive_path,
    safe_folder_name,
)
from airflow_provider_ktexport.lake.quarantine import FileQuarantine
from airflow_provider_ktexport.lake.schema_store import SchemaStore

__all__ = ["DICTIONARY_MIN_ROWS", "LakeWriter", "WrittenFile", "part_file_name"]

log = logging.getLogger(__name__)

DEFAULT_ROW_GROUP_SIZE = 128 * 1024
#: Files of fewer rows are written without dictionary pages. A dictionary costs a fixed ~0.6 ms of
#: CPU per file (a page per column of some 40) and, under zstd, made small files larger, not
#: smaller: 133-row files of 47 columns 2.0 -> 1.4 ms and 37.6 -> 35.2 KB without it. With 50
#: record types most files are that small (docs/performance.md, "Per-file costs"). Large files
#: keep dictionaries, which readers use (DuckDB and Arrow filter and group on dictionary codes).
DICTIONARY_MIN_ROWS = 1000


@dataclass(frozen=True)
class WrittenFile:
    """A verified file: its filesystem path, user-facing URI, row count and size in bytes."""

    path: str
    uri: str
    rows: int
    bytes: int
    #: The file's Arrow schema (for lineage); not part of its identity.
    schema: pa.Schema | None = field(default=None, compare=False, repr=False)


def part_file_name() -> str:
    """A new data file's name: ``part-<UTC stamp>-<random>.parquet`` (the flush ledger plans names
    before the write, so its manifest can name the files)."""
    return f"part-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex}.parquet"


def _check_footer(source: Any, rows: int) -> None:
    """Raise ``ValueError`` unless ``source`` (a file or buffer) holds a Parquet footer of ``rows`` rows."""
    num_rows = pq.ParquetFile(source).metadata.num_rows
    if num_rows != rows:
        raise ValueError(f"footer says {num_rows} rows, wrote {rows}")


class LakeWriter:
    """Writes verified Parquet files under ``root`` of an fsspec filesystem.

    :param fs: the filesystem (``ObjectStoragePath.fs``, ``s3fs.S3FileSystem``, local, ...)
    :param root: the lake root on ``fs`` (protocol optional)
    :param compression: Parquet compression codec
    :param writer_id: names this writer's schema file; concurrent writers need distinct ids
        (default: host, pid and a random part)
    :param uri_prefix: user-facing URL of ``root``; returned URIs are this plus the relative path
    :param row_group_size: rows per Parquet row group
    """

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        *,
        compression: str = "zstd",
        writer_id: str | None = None,
        uri_prefix: str | None = None,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    ) -> None:
        self.lake = LakeRoot(fs, root, uri_prefix)
        self.fs = fs
        self.root = self.lake.root
        self.compression = compression
        self.writer_id = safe_folder_name(
            writer_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.uri_prefix = uri_prefix
        self.row_group_size = row_group_size
        self.atomic = AtomicStore(fs)
        self.local = self.atomic.local
        self.schemas = SchemaStore(self.lake, self.atomic, self.writer_id)
        # Through self._put, looked up at each call: subclasses and tests replace it.
        self.quarantined = FileQuarantine(self.lake, lambda path, data: self._put(path, data))
        # Concurrent writes of one flush share the schema store's state.
        self._publish_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"LakeWriter(root={self.root!r}, writer_id={self.writer_id!r})"

    # -- paths -------------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return self.lake.join(*parts)

    def uri_of(self, path: str) -> str:
        """The user-facing URI of a path under the root."""
        return self.lake.uri_of(path)

    def partition_dir(self, partition: Mapping[str, str], area: str = "") -> str:
        """``<root>[/<area>]/k=v/...`` (:func:`.layout.hive_path`); values must be safe folder names."""
        try:
            return self.lake.join(hive_path(partition, area))
        except UnsafePartitionError as exc:
            raise KtExportWriteError(
                f"Refusing to write partition {exc.key}={exc.value!r} under {self.root}: the value is not "
                "sanitised (it could point outside the lake).",
                destination=self.root,
            ) from None

    # -- storage -----------------------------------------------------------------------------------

    def _put(self, path: str, data: bytes) -> None:
        """Make ``data`` visible at ``path`` whole or not at all (:meth:`.AtomicStore.put`)."""
        self.atomic.put(path, data)

    def _create(self, path: str, data: bytes) -> None:
        """Make ``data`` visible at ``path`` only if nothing is there (:meth:`.AtomicStore.create`)."""
        self.atomic.create(path, data)

    def put_atomic(self, path: str, data: bytes) -> None:
        """Make ``data`` visible at ``path`` (under the root) whole or not at all (the flush ledger)."""
        self._put(path, data)

    def prove_writable(self) -> None:
        """Write, read back and delete a probe file before any lease (:func:`.probe.prove_writable`).

        :raises KtExportConfigError: the destination is wrong (a retry cannot fix it)
        :raises KtExportWriteError: the store is unreachable (an outage)
        """
        probe.prove_writable(self.lake, self._put, self.atomic.remove_quietly, self.writer_id)

    # -- data files --------------------------------------------------------------------------------

    def write(
        self, table: pa.Table, partition: Mapping[str, str], *, area: str = "", name: str | None = None
    ) -> WrittenFile:
        """Write ``table`` as one new Parquet file in ``partition``, atomically, then verify it.

        The record type's schema is published first (when ``partition`` names a record type), so
        no reader ever meets a file at types the schema store does not know. Safe to call from
        several threads at once (the drain writes a flush's partitions concurrently).

        :param area: a folder under the root for tables apart from the data (``_rejected``); their
            schema is fixed, so nothing is published for them
        :param name: the file's name (default: a new :func:`part_file_name`); the flush ledger
            names files before they are written
        :raises KtExportWriteError: writing or verification failed; names the destination and cause
        """
        directory = self.partition_dir(partition, area)
        path = posixpath.join(directory, name or part_file_name())
        record_type = partition.get(RECORD_TYPE_KEY)
        if record_type is not None and not area:
            # One flush's files are written concurrently: they settle the schema one at a time.
            with self._publish_lock:
                table = self.schemas.settle(record_type, table)
        data = self._encode(table, path)
        try:
            self._put(path, data)
        except Exception as exc:
            raise KtExportWriteError(
                f"Writing {self.uri_of(path)} failed: {type(exc).__name__}: {exc}",
                destination=self.uri_of(path),
            ) from exc
        self._verify(path, data, table.num_rows)
        log.debug("Wrote %s (%d rows, %d bytes)", path, table.num_rows, len(data))
        return WrittenFile(
            path=path, uri=self.uri_of(path), rows=table.num_rows, bytes=len(data), schema=table.schema
        )

    def _encode(self, table: pa.Table, path: str) -> bytes:
        """``table`` as Parquet bytes, their footer checked before anything is sent."""
        try:
            buf = pa.BufferOutputStream()
            pq.write_table(
                table,
                buf,
                compression=self.compression,
                row_group_size=self.row_group_size,
                use_dictionary=table.num_rows >= DICTIONARY_MIN_ROWS,
            )
            data = buf.getvalue().to_pybytes()
            _check_footer(pa.BufferReader(data), table.num_rows)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise KtExportWriteError(
                f"Could not encode Parquet for {self.uri_of(path)}: {exc}", destination=self.uri_of(path)
            ) from exc
        return data

    def _verify(self, path: str, data: bytes, rows: int) -> None:
        """Prove ``path`` holds the file built, in as few round trips as that takes.

        The footer is checked on the bytes in memory before they are sent (:meth:`_encode`). On an
        object store a PUT stores exactly the body it was given or fails, so one metadata request
        (HEAD) for the size then proves the object is visible and whole: re-reading the footer
        over the network would cost two more requests per file and prove nothing more. A local
        file is the same: our own loop wrote every byte of those checked bytes, then fsync and
        rename succeeded, and its size is checked here. Reading it back right after would read the
        page cache those bytes were just copied to, not the disk, so it proved nothing the size
        does not, at a file open and a footer parse per file (about 0.5 ms of CPU, a tenth of a
        file's cost with 50 record types).
        """
        uri = self.uri_of(path)
        try:
            self.fs.invalidate_cache(posixpath.dirname(path))
            info = self.fs.info(path)
            if info.get("size") != len(data):
                raise ValueError(f"size is {info.get('size')} bytes, wrote {len(data)}")
        except Exception as exc:
            self.atomic.remove_quietly(path)
            raise KtExportWriteError(
                f"Verifying {uri} failed ({type(exc).__name__}: {exc}); the file was removed and nothing "
                "is acknowledged.",
                destination=uri,
            ) from exc

    # -- schema store ------------------------------------------------------------------------------

    @property
    def _published(self) -> dict[str, pa.Schema]:
        """The published schema per record type as last read (the schema store's)."""
        return self.schemas.published

    def load_schema(self, record_type: str) -> pa.Schema | None:
        """The published schema of a record type (:meth:`.SchemaStore.load`)."""
        return self.schemas.load(record_type)

    def save_schema(self, record_type: str, schema: pa.Schema) -> None:
        """Publish the columns of ``schema`` the lake does not publish yet (:meth:`.SchemaStore.save`)."""
        self.schemas.save(record_type, schema)

    # -- quarantine and housekeeping ---------------------------------------------------------------

    def quarantine(self, body: bytes, *, reason: str, batch_id: str | None) -> str:
        """Store an undecodable body once, count a sighting (:meth:`.FileQuarantine.store`).

        :return: the URI of the stored body
        """
        return self.quarantined.store(body, reason=reason, batch_id=batch_id)

    def quarantine_sightings(self, body: bytes) -> int:
        """How many times :meth:`quarantine` stored this body, over all runs and writers."""
        return self.quarantined.sightings(body)

    def quarantine_kept(self, body: bytes) -> bool:
        """Whether the stored copy of ``body`` reads back as this body (:meth:`.FileQuarantine.kept`)."""
        return self.quarantined.kept(body)

    def cleanup_temp(self, older_than_seconds: float = 3600) -> int:
        """Remove temporary files left by crashed writes (local filesystems only); returns how many."""
        removed = self.atomic.cleanup_temp(self.root, older_than_seconds)
        if removed:
            log.info("Removed %d leftover temporary files under %s", removed, self.root)
        return removed


_READER_NAMES = ("read_lake", "read_lake_pandas", "read_lake_table")


def __getattr__(name: str) -> Any:
    # Deprecated: the reader's functions were importable from here; they live in .reader, which
    # no longer depends on this module. Kept for one release.
    if name in _READER_NAMES:
        from airflow_provider_ktexport.lake import reader

        warnings.warn(
            f"import {name} from airflow_provider_ktexport.lake.reader; its import from "
            "airflow_provider_ktexport.lake.writer is deprecated and goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
