"""What a drain run did: its counters, the files and commits it landed, and the XCom summary.

Plain Python, no Airflow. The operator turns :meth:`DrainResult.summary` into XCom and the
Asset event's extra, and :attr:`DrainResult.datasets` into lineage (never XCom).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from airflow_provider_ktexport.lake.sinks import Landed

__all__ = ["MAX_SUMMARY_FILES", "DatasetStats", "DrainResult"]

#: Entries of each list kept in a run's XCom summary (the Asset event's extra keeps as many).
MAX_SUMMARY_FILES = 500


@dataclass
class DatasetStats:
    """What a run landed in one dataset (a record type's folder, or a table), for lineage."""

    record_type: str
    location: str
    rejected: bool = False
    rows: int = 0
    bytes: int = 0
    files: int = 0
    #: The columns of what landed (the union over the run's files); never in XCom.
    schema: Any = None


@dataclass
class DrainResult:
    """What a run did; ``summary()`` is the small dict that goes to XCom."""

    records: int = 0
    batches: int = 0
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    acked: int = 0
    ack_failed: int = 0
    lease_expired: int = 0
    #: Records dropped because a flush in doubt (not all acknowledged) had already landed them.
    deduped: int = 0
    rejected: int = 0
    rejected_files: list[str] = field(default_factory=list)
    #: Table commits (Iceberg): table, snapshot id, rows, per commit.
    landed: list[dict[str, Any]] = field(default_factory=list)
    #: Rows landed per record type (rejected records not counted).
    rows_by_type: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    flushes: int = 0
    duration_s: float = 0.0
    stopped: str = ""
    oldest_record_age_s: float | None = None
    max_ack_lease_age_s: float | None = None
    #: Times the flush limits were halved after leases ran out (see pace.FlushPace.shrink).
    flush_shrinks: int = 0
    #: Batches that could not land within their lease even alone (written, not acknowledged).
    wide_batches: int = 0
    #: Per dataset URI (folder or table): rows, bytes, files and schema landed. Kept off XCom.
    datasets: dict[str, DatasetStats] = field(default_factory=dict)

    def summary(self, max_files: int | None = MAX_SUMMARY_FILES) -> dict[str, Any]:
        """The small dict for XCom: counts, file URIs and timings (no schemas, no per-dataset facts).

        ``files``, ``rejected_files`` and ``landed`` list at most ``max_files`` entries each (None:
        all of them): a long drain on a wide backfill writes thousands of files, and XCom is for
        metadata. ``file_count``, ``rejected_file_count`` and ``commit_count`` stay exact, and
        ``files_truncated`` says whether a list was cut (as in the Asset event's extra).
        """
        out = {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name != "datasets"}
        out["duration_s"] = round(self.duration_s, 3)
        truncated = False
        for name, count in (
            ("files", "file_count"),
            ("rejected_files", "rejected_file_count"),
            ("landed", "commit_count"),
        ):
            out[count] = len(out[name])
            if max_files is not None and len(out[name]) > max_files:
                out[name] = out[name][:max_files]
                truncated = True
        out["files_truncated"] = truncated
        return out

    def add_pieces(self, pieces: Sequence[Landed]) -> None:
        """Count what one landing wrote: file URIs, commits, bytes, rows per record type, and the
        per-dataset facts (:meth:`add_landed`)."""
        self.files.extend(piece.uri for piece in pieces if not piece.rejected)
        self.rejected_files.extend(piece.uri for piece in pieces if piece.rejected)
        self.landed.extend(piece.extra for piece in pieces if piece.extra)
        for piece in pieces:
            if not piece.rejected:
                self.rows_by_type[piece.record_type] = (
                    self.rows_by_type.get(piece.record_type, 0) + piece.rows
                )
        self.bytes += sum(piece.bytes for piece in pieces)
        self.add_landed(pieces)

    def add_landed(self, pieces: Sequence[Landed]) -> None:
        """Count landed pieces per dataset (their rows, bytes, files and columns)."""
        for piece in pieces:
            key = piece.dataset or piece.uri
            stats = self.datasets.get(key)
            if stats is None:
                stats = self.datasets[key] = DatasetStats(
                    piece.record_type, piece.location or key, rejected=piece.rejected
                )
            stats.rows += piece.rows
            stats.bytes += piece.bytes
            stats.files += piece.files
            stats.schema = _union_schema(stats.schema, piece.schema)

    def note_lag(self, age: float) -> None:
        """Keep the run's largest landed-record age (``oldest_record_age_s``)."""
        prev = self.oldest_record_age_s
        self.oldest_record_age_s = age if prev is None else max(prev, age)

    def note_ack_lease_age(self, age: float) -> None:
        """Keep the oldest lease's largest age at acknowledgement (``max_ack_lease_age_s``)."""
        self.max_ack_lease_age_s = max(self.max_ack_lease_age_s or 0.0, age)


def _plain(value: Any) -> Any:
    # asdict()'s deep copy of lists and dicts, for the fields summary() keeps.
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _union_schema(known: Any, new: Any) -> Any:
    """Columns of both schemas by name, the first type of each kept (a column never changes type)."""
    if new is None:
        return known
    if known is None:
        return new
    import pyarrow as pa

    names = set(known.names)
    extra = [f for f in new if f.name not in names]
    return pa.schema(list(known) + extra) if extra else known
