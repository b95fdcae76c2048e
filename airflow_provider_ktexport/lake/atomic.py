"""Files that appear whole or not at all, on any fsspec filesystem (docs/architecture.md section 4).

The lake's only way to make bytes visible; data files, schema store files, quarantined bodies and
the destination probe all go through :class:`AtomicStore`:

- local filesystems: bytes go to a dot-named temporary file in the target directory (no
  ``*.parquet`` glob matches it), are fsynced, then renamed (atomic on POSIX);
- object stores: one ``pipe()`` of bytes built in memory (a single request; for big bodies s3fs,
  gcsfs and adlfs upload in chunks committed only at the end: multipart, resumable, block list).
  GCS zonal buckets are refused (see :func:`_refuse_zonal_gcs_bucket`). Never ``fs.open(path, "wb")``:
  its ``close()`` runs even when the body raised and commits a truncated object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import time
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.exceptions import KtExportWriteError

__all__ = ["TMP_MARK", "AtomicStore", "is_local"]

log = logging.getLogger(__name__)

#: Marks a temporary file (``.<name>.tmp-<random>``) a crashed write may leave behind.
TMP_MARK = ".tmp-"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for a local filesystem (where a rename is atomic and the footer is cheap to read back)."""
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


def _fsync_dir(directory: str) -> None:
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass


def _tmp_name(path: str) -> str:
    return posixpath.join(posixpath.dirname(path), f".{posixpath.basename(path)}{TMP_MARK}{uuid.uuid4().hex}")


def _write_fsynced(tmp: str, data: bytes) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicStore:
    """Atomic puts and create-if-absent on one filesystem; one per writer (it remembers the GCS
    buckets it has checked).

    :param fs: the filesystem
    """

    def __init__(self, fs: fsspec.AbstractFileSystem) -> None:
        self.fs = fs
        self.local = is_local(fs)
        # GCS buckets already checked not to be zonal (see _refuse_zonal_gcs_bucket).
        self._gcs_buckets_checked: set[str] = set()

    def put(self, path: str, data: bytes) -> None:
        """Make ``data`` visible at ``path`` whole or not at all."""
        if not self.local:
            _refuse_zonal_gcs_bucket(self.fs, path, self._gcs_buckets_checked)
            self.fs.pipe(path, data)
            return
        directory = posixpath.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = _tmp_name(path)
        try:
            _write_fsynced(tmp, data)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(directory)  # make the rename itself durable

    def create(self, path: str, data: bytes, *, sync_folder: bool = True) -> None:
        """Make ``data`` visible at ``path`` whole, only if nothing is there (FileExistsError if so).

        Local folders: a complete temporary file hard-linked to the name (``link`` fails when the
        name exists). Object stores: one conditional PUT (``mode="create"``: S3 and Azure
        ``If-None-Match: *``, GCS ``ifGenerationMatch=0``).

        :param sync_folder: fsync the local folder, so the new name survives a crash; False for a
            caller that creates several files in one folder and calls :meth:`sync_folder` once
        """
        if not self.local:
            _refuse_zonal_gcs_bucket(self.fs, path, self._gcs_buckets_checked)
            self.fs.pipe_file(path, data, mode="create")
            return
        # The temporary name needs no rename or folder fsync of its own (it was a put() once): only
        # the link is made durable. A new record type publishes ~40 column files this way.
        directory = posixpath.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = _tmp_name(path)
        try:
            _write_fsynced(tmp, data)
            os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if sync_folder:
            _fsync_dir(directory)

    def sync_folder(self, directory: str) -> None:
        """Make the names created in a local ``directory`` durable (nothing to do on an object store)."""
        if self.local:
            _fsync_dir(directory)

    def remove_quietly(self, path: str) -> None:
        """Remove ``path`` if it is there; a failure is logged, never raised (cleanup after an error
        must not mask it)."""
        try:
            self.fs.rm_file(path)
        except (OSError, FileNotFoundError):
            pass
        except Exception:  # noqa: BLE001 - cleanup must not mask the original error
            log.warning("Could not remove %s after a failed write", path)

    def cleanup_temp(self, root: str, older_than_seconds: float) -> int:
        """Remove temporary files under ``root`` left by crashed writes (local filesystems only)."""
        if not self.local or not os.path.isdir(root):
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for directory, _dirs, files in os.walk(root):
            for name in files:
                if name.startswith(".") and TMP_MARK in name:
                    full = os.path.join(directory, name)
                    try:
                        if os.stat(full).st_mtime < cutoff:
                            os.unlink(full)
                            removed += 1
                    except FileNotFoundError:
                        continue
        return removed
