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

The schema store (``_schema/<type>/<writer id>.json``) publishes each column's type the first
time any writer writes it; from then on the type is fixed (docs/schema-mapping.md). Each writer
writes only its own file, so no write races another; the merge picks for every column the entry
published first (then the smaller writer id), which every reader computes alike.
"""

from __future__ import annotations

import base64
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

from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.layout import (
    QUARANTINE_DIR,
    is_safe_folder_name,
    safe_folder_name,
    schema_folder,
)
from airflow_provider_ktexport.lake.variants import (
    current_name,
    fit_table,
    needs_fit,
)
from airflow_provider_ktexport.protocol import sighting_digest

__all__ = ["LakeWriter", "WrittenFile"]

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


#: Store format 2: types are first-published and fixed. Format-1 files (earlier versions) held
#: widened types and old spellings; they still count, after every format-2 entry.
_STORE_FORMAT = 2


@dataclass(frozen=True)
class _Entry:
    """One column as one writer's schema file publishes it."""

    field: pa.Field
    first_seen: float
    writer_id: str
    format: int

    def rank(self) -> tuple[int, float, str]:
        return (-self.format, self.first_seen, self.writer_id)


def _schema_to_json(entries: Mapping[str, _Entry], record_type: str, writer_id: str) -> bytes:
    schema = pa.schema([e.field for e in entries.values()])
    doc = {
        "format": _STORE_FORMAT,
        "record_type": record_type,
        "writer_id": writer_id,
        # Readable summary for humans; the serialized schema (with field metadata) is authoritative.
        "fields": {f.name: str(f.type) for f in schema},
        "first_seen": {name: e.first_seen for name, e in entries.items()},
        "arrow_schema": base64.b64encode(schema.serialize().to_pybytes()).decode("ascii"),
    }
    return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")


def _entries_from_json(data: bytes, default_writer: str) -> list[_Entry]:
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
        out.append(_Entry(f.with_name(current_name(f)), seen, writer_id, fmt))
    return out


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
        # This writer's own schema file per record type: the columns it published first.
        self._own: dict[str, dict[str, _Entry]] = {}
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
        try:  # make the rename itself durable
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
            pass

    def _remove_quietly(self, path: str) -> None:
        try:
            self.fs.rm_file(path)
        except (OSError, FileNotFoundError):
            pass
        except Exception:  # noqa: BLE001 - cleanup must not mask the original error
            log.warning("Could not remove %s after a failed write", path)

    # -- data files --------------------------------------------------------------------------------

    def write(self, table: pa.Table, partition: Mapping[str, str], *, area: str = "") -> WrittenFile:
        """Write ``table`` as one new Parquet file in ``partition``, atomically, then verify it.

        The record type's schema is published first (when ``partition`` names a record type), so
        no reader ever meets a file at types the schema store does not know. Safe to call from
        several threads at once (the drain writes a flush's partitions concurrently).

        :param area: a folder under the root for tables apart from the data (``_rejected``); their
            schema is fixed, so nothing is published for them
        :raises KtExportWriteError: writing or verification failed; names the destination and cause
        """
        directory = self.partition_dir(partition, area)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = posixpath.join(directory, f"part-{stamp}-{uuid.uuid4().hex}.parquet")
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

    def load_schema(self, record_type: str) -> pa.Schema | None:
        """The published schema of a record type: every writer's schema file merged, first entry wins.

        Columns are in the order they were first published; names are this version's spelling
        (entries of earlier versions are re-keyed by their key path).
        """
        directory = self._schema_dir(record_type)
        self.fs.invalidate_cache(directory)
        try:
            paths = sorted(p for p in self.fs.ls(directory, detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            paths = []
        except Exception as exc:
            uri = self.uri_of(directory)
            raise KtExportWriteError(
                f"Reading the schema store {uri} failed: {type(exc).__name__}: {exc}", destination=uri
            ) from exc
        best: dict[str, _Entry] = dict(self._own.get(record_type, {}))
        for p in paths:
            name = posixpath.basename(p)
            if name.startswith("."):
                continue
            try:
                entries = _entries_from_json(self.fs.cat_file(p), name[: -len(".json")])
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
                # One unreadable file must not stop every writer; compaction still fits files to
                # whatever the readable files publish.
                log.warning("Ignoring unreadable schema file %s: %s", self.uri_of(p), exc)
                continue
            for e in entries:
                have = best.get(e.field.name)
                if have is None or e.rank() < have.rank():
                    best[e.field.name] = e
        if not best:
            return None
        ordered = sorted(best.values(), key=lambda e: (e.first_seen, e.writer_id, e.field.name))
        merged = pa.schema([e.field for e in ordered])
        self._published[record_type] = merged
        return merged

    def save_schema(self, record_type: str, schema: pa.Schema) -> None:
        """Publish the columns of ``schema`` the lake does not publish yet (published ones never change)."""
        published = self.load_schema(record_type)
        known = set() if published is None else set(published.names)
        new = [f for f in schema if f.name not in known and not pa.types.is_null(f.type)]
        if new:
            self._add_own(record_type, new)

    def _add_own(self, record_type: str, fields: list[pa.Field]) -> None:
        own = dict(self._own.get(record_type, {}))
        now = time.time()
        for f in fields:
            own[f.name] = _Entry(f, now, self.writer_id, _STORE_FORMAT)
        path = posixpath.join(self._schema_dir(record_type), f"{self.writer_id}.json")
        try:
            self._put(path, _schema_to_json(own, record_type, self.writer_id))
        except Exception as exc:
            uri = self.uri_of(path)
            raise KtExportWriteError(f"Writing schema file {uri} failed: {exc}", destination=uri) from exc
        self._own[record_type] = own

    def _settle(self, record_type: str, table: pa.Table) -> pa.Table:
        """``table`` at the lake's published types, its new columns published before any file has them.

        Fast path without I/O when every column is published at the table's type. Otherwise the
        new columns go into this writer's schema file and the store is read again: if another
        writer published one of them first with another type, its values move to variants
        (:func:`fit_table`) and those are published in turn.
        """
        published = self._published.get(record_type) or self.load_schema(record_type)
        for _ in range(4):
            types = {} if published is None else dict(zip(published.names, published.types, strict=True))
            if needs_fit(table.schema, types):
                table = fit_table(table, types)
            new = [f for f in table.schema if f.name not in types]
            if not new:
                return table
            self._add_own(record_type, new)
            published = self.load_schema(record_type)
        raise KtExportWriteError(  # pragma: no cover - each round only adds variants, whose types are fixed
            f"Could not settle the schema of {record_type!r} under {self.root}: writers keep publishing "
            "conflicting types; nothing was written.",
            destination=self.root,
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
