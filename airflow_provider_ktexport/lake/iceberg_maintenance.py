"""Maintenance of the drain's Iceberg tables: compact small files, expire snapshots, remove orphans.

Plain Python over pyiceberg, no Airflow (``KtExportIcebergMaintenanceOperator`` runs it). Each
flush adds a snapshot and small data files to every table it touches; pyiceberg offers snapshot
expiry that deletes *no file* and no orphan-file removal, so this module does the three jobs a
table needs, safely while drains keep appending:

1. **Compaction.** Each partition with more than one data file, some smaller than the target,
   is read and written back as files near the target size through ``overwrite`` with the
   partition's filter. pyiceberg validates it with serializable isolation: a drain that appended
   to that partition meanwhile makes the commit fail (never lose or double a row), and the
   partition is retried on fresh metadata, then skipped until the next run.
2. **Expiry.** Snapshots older than the threshold (never a branch head) are removed from the
   metadata, then the files only they referenced (data files, manifests, manifest lists) are
   deleted: what no remaining snapshot reads, judged on the table as reloaded *after* the
   expiry's commit, so a drain's concurrent commit cannot lose a file.
3. **Orphans.** Files under the table's location that no snapshot or metadata log references and
   that are older than the threshold (younger ones may belong to a commit in flight) are deleted:
   data files of commits that never happened, metadata files pyiceberg did not clean up.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_ktexport.lake.iceberg_catalog import (
    pyiceberg_modules,
    wants_version_hint,
    write_version_hint,
)
from airflow_provider_ktexport.lake.iceberg_ledger import kept_for_redelivery

__all__ = ["TableMaintenance", "maintain_namespace", "maintain_table"]

log = logging.getLogger(__name__)

#: The defaults of a maintenance run (the operator's too): snapshots older than a day expire,
#: small files are compacted towards 128 MiB, unreferenced files older than three days go.
DEFAULT_EXPIRE_OLDER_THAN = timedelta(days=1)
DEFAULT_TARGET_FILE_BYTES = 128 * 2**20
DEFAULT_ORPHANS_OLDER_THAN = timedelta(days=3)

#: A partition is compacted when it has more than one file and one is below this share of the target.
_SMALL_SHARE = 0.75
#: Commit attempts per partition before it is left for the next run.
_ATTEMPTS = 3
_TARGET_PROPERTY = "write.target-file-size-bytes"
_EPOCH = date(1970, 1, 1)


@dataclass
class TableMaintenance:
    """What maintenance did to one table (XCom and logs)."""

    table: str
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    partitions_compacted: int = 0
    partitions_skipped: int = 0
    snapshots_expired: int = 0
    expired_files_deleted: int = 0
    orphans_removed: int = 0
    orphan_bytes: int = 0
    #: Rows the table holds after maintenance (what a reader of the current snapshot counts).
    rows_after: int = 0
    #: The table's location and columns (a pyarrow.Schema) after maintenance, for OpenLineage;
    #: kept out of XCom (a schema can be large).
    location: str = dataclasses.field(default="", metadata={"xcom": False})
    schema: Any = dataclasses.field(default=None, repr=False, metadata={"xcom": False})

    def as_dict(self) -> dict[str, Any]:
        """The figures for XCom and logs (no location or schema)."""
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("xcom", True)
        }


def maintain_namespace(
    catalog: Any,
    namespace: str,
    *,
    expire_older_than: timedelta = DEFAULT_EXPIRE_OLDER_THAN,
    target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES,
    orphans_older_than: timedelta = DEFAULT_ORPHANS_OLDER_THAN,
    now: datetime | None = None,
    on_table: Callable[[TableMaintenance], None] | None = None,
) -> list[TableMaintenance]:
    """Maintain every table of ``namespace``; see :func:`maintain_table`. A namespace no drain has
    created yet has nothing to maintain. ``on_table`` gets each table's report as soon as it is
    done, so a caller can report the tables maintained before a later one fails."""
    try:
        identifiers = sorted(catalog.list_tables(namespace))
    except pyiceberg_modules().exceptions.NoSuchNamespaceError:
        log.info("Iceberg namespace %s does not exist yet: nothing to maintain", namespace)
        return []
    reports = []
    for identifier in identifiers:
        report = maintain_table(
            catalog,
            ".".join(identifier),
            expire_older_than=expire_older_than,
            target_file_bytes=target_file_bytes,
            orphans_older_than=orphans_older_than,
            now=now,
        )
        reports.append(report)
        if on_table is not None:
            on_table(report)
    return reports


def maintain_table(
    catalog: Any,
    identifier: str,
    *,
    expire_older_than: timedelta = DEFAULT_EXPIRE_OLDER_THAN,
    target_file_bytes: int = DEFAULT_TARGET_FILE_BYTES,
    orphans_older_than: timedelta = DEFAULT_ORPHANS_OLDER_THAN,
    now: datetime | None = None,
) -> TableMaintenance:
    """Compact, then expire, then remove orphans, in that order: the files compaction replaces go
    with the snapshots that read them, once those are older than ``expire_older_than``."""
    report = TableMaintenance(identifier)
    report.files_before, report.bytes_before = _live_totals(catalog.load_table(identifier))
    report.partitions_compacted, report.partitions_skipped = _compact(catalog, identifier, target_file_bytes)
    # Thresholds count from each step's start (unless ``now`` is given): a zero age expires the
    # snapshots compaction just replaced.
    report.snapshots_expired, report.expired_files_deleted = _expire(
        catalog, identifier, (now or datetime.now(UTC)) - expire_older_than
    )
    report.orphans_removed, report.orphan_bytes = _remove_orphans(
        catalog.load_table(identifier), (now or datetime.now(UTC)) - orphans_older_than
    )
    table = catalog.load_table(identifier)
    report.files_after, report.bytes_after = _live_totals(table)
    report.rows_after = table.scan().count() if table.current_snapshot() else 0
    report.location, report.schema = table.location(), table.schema().as_arrow()
    if wants_version_hint(catalog):
        write_version_hint(table)  # compaction and expiry made a new metadata.json
    log.info(
        "Maintained %s: data files %d -> %d (%d -> %d bytes), %d partitions compacted, %d skipped on "
        "conflict, %d snapshots expired, %d files of expired snapshots deleted, %d orphans removed",
        identifier,
        report.files_before,
        report.files_after,
        report.bytes_before,
        report.bytes_after,
        report.partitions_compacted,
        report.partitions_skipped,
        report.snapshots_expired,
        report.expired_files_deleted,
        report.orphans_removed,
    )
    return report


# -- live files --------------------------------------------------------------------------------------


def _live_files(table: Any) -> list[Any]:
    """The data files of the current snapshot."""
    if table.current_snapshot() is None:
        return []
    return [task.file for task in table.scan().plan_files()]


def _live_totals(table: Any) -> tuple[int, int]:
    files = _live_files(table)
    return len(files), sum(f.file_size_in_bytes for f in files)


def _by_partition(files: Iterable[Any]) -> dict[tuple[int, tuple[Any, ...]], list[Any]]:
    groups: dict[tuple[int, tuple[Any, ...]], list[Any]] = {}
    for f in files:
        groups.setdefault((f.spec_id, tuple(f.partition)), []).append(f)
    return groups


def _needs_compaction(files: list[Any], target: int) -> bool:
    return len(files) > 1 and any(f.file_size_in_bytes < target * _SMALL_SHARE for f in files)


# -- compaction --------------------------------------------------------------------------------------


def _partition_filter(table: Any, spec_id: int, values: tuple[Any, ...]) -> Any | None:
    """The row filter selecting exactly one partition, or ``None`` when the spec is not identity-only
    (a filter on the source column would then select more or less than the partition)."""
    from pyiceberg.transforms import IdentityTransform
    from pyiceberg.types import DateType

    expr = pyiceberg_modules().expressions
    spec = table.specs()[spec_id]
    if spec_id != table.spec().spec_id:
        return None  # files of an older spec: leave them to an engine that can rewrite across specs
    predicates: list[Any] = []
    for field, value in zip(spec.fields, values, strict=True):
        if not isinstance(field.transform, IdentityTransform):
            return None
        column = table.schema().find_field(field.source_id)
        if value is None:
            predicates.append(expr.IsNull(column.name))
        elif isinstance(column.field_type, DateType) and isinstance(value, int):
            predicates.append(expr.EqualTo(column.name, (_EPOCH + timedelta(days=value)).isoformat()))
        else:
            predicates.append(expr.EqualTo(column.name, value))
    if not predicates:
        return expr.AlwaysTrue()
    return predicates[0] if len(predicates) == 1 else expr.And(*predicates)


def _compact(catalog: Any, identifier: str, target: int) -> tuple[int, int]:
    """Compact every partition that needs it; returns (compacted, skipped on conflict)."""
    table = catalog.load_table(identifier)
    compacted = skipped = 0
    for (spec_id, values), files in _by_partition(_live_files(table)).items():
        if not _needs_compaction(files, target):
            continue
        row_filter = _partition_filter(table, spec_id, values)
        if row_filter is None:
            continue
        outcome = _compact_partition(catalog, identifier, row_filter, target)
        compacted += outcome
        skipped += not outcome
    return compacted, skipped


def _compact_partition(catalog: Any, identifier: str, row_filter: Any, target: int) -> bool:
    """Rewrite one partition's files as one (or a few, near ``target``) through a serializable
    overwrite; retried on fresh metadata when a drain appended to it meanwhile."""
    exceptions = pyiceberg_modules().exceptions
    for attempt in range(1, _ATTEMPTS + 1):
        table = catalog.load_table(identifier)
        files = [task.file for task in table.scan(row_filter=row_filter).plan_files()]
        if not _needs_compaction(files, target):
            return True  # another run compacted it meanwhile
        rows = table.scan(row_filter=row_filter).to_arrow()
        try:
            _overwrite(table, rows, row_filter, _in_memory_target(rows, files, target))
            return True
        except _conflicts(exceptions) as exc:
            log.info(
                "Compaction of %s where %s conflicted with a concurrent commit (%s), attempt %d of %d",
                identifier,
                row_filter,
                exc,
                attempt,
                _ATTEMPTS,
            )
    log.warning(
        "Left %s where %s for the next run: every attempt met a concurrent commit", identifier, row_filter
    )
    return False


def _conflicts(exceptions: Any) -> tuple[type[BaseException], ...]:
    """What a commit that met a concurrent one raises: pyiceberg 0.12 validates serializable
    isolation (``ValidationException``); older releases only refuse a moved head."""
    return tuple(
        e for e in (exceptions.CommitFailedException, getattr(exceptions, "ValidationException", None)) if e
    )


def _in_memory_target(rows: Any, files: list[Any], target: int) -> int:
    """pyiceberg splits written files by their size *in memory*; scale the on-disk target by the
    partition's own ratio so the files land near ``target`` bytes on disk."""
    on_disk = sum(f.file_size_in_bytes for f in files) or 1
    return max(1, int(target * max(1.0, rows.nbytes / on_disk)))


def _overwrite(table: Any, rows: Any, row_filter: Any, split_at: int) -> None:
    """Replace the partition's rows in one commit; the file-size property is set only inside it."""
    previous = table.properties.get(_TARGET_PROPERTY)
    with table.transaction() as tx:
        tx.set_properties({_TARGET_PROPERTY: str(split_at)})
        tx.overwrite(rows, overwrite_filter=row_filter, snapshot_properties={"ktexport.operation": "compact"})
        if previous is None:
            tx.remove_properties(_TARGET_PROPERTY)
        else:
            tx.set_properties({_TARGET_PROPERTY: previous})


# -- expiry --------------------------------------------------------------------------------------


def _expire(catalog: Any, identifier: str, cutoff: datetime) -> tuple[int, int]:
    """Expire snapshots older than ``cutoff`` (never a branch or tag head), then delete the files
    only they referenced; returns (snapshots expired, files deleted)."""
    exceptions = pyiceberg_modules().exceptions
    for attempt in range(1, _ATTEMPTS + 1):
        table = catalog.load_table(identifier)
        # Branch and tag heads, and the snapshots of flushes still in doubt (exactly once as landed).
        protected = {ref.snapshot_id for ref in table.metadata.refs.values()} | kept_for_redelivery(table)
        cutoff_ms = int(cutoff.timestamp() * 1000)
        doomed = [
            s for s in table.snapshots() if s.timestamp_ms < cutoff_ms and s.snapshot_id not in protected
        ]
        if not doomed:
            return 0, 0
        candidates = _snapshot_files(table, doomed)
        try:
            table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in doomed]).commit()
            break
        except exceptions.CommitFailedException as exc:
            log.info("Expiring snapshots of %s conflicted (%s), attempt %d", identifier, exc, attempt)
    else:
        log.warning(
            "Left the snapshots of %s for the next run: every attempt met a concurrent commit", identifier
        )
        return 0, 0
    # Judged on the table as it is now, concurrent commits included: their files are either new
    # or read by a snapshot that remains.
    fresh = catalog.load_table(identifier)
    needed = _snapshot_files(fresh, fresh.snapshots())
    doomed_files = sorted(candidates - needed)
    _delete(fresh.io, doomed_files)
    return len(doomed), len(doomed_files)


def _snapshot_files(table: Any, snapshots: Iterable[Any]) -> set[str]:
    """Manifest lists, manifests and the data files a reader of the snapshots reads. A manifest's
    tombstones (files a compaction removed) are not counted: no snapshot reads those files."""
    found: set[str] = set()
    seen: set[str] = set()
    for snapshot in snapshots:
        found.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            found.add(manifest.manifest_path)
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
                found.add(entry.data_file.file_path)
    return found


def _delete(io: Any, paths: Iterable[str]) -> None:
    for path in paths:
        try:
            io.delete(path)
        except FileNotFoundError:
            pass  # already gone (a run before this one, or another maintenance job)


# -- orphans -------------------------------------------------------------------------------------


def _remove_orphans(table: Any, cutoff: datetime) -> tuple[int, int]:
    """Delete files under the table's location that nothing references and that are older than
    ``cutoff``; returns (files, bytes)."""
    referenced = {_key(p) for p in _snapshot_files(table, table.snapshots())}
    referenced.add(_key(table.metadata_location))
    referenced.update(_key(entry.metadata_file) for entry in table.metadata.metadata_log)
    referenced.update(_key(s.statistics_path) for s in table.metadata.statistics)
    removed = size = 0
    for path, nbytes, modified in _list_files(table.io, table.location()):
        if _key(path) in referenced or path.endswith("version-hint.text") or modified >= cutoff:
            continue
        _delete(table.io, [path])
        removed += 1
        size += nbytes
    return removed, size


def _key(uri: str) -> str:
    """A location compared by bucket and path only (``file:///a``, ``/a`` and ``s3://b/k`` vs ``b/k``)."""
    parts = urlsplit(uri)
    return f"{parts.netloc}{parts.path}".lstrip("/")


def _list_files(io: Any, location: str) -> Iterator[tuple[str, int, datetime]]:
    """(location, size, modified) of every file under ``location``, through the table's FileIO."""
    parts = urlsplit(location)
    scheme = parts.scheme or "file"
    if hasattr(io, "fs_by_scheme"):  # PyArrowFileIO
        from pyarrow.fs import FileSelector, FileType

        fs = io.fs_by_scheme(scheme, parts.netloc or None)
        root = parts.path if scheme == "file" else f"{parts.netloc}{parts.path}"
        for info in fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True)):
            if info.type == FileType.File:
                yield _uri(scheme, info.path), info.size or 0, _utc(info.mtime)
        return
    fs = io.get_fs(scheme)  # FsspecFileIO
    root = parts.path if scheme == "file" else f"{parts.netloc}{parts.path}"
    for path, detail in fs.find(root, detail=True).items():
        modified = detail.get("mtime") or detail.get("LastModified") or detail.get("last_modified")
        yield _uri(scheme, path), int(detail.get("size") or 0), _utc(modified)


def _uri(scheme: str, path: str) -> str:
    return f"file://{path}" if scheme == "file" else f"{scheme}://{path}"


def _utc(value: Any) -> datetime:
    """A listing's modification time as an aware UTC datetime (epoch seconds or a datetime)."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.now(UTC)  # unknown age: treat as new, never delete it
