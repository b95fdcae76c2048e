"""Parquet files in the lake: partition paths, atomic visibility, verification, schema store.

fsspec only, no Airflow. A file becomes visible whole or not at all:

- local filesystems: bytes go to a dot-named temporary file in the target directory (no
  ``*.parquet`` glob matches it), are fsynced, then renamed (atomic on POSIX);
- object stores: one ``pipe()`` of bytes built in memory (a single request; for big bodies s3fs,
  gcsfs and adlfs upload in chunks committed only at the end: multipart, resumable, block list).
  GCS zonal buckets are refused (see ``_refuse_zonal_gcs_bucket``). Never ``fs.open(path, "wb")``: its
  ``close()`` runs even when the body raised and commits a truncated object.

Every write is verified before it is reported, because the drain acknowledges batches on the
strength of it: the footer and row count on the bytes built, then the stored size (one HEAD on an
object store: a file costs two requests), and on a local disk the footer read back as well.

The schema store (``_schema/<type>/columns/<digest of the lower-cased name>.json``) publishes
each column's name, key path and type the first time any writer writes it; from then on they
are fixed (docs/schema-mapping.md). A column file is only ever created if absent (exclusive
link locally, a conditional PUT on object stores), so of writers adding one column at once
exactly one decides it, and the others fit their rows to it before they write a data file.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import fsspec.core
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportError, KtExportWriteError
from airflow_provider_ktexport.lake.layout import (
    PROBE_DIR,
    QUARANTINE_DIR,
    is_safe_folder_name,
    safe_folder_name,
    schema_folder,
)
from airflow_provider_ktexport.lake.naming import TAG_SEP, assign_name, case_tagged, field_path, variant_tag
from airflow_provider_ktexport.lake.variants import (
    fit_table,
    is_meta_column,
    needs_fit,
)
from airflow_provider_ktexport.protocol import sighting_digest

__all__ = ["LakeWriter", "WrittenFile", "part_file_name"]

log = logging.getLogger(__name__)

DEFAULT_ROW_GROUP_SIZE = 128 * 1024
_TMP_MARK = ".tmp-"


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


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return isinstance(fs, LocalFileSystem) or "file" in protocols or "local" in protocols


def _refuse_zonal_gcs_bucket(fs: fsspec.AbstractFileSystem, path: str, checked: set[str]) -> None:
    """Refuse a GCS zonal (Rapid) bucket: no write there is atomic.

    Every other store writes a file in one request, or in chunks committed only at the end (S3
    multipart, GCS resumable, Azure block list). In a zonal bucket gcsfs (its default
    ``ExtendedGcsFileSystem``) instead opens an appendable object under the final name, then appends
    the bytes, and closes it even when an append failed: readers can meet a partial file, and a
    failed write leaves one behind. Asked once per bucket and writer (``checked``): gcsfs does not
    cache an UNKNOWN answer (no permission for the layout API), which would cost a call per write.
    """
    lookup = getattr(fs, "_sync_lookup_bucket_type", None)
    if lookup is None:  # not gcsfs, or a gcsfs without zonal support: nothing to check
        return
    bucket = fs.split_path(path)[0]  # type: ignore[attr-defined]
    if bucket in checked:
        return
    kind = lookup(bucket)
    if getattr(kind, "value", kind) == "ZONAL_HIERARCHICAL":
        raise KtExportWriteError(
            f"gs://{bucket} is a zonal (Rapid storage) bucket, where gcsfs writes appendable objects "
            "that are visible before they are complete; use a standard (regional or multi-region) "
            "bucket for the lake.",
            destination=f"gs://{bucket}",
        )
    checked.add(bucket)


#: Store format 3: one immutable file per column, created only if absent. Files of formats 1 and
#: 2 (earlier versions: one file per writer) still count, after every format-3 entry.
_STORE_FORMAT = 3
#: Where format-3 column files live, under ``_schema/<type>/``.
COLUMNS_DIR = "columns"
#: Rounds of publishing before a write gives up (each round only adds twins or variants).
_SETTLE_ROUNDS = 6


@dataclass(frozen=True)
class _Entry:
    """One published column: its field (this version's name) and when, by whom, in which format."""

    field: pa.Field
    first_seen: float
    writer_id: str
    format: int

    def rank(self) -> tuple[int, float, str]:
        return (-self.format, self.first_seen, self.writer_id)


def column_file(name: str) -> str:
    """The store file of a column: a digest of its lower-cased name.

    Two names that differ by case alone share one file, so of two case twins published at once
    exactly one can take a name; the other takes the next twin name (``naming.assign_name``).
    """
    return hashlib.sha256(name.lower().encode("utf-8", "surrogatepass")).hexdigest()[:40] + ".json"


def _column_to_json(f: pa.Field, writer_id: str, published: float) -> bytes:
    doc = {
        "format": _STORE_FORMAT,
        "name": f.name,
        # Readable summary for humans; the serialized field (with its key path) is authoritative.
        "type": str(f.type),
        "writer_id": writer_id,
        "published": published,
        "arrow_schema": base64.b64encode(pa.schema([f]).serialize().to_pybytes()).decode("ascii"),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")


def _column_from_json(data: bytes) -> _Entry:
    doc = json.loads(data)
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["arrow_schema"])))
    return _Entry(schema.field(0), float(doc["published"]), str(doc["writer_id"]), int(doc["format"]))


def _legacy_entries(data: bytes, default_writer: str) -> list[_Entry]:
    """The columns of a per-writer schema file of an earlier version (formats 1 and 2)."""
    doc = json.loads(data)
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["arrow_schema"])))
    fmt = int(doc.get("format", 1))
    first_seen = doc.get("first_seen") or {}
    writer_id = str(doc.get("writer_id") or default_writer)
    out = []
    for f in schema:
        if pa.types.is_null(f.type):  # earlier versions published Null-typed columns: no type yet
            continue
        seen = float(first_seen.get(f.name, float("inf")))
        out.append(_Entry(f, seen, writer_id, fmt))
    return out


def _name_legacy(columns: dict[str, _Entry], legacy: list[_Entry]) -> None:
    """Add the legacy entries no column file publishes, named by this version's rule, to ``columns``.

    As :func:`.naming.legacy_renames` does for a table: names without a case tag first, then
    best-ranked first; a name whose plain spelling is taken ignoring case gets a twin name. Every
    writer reading the same files names them alike.
    """
    by_path: dict[tuple[tuple[str, ...], str | None], _Entry] = {}
    for e in sorted(legacy, key=lambda e: (case_tagged(e.field.name), e.rank())):
        key = (field_path(e.field), variant_tag(e.field.name))
        if is_meta_column(e.field.name):
            key = ((e.field.name,), None)
        by_path.setdefault(key, e)
    # Base columns first (a variant's name follows its column's).
    order = {key: i for i, key in enumerate(by_path)}
    for (path, tag), e in sorted(by_path.items(), key=lambda kv: (kv[0][1] is not None, order[kv[0]])):
        if is_meta_column(e.field.name):
            name = e.field.name
        else:
            base = assign_name(path, columns)
            name = base if tag is None else f"{base}{TAG_SEP}{tag}"
        if name not in columns:
            columns[name] = _Entry(e.field.with_name(name), e.first_seen, e.writer_id, e.format)


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass


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
        self.fs = fs
        self.root = fs._strip_protocol(root).rstrip("/") or "/"
        self.compression = compression
        self.writer_id = safe_folder_name(
            writer_id or f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        self.uri_prefix = uri_prefix
        self.row_group_size = row_group_size
        self.local = _is_local(fs)
        # Column files already read (path -> entry): they are created once and never rewritten.
        self._column_cache: dict[str, _Entry] = {}
        # The lake's published schema per record type as last read (it only ever gains columns).
        self._published: dict[str, pa.Schema] = {}
        # Concurrent writes of one flush share the schema store's state.
        self._publish_lock = threading.Lock()
        # GCS buckets already checked not to be zonal (see _refuse_zonal_gcs_bucket).
        self._gcs_buckets_checked: set[str] = set()

    def __repr__(self) -> str:
        return f"LakeWriter(root={self.root!r}, writer_id={self.writer_id!r})"

    # -- paths -------------------------------------------------------------------------------------

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri_of(self, path: str) -> str:
        """The user-facing URI of a path under the root."""
        if self.uri_prefix is not None:
            rel = path[len(self.root) :].lstrip("/")
            return self.uri_prefix.rstrip("/") + "/" + rel
        return self.fs.unstrip_protocol(path)

    def partition_dir(self, partition: Mapping[str, str], area: str = "") -> str:
        """``<root>[/<area>]/k=v/...``; values must be safe folder names (see :mod:`.layout`)."""
        parts = [area] if area else []
        for key, value in partition.items():
            if not (is_safe_folder_name(key) and is_safe_folder_name(value)):
                raise KtExportWriteError(
                    f"Refusing to write partition {key}={value!r} under {self.root}: the value is not "
                    "sanitised (it could point outside the lake).",
                    destination=self.root,
                )
            parts.append(f"{key}={value}")
        return self._join(*parts)

    # -- low-level atomic put ----------------------------------------------------------------------

    def _put(self, path: str, data: bytes) -> None:
        """Make ``data`` visible at ``path`` whole or not at all."""
        if not self.local:
            _refuse_zonal_gcs_bucket(self.fs, path, self._gcs_buckets_checked)
            self.fs.pipe(path, data)
            return
        directory = posixpath.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = posixpath.join(directory, f".{posixpath.basename(path)}{_TMP_MARK}{uuid.uuid4().hex}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)  # make the rename itself durable

    def put_atomic(self, path: str, data: bytes) -> None:
        """Make ``data`` visible at ``path`` (under the root) whole or not at all (the flush ledger)."""
        self._put(path, data)

    def _remove_quietly(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except (OSError, FileNotFoundError):
            pass
        except Exception:  # noqa: BLE001 - cleanup must not mask the original error
            log.warning("Could not remove %s after a failed write", path)

    # -- proving the destination -------------------------------------------------------------------

    def prove_writable(self) -> None:
        """Write, read back and delete a small file under ``_probe/``, through the same atomic put
        as every data file, so a destination that cannot take files fails before any lease.

        Without it a wrong bucket or folder showed only at the first flush: after a whole queue
        was leased (a retry inside the lease then found it empty and went green), or never while
        the queue was empty.

        :raises KtExportConfigError: the store answered that the destination is wrong (missing
            bucket, no permission, a path through a regular file): a retry cannot fix it
        :raises KtExportWriteError: anything else (the store unreachable, a timeout): an outage
        """
        path = self._join(PROBE_DIR, f"{uuid.uuid4().hex}.probe")
        data = f"ktexport probe from {self.writer_id}\n".encode()
        try:
            self._put(path, data)  # atomic: when it fails there is nothing to remove
        except Exception as exc:
            raise _probe_failed(self.uri_of(self.root), exc) from None
        try:
            back = self.fs.cat_file(path)
            if back != data:
                raise ValueError(f"read back {len(back)} bytes that differ from the {len(data)} written")
            self.fs.rm_file(path)
        except Exception as exc:
            self._remove_quietly(path)
            raise _probe_failed(self.uri_of(self.root), exc) from None
        log.debug("Proved %s writable (probe %s written, read back, deleted)", self.uri_of(self.root), path)

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
        record_type = partition.get("record_type")
        if record_type is not None and not area:
            # One flush's files are written concurrently: they settle the schema one at a time.
            with self._publish_lock:
                table = self._settle(record_type, table)
        try:
            buf = pa.BufferOutputStream()
            pq.write_table(
                table,
                buf,
                compression=self.compression,
                row_group_size=self.row_group_size,
            )
            data = buf.getvalue().to_pybytes()
            _check_footer(pa.BufferReader(data), table.num_rows)
        except (pa.ArrowException, ValueError, TypeError) as exc:
            raise KtExportWriteError(
                f"Could not encode Parquet for {self.uri_of(path)}: {exc}", destination=self.uri_of(path)
            ) from exc
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

    def _verify(self, path: str, data: bytes, rows: int) -> None:
        """Prove ``path`` holds the file built, in as few round trips as that takes.

        The footer is checked on the bytes in memory before they are sent (:meth:`write` calls
        :func:`_check_footer` first). On an object store a PUT stores exactly the body it was
        given or fails, so one metadata request (HEAD) for the size then proves the object is
        visible and whole: re-reading the footer over the network would cost two more requests
        per file and prove nothing more. A local file went through our own write, fsync and
        rename, so its footer is read back from disk as well (no round trips there).
        """
        uri = self.uri_of(path)
        try:
            self.fs.invalidate_cache(posixpath.dirname(path))
            info = self.fs.info(path)
            if info.get("size") != len(data):
                raise ValueError(f"size is {info.get('size')} bytes, wrote {len(data)}")
            if self.local:
                with self.fs.open(path, "rb") as fh:
                    _check_footer(fh, rows)
        except Exception as exc:
            self._remove_quietly(path)
            raise KtExportWriteError(
                f"Verifying {uri} failed ({type(exc).__name__}: {exc}); the file was removed and nothing "
                "is acknowledged.",
                destination=uri,
            ) from exc

    # -- schema store ------------------------------------------------------------------------------

    def _schema_dir(self, record_type: str) -> str:
        return self._join(schema_folder(record_type))

    def _store_files(self, directory: str) -> list[str]:
        self.fs.invalidate_cache(directory)
        try:
            return sorted(p for p in self.fs.ls(directory, detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            return []
        except Exception as exc:
            uri = self.uri_of(directory)
            raise KtExportWriteError(
                f"Reading the schema store {uri} failed: {type(exc).__name__}: {exc}", destination=uri
            ) from exc

    def _read_store_file(self, path: str) -> bytes | None:
        """A store file's bytes, None when it vanished or cannot be read as a store file."""
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def _column_entries(self, record_type: str) -> dict[str, _Entry]:
        """The format-3 column files of a record type by column name; each file is read once ever.

        Files not read yet are fetched in one ``cat`` call, which s3fs, gcsfs and adlfs run
        concurrently: a new drain meeting a lake of hundreds of columns pays one round trip, not
        hundreds.
        """
        paths = self._store_files(posixpath.join(self._schema_dir(record_type), COLUMNS_DIR))
        unread = [p for p in paths if p not in self._column_cache]
        if unread:
            try:
                fetched = self.fs.cat(unread, on_error="omit")
            except Exception as exc:
                uri = self.uri_of(self._schema_dir(record_type))
                raise KtExportWriteError(
                    f"Reading the schema store {uri} failed: {type(exc).__name__}: {exc}", destination=uri
                ) from exc
            for p, data in (fetched if isinstance(fetched, dict) else {unread[0]: fetched}).items():
                try:
                    self._column_cache[self.fs._strip_protocol(p)] = _column_from_json(data)
                except (ValueError, KeyError, TypeError, IndexError, pa.ArrowException) as exc:
                    log.warning("Ignoring unreadable schema file %s: %s", self.uri_of(p), exc)
        columns: dict[str, _Entry] = {}
        for p in paths:
            entry = self._column_cache.get(p)  # created once, never rewritten: safe to keep
            if entry is None:
                continue
            have = columns.get(entry.field.name)
            if have is None or entry.rank() < have.rank():
                columns[entry.field.name] = entry
        return columns

    def _legacy_files(self, record_type: str) -> list[_Entry]:
        out: list[_Entry] = []
        for p in self._store_files(self._schema_dir(record_type)):
            name = posixpath.basename(p)
            data = None if name.startswith(".") else self._read_store_file(p)
            if data is None:
                continue
            try:
                out.extend(_legacy_entries(data, name[: -len(".json")]))
            except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
                log.warning("Ignoring unreadable schema file %s: %s", self.uri_of(p), exc)
        return out

    def load_schema(self, record_type: str) -> pa.Schema | None:
        """The published schema of a record type: one column per store file, in publication order.

        Schema files of earlier versions (one per writer) count after every column file, named by
        this version's rule (:func:`_name_legacy`).
        """
        columns = self._column_entries(record_type)
        legacy = self._legacy_files(record_type)
        if legacy:
            _name_legacy(columns, legacy)
        if not columns:
            return None
        ordered = sorted(columns.values(), key=lambda e: (e.first_seen, e.field.name))
        merged = pa.schema([e.field for e in ordered])
        self._published[record_type] = merged
        return merged

    def save_schema(self, record_type: str, schema: pa.Schema) -> None:
        """Publish the columns of ``schema`` the lake does not publish yet (published ones never change)."""
        published = self.load_schema(record_type)
        types = {} if published is None else dict(zip(published.names, published.types, strict=True))
        new = [f for f in schema if f.name not in types and not pa.types.is_null(f.type)]
        if new:
            self._publish(record_type, new, types)

    def _publish(
        self, record_type: str, fields: list[pa.Field], published: Mapping[str, pa.DataType]
    ) -> None:
        """Offer each of ``fields`` to the store under the name :func:`assign_name` gives it.

        A column file is created only if absent: of writers offering one name at once exactly one
        wins, and the others read its entry back (:meth:`load_schema`) before they write data.
        """
        names = list(published)
        directory = posixpath.join(self._schema_dir(record_type), COLUMNS_DIR)
        for f in fields:
            if is_meta_column(f.name) or variant_tag(f.name) is not None:
                name = f.name  # a variant's name follows its published column's
            else:
                name = assign_name(field_path(f), names)
            names.append(name)
            path = posixpath.join(directory, column_file(name))
            data = _column_to_json(f.with_name(name), self.writer_id, time.time())
            try:
                self._create(path, data)
            except FileExistsError:
                log.debug("Column %s of %r was published by another writer first", name, record_type)
            except Exception as exc:
                uri = self.uri_of(path)
                raise KtExportWriteError(f"Writing schema file {uri} failed: {exc}", destination=uri) from exc

    def _create(self, path: str, data: bytes) -> None:
        """Make ``data`` visible at ``path`` whole, only if nothing is there (FileExistsError if so).

        Local folders: a complete temporary file hard-linked to the name (``link`` fails when the
        name exists). Object stores: one conditional PUT (``mode="create"``: S3 and Azure
        ``If-None-Match: *``, GCS ``ifGenerationMatch=0``).
        """
        if not self.local:
            _refuse_zonal_gcs_bucket(self.fs, path, self._gcs_buckets_checked)
            self.fs.pipe_file(path, data, mode="create")
            return
        directory = posixpath.dirname(path)
        tmp = posixpath.join(directory, f".{posixpath.basename(path)}{_TMP_MARK}{uuid.uuid4().hex}")
        self._put(tmp, data)
        try:
            os.link(tmp, path)
        finally:
            os.unlink(tmp)
        _fsync_dir(directory)

    def _settle(self, record_type: str, table: pa.Table) -> pa.Table:
        """``table`` at the lake's published names and types, its new columns published before any file has them.

        Fast path without I/O when every column is published at the table's type. Otherwise the
        new columns are offered to the store (:meth:`_publish`) and the store is read again: a
        column another writer published first with another type gets this table's misfits as
        variants (:func:`fit_table`), a case twin its twin name, and those are published in turn.
        """
        published = self._published.get(record_type) or self.load_schema(record_type)
        for _ in range(_SETTLE_ROUNDS):
            types = {} if published is None else dict(zip(published.names, published.types, strict=True))
            if needs_fit(table.schema, types):
                table = fit_table(table, types)
            new = [f for f in table.schema if f.name not in types]
            if not new:
                return table
            self._publish(record_type, new, types)
            published = self.load_schema(record_type)
        # Each round only adds twins or variants: what stays unpublished is a name whose column
        # file exists but cannot be read.
        store = self.uri_of(posixpath.join(self._schema_dir(record_type), COLUMNS_DIR))
        raise KtExportWriteError(
            f"Could not publish the columns {[f.name for f in new]} of record type {record_type!r}: "
            f"their column files in {store} exist but cannot be read (see the warnings above). "
            "Remove the damaged files (a writer publishes them again); nothing was written.",
            destination=store,
        )

    # -- quarantine and housekeeping ---------------------------------------------------------------

    def quarantine(self, body: bytes, *, reason: str, batch_id: str | None) -> str:
        """Store an undecodable body once: ``_quarantine/<digest>.body`` plus a ``.json`` sidecar.

        ``digest`` is :func:`~airflow_provider_ktexport.protocol.sighting_digest`: the body's
        SHA-256 with its envelope id blanked, so a redelivery under a new id is the same body,
        stored once (the first delivery's copy and id are kept). Every call also counts a
        sighting in ``<digest>.seen`` (see :meth:`quarantine_sightings`). Pass the body with the
        API key already redacted.

        :return: the URI of the stored body
        """
        digest = sighting_digest(body)
        body_path = self._join(QUARANTINE_DIR, f"{digest}.body")
        meta_path = self._join(QUARANTINE_DIR, f"{digest}.json")
        uri = self.uri_of(body_path)
        try:
            if not self.fs.exists(body_path):
                self._put(body_path, bytes(body))
            now = datetime.now(UTC).isoformat()
            if not self.fs.exists(meta_path):
                meta = {
                    "reason": reason,
                    "batch_id": batch_id,
                    "first_seen": now,
                    "size": len(body),
                    "sha256": digest,
                }
                self._put(meta_path, json.dumps(meta, indent=1).encode("utf-8"))
            # Read-modify-write: two writers racing lose a count at worst, which only delays
            # an opt-in acknowledgement by one more redelivery.
            seen = {"count": self._sightings(digest) + 1, "last_seen": now, "last_reason": reason}
            self._put(self._join(QUARANTINE_DIR, f"{digest}.seen"), json.dumps(seen).encode("utf-8"))
        except Exception as exc:
            raise _quarantine_failed(uri, exc) from exc
        return uri

    def quarantine_sightings(self, body: bytes) -> int:
        """How many times :meth:`quarantine` stored this body (under any batch id), over all runs
        and writers."""
        return self._sightings(sighting_digest(body))

    def quarantine_kept(self, body: bytes) -> bool:
        """Whether the stored copy of ``body``, read back, is this body (its id aside): what an
        acknowledgement of a quarantined batch rests on, as a flush's rest on its files read back.

        A copy that is missing or reads back as another body is stored again, and False is
        returned: that delivery is not acknowledged, a later one can be.
        """
        digest = sighting_digest(body)
        body_path = self._join(QUARANTINE_DIR, f"{digest}.body")
        try:
            if sighting_digest(self.fs.cat_file(body_path)) == digest:
                return True
        except FileNotFoundError:
            pass
        log.warning("The quarantined copy %s is missing or damaged: storing it again", self.uri_of(body_path))
        try:
            self._put(body_path, bytes(body))
        except Exception as exc:
            raise _quarantine_failed(self.uri_of(body_path), exc) from exc
        return False

    def _sightings(self, digest: str) -> int:
        try:
            return int(json.loads(self.fs.cat_file(self._join(QUARANTINE_DIR, f"{digest}.seen")))["count"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError):  # a damaged counter counts as one sighting
            return 1

    def cleanup_temp(self, older_than_seconds: float = 3600) -> int:
        """Remove temporary files left by crashed writes (local filesystems only); returns how many."""
        if not self.local or not os.path.isdir(self.root):
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and _TMP_MARK in name:
                    full = os.path.join(directory, name)
                    try:
                        if os.stat(full).st_mtime < cutoff:
                            os.unlink(full)
                            removed += 1
                    except FileNotFoundError:
                        continue
        if removed:
            log.info("Removed %d leftover temporary files under %s", removed, self.root)
        return removed


#: Store answers that mean the destination itself is wrong, with what to do about each.
_MISCONFIGURED: tuple[tuple[type[BaseException], str], ...] = (
    (
        FileNotFoundError,
        "the bucket or container does not exist: create it, or correct its name in the destination",
    ),
    (
        PermissionError,
        "these credentials may not write, read and delete there: grant that, or choose another destination",
    ),
    (NotADirectoryError, "part of the path is a regular file, not a folder: choose a folder"),
    (FileExistsError, "the path is a regular file, not a folder: choose a folder"),
)


def _probe_failed(uri: str, exc: BaseException) -> KtExportError:
    """What a failed probe of the lake at ``uri`` means: a configuration error when the store said
    the destination is wrong, else an outage (connection refused, timeout) that a retry may outlive."""
    if isinstance(exc, KtExportWriteError):  # the writer's own refusal (a zonal GCS bucket): a setting
        return KtExportConfigError(f"{exc} Nothing was leased.")
    cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    fix = next((text for kind, text in _MISCONFIGURED if isinstance(exc, kind)), None)
    if fix is None and isinstance(exc, OSError) and exc.errno == errno.EROFS:
        fix = "the filesystem is read-only: choose a writable destination"
    if fix is not None:
        return KtExportConfigError(
            f"The lake {uri} does not take files ({cause}); {fix}. Nothing was leased."
        )
    return KtExportWriteError(
        f"Could not prove the lake {uri} writable ({cause}); nothing was leased, and a later run can "
        "retry once the store answers.",
        destination=uri,
    )


def _quarantine_failed(uri: str, exc: Exception) -> KtExportWriteError:
    return KtExportWriteError(f"Quarantining a body to {uri} failed: {exc}", destination=uri)


_READER_NAMES = ("read_lake", "read_lake_pandas", "read_lake_table")


def __getattr__(name: str) -> Any:
    # The reader lives in .reader (which imports LakeWriter); its functions stay importable from
    # here, where callers have always found them, without a circular import at load time.
    if name in _READER_NAMES:
        from airflow_provider_ktexport.lake import reader

        return getattr(reader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
