"""The flush ledger: what makes a drain *exactly once as landed* (docs/delivery-semantics.md).

A batch whose acknowledgement did not take effect (a kill after the write, a lost or late ack, a
lease that ran out) comes back under a new id and regrouped, so only a record's ``_record_key``
says it is a redelivery. Every flush therefore gets an id and leaves a record of what it wrote
until all its batches are acknowledged; until then the flush is *in doubt*. Before a flush
lands, its rows whose ``_record_key`` a flush in doubt for the same source already landed are
dropped and counted (``deduped``): readers never see a second copy, with no compaction and no
dedupe query.

This module holds what both sinks share (flush ids, the redelivery window, the drop) and the
Parquet lake's ledger: a small manifest per flush under ``_flushes/<source>/``, written *before*
the data files it names and deleted once the flush is settled, so in the normal case the check is
one listing of an empty folder. The Iceberg ledger (snapshot summaries) is in :mod:`.iceberg_ledger`.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from airflow_provider_ktexport.lake.layout import (
    BATCH_ID_COLUMN,
    FLUSH_DIR,
    RECORD_KEY_COLUMN,
    safe_folder_name,
)
from airflow_provider_ktexport.lake.schema import PartitionTable
from airflow_provider_ktexport.lake.writer import part_file_name

if TYPE_CHECKING:
    from airflow_provider_ktexport.lake.sinks import FlushInfo
    from airflow_provider_ktexport.lake.writer import LakeWriter

__all__ = [
    "DEFAULT_REDELIVERY_WINDOW",
    "FlushTally",
    "ParquetLedger",
    "drop_landed",
    "new_flush_id",
    "wall_deadline",
]

log = logging.getLogger(__name__)

#: How long an in-doubt flush is remembered (seconds): a batch left unacknowledged waits for the
#: next run to be redelivered, which can be days away; a redelivery later than this lands twice.
DEFAULT_REDELIVERY_WINDOW = 7 * 24 * 3600.0
_MANIFEST_FORMAT = 1
#: Seconds past a manifest's deadline after which its files are taken as final (its keys cached,
#: the manifest removed if none exist): a writer on a slow store may still be putting a file its
#: flush started before the deadline, and a file that appeared after a reader gave up on it would
#: have no ledger entry left.
FINAL_AFTER_DEADLINE = 600.0
_EMPTY_KEYS = pa.array([], pa.string())


def new_flush_id() -> str:
    """A flush id: sortable by time (UTC), unique across writers (random part)."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:16]}"


def wall_deadline(info: FlushInfo) -> float:
    """The flush's ``land_by`` (monotonic) as wall-clock seconds, the clock other drains share."""
    if info.land_by is None:
        return time.time()
    return time.time() + (info.land_by - time.monotonic())


@dataclass
class FlushTally:
    """What a sink reports back about one flush: rows it dropped as already landed (in doubt).

    Mutable and shared with the sink's writing threads, hence the lock.
    """

    deduped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, rows: int) -> None:
        with self._lock:
            self.deduped += rows


def drop_landed(table: pa.Table, keys: pa.Array) -> tuple[pa.Table, int]:
    """``table`` without the rows whose ``_record_key`` is in ``keys``, and how many were dropped."""
    if not len(keys) or RECORD_KEY_COLUMN not in table.column_names or not table.num_rows:
        return table, 0
    landed = pc.fill_null(pc.is_in(table.column(RECORD_KEY_COLUMN), value_set=keys), False)
    dropped = pc.sum(landed).as_py() or 0
    if not dropped:
        return table, 0
    return table.filter(pc.invert(landed)), dropped


def drop_repeats(
    tables: Sequence[PartitionTable], batch_order: Sequence[str]
) -> tuple[list[PartitionTable], int]:
    """The flush's tables without a record's copies from later batches than its first, and how
    many rows that dropped.

    A drain can hold a batch and, in the same flush, its redelivery: when a GET's answer reached it
    late in the lease, the server redelivered the batch (regrouped, to this drain's next GET) while
    its own clock still counted. Both copies of a record have one ``_record_key`` and always the
    same partition. Copies inside one batch (records the source sent twice with the same content)
    are left alone. Costs one distinct count per table when nothing repeats.
    """
    order = {batch_id: i for i, batch_id in enumerate(batch_order)}
    out, dropped = [], 0
    for part in tables:
        table = part.table
        if RECORD_KEY_COLUMN not in table.column_names or pc.count_distinct(
            table.column(RECORD_KEY_COLUMN)
        ).as_py() == len(table):
            out.append(part)
            continue
        keys = table.column(RECORD_KEY_COLUMN).to_pylist()
        ranks = [order.get(b, 0) for b in table.column(BATCH_ID_COLUMN).to_pylist()]
        first: dict[str, int] = {}
        for key, rank in zip(keys, ranks, strict=True):
            first[key] = min(rank, first.get(key, rank))
        keep = pa.array([first[k] == r for k, r in zip(keys, ranks, strict=True)])
        kept = table.filter(keep)
        dropped += len(table) - len(kept)
        out.append(replace(part, table=kept) if len(kept) != len(table) else part)
    return out, dropped


def unique_keys(parts: Iterable[pa.Array]) -> pa.Array:
    """One array of the distinct keys of ``parts`` (for :func:`drop_landed`)."""
    arrays = [p for p in parts if len(p)]
    if not arrays:
        return _EMPTY_KEYS
    return pc.unique(pa.chunked_array(arrays, pa.string()).combine_chunks())


def read_keys(source: Any, *, filesystem: Any = None) -> pa.Array:
    """The ``_record_key`` column of one Parquet file (only that column is read)."""
    column = pq.read_table(source, columns=[RECORD_KEY_COLUMN], filesystem=filesystem).column(0)
    return column.combine_chunks().cast(pa.string())


@dataclass(frozen=True)
class _Manifest:
    """One flush's ledger entry in the Parquet lake."""

    flush_id: str
    writer_id: str
    source: str
    created: float
    #: Wall-clock time after which the flush writes no more files (its oldest lease's end).
    deadline: float
    #: Data files the flush writes, relative to the lake root.
    files: tuple[str, ...]

    def to_json(self) -> bytes:
        doc = {"format": _MANIFEST_FORMAT, **{k: getattr(self, k) for k in self.__dataclass_fields__}}
        doc["files"] = list(self.files)
        return json.dumps(doc, indent=1, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> _Manifest:
        doc = json.loads(data)
        return cls(
            flush_id=str(doc["flush_id"]),
            writer_id=str(doc["writer_id"]),
            source=str(doc["source"]),
            created=float(doc["created"]),
            deadline=float(doc["deadline"]),
            files=tuple(str(f) for f in doc["files"]),
        )


class ParquetLedger:
    """The Parquet lake's flush ledger: ``_flushes/<source>/<flush id>.json`` per flush in doubt.

    The manifest is written before the data files it names, so a kill at any point leaves either
    no file of the flush or a manifest naming it. It is deleted once every batch of the flush is
    acknowledged (:meth:`settle`), so the normal case lists an empty folder; one left by a crash,
    a lost ack or a lease that ran out stays for ``window_seconds`` and is then removed.

    :param writer: the lake's writer (its filesystem, root, atomic put and writer id)
    """

    def __init__(self, writer: LakeWriter) -> None:
        self.writer = writer
        #: Keys of in-doubt flushes whose deadline has passed: their files can no longer change.
        self._keys: dict[str, pa.Array] = {}

    def _folder(self, source: str) -> str:
        return posixpath.join(self.writer.root, FLUSH_DIR, safe_folder_name(source))

    def _manifest_path(self, source: str, flush_id: str) -> str:
        return posixpath.join(self._folder(source), f"{flush_id}.json")

    # -- before the write -----------------------------------------------------------------------

    def prepare(self, tables: Sequence[PartitionTable], info: FlushInfo) -> list[tuple[PartitionTable, str]]:
        """Drop the rows an in-doubt flush already landed, then record this flush before its data.

        :return: each table that still has rows, with the file name it must be written under
            (named in the manifest)
        """
        keys = self.in_doubt_keys(info.source, own=info.flush_id, window=info.redelivery_window)
        planned = []
        for part in tables:
            table, dropped = drop_landed(part.table, keys)
            info.tally.add(dropped)
            if table.num_rows:
                planned.append((replace(part, table=table) if dropped else part, part_file_name()))
        files = [
            posixpath.relpath(
                posixpath.join(self.writer.partition_dir(part.partition), name), self.writer.root
            )
            for part, name in planned
        ]
        now = time.time()
        manifest = _Manifest(
            info.flush_id, self.writer.writer_id, info.source, now, wall_deadline(info), tuple(files)
        )
        self.writer.put_atomic(self._manifest_path(info.source, info.flush_id), manifest.to_json())
        return planned

    def in_doubt_keys(
        self, source: str, *, own: str = "", window: float = DEFAULT_REDELIVERY_WINDOW
    ) -> pa.Array:
        """The record keys landed by flushes of ``source`` still in doubt (one listing when none are);
        manifests older than ``window`` seconds are removed on the way."""
        now = time.time()
        parts = []
        for path in self._listing(source):
            flush_id = posixpath.basename(path)[: -len(".json")]
            if flush_id == own:
                continue
            keys = self._keys.get(flush_id)
            if keys is None:
                keys = self._read_flush(path, now, window)
            if keys is not None:
                parts.append(keys)
        return unique_keys(parts)

    def _listing(self, source: str) -> list[str]:
        folder = self._folder(source)
        fs = self.writer.fs
        try:
            fs.invalidate_cache(folder)
            names = fs.ls(folder, detail=False)
        except FileNotFoundError:
            return []
        return sorted(str(n) for n in names if str(n).endswith(".json"))

    def _read_flush(self, path: str, now: float, window: float) -> pa.Array | None:
        """The keys a manifest's files hold; removes the manifest when it no longer matters."""
        manifest = self._load(path)
        if manifest is None:
            return None  # settled since the listing
        if now - manifest.created > window:
            log.info("Flush %s left the redelivery window: forgetting it", manifest.flush_id)
            self._remove(path)
            return None
        parts, missing = self._read_files(manifest.files)
        if missing:
            # A compaction may have moved them, naming the new files in the manifest first.
            again = self._load(path)
            if again is not None and again.files != manifest.files:
                manifest = again
                parts, missing = self._read_files(manifest.files)
        final = now > manifest.deadline + FINAL_AFTER_DEADLINE  # its writer has long stopped
        if final and not parts:
            self._remove(path)  # nothing of it is visible, and nothing ever will be
            return None
        keys = unique_keys(parts)
        if final:
            self._keys[manifest.flush_id] = keys
        return keys

    def _load(self, path: str) -> _Manifest | None:
        try:
            return _Manifest.from_json(self.writer.fs.cat_file(path))
        except FileNotFoundError:
            return None

    def _read_files(self, files: Sequence[str]) -> tuple[list[pa.Array], int]:
        """The keys of the files that exist, and how many did not (never written, or moved)."""
        parts, missing = [], 0
        for rel in files:
            try:
                parts.append(read_keys(posixpath.join(self.writer.root, rel), filesystem=self.writer.fs))
            except FileNotFoundError:
                missing += 1
        return parts, missing

    # -- compaction ---------------------------------------------------------------------------

    def replace_files(self, removed: Sequence[str], added: Sequence[str]) -> int:
        """Before a compaction deletes ``removed``, name ``added`` instead in every manifest that
        names one of them (every source); returns how many manifests changed.

        ``added`` must hold every row of ``removed`` that compaction kept, wherever it kept it (its
        new files and the partition's files it left alone): an in-doubt flush's keys then stay
        findable. It may hold more (other flushes' rows); only a record's identical twin, which its
        key cannot tell from a redelivery anyway, is affected by that.
        """
        root = self.writer.root
        gone = {posixpath.relpath(p, root) for p in removed}
        new = [posixpath.relpath(p, root) for p in added]
        changed = 0
        for path in self._all_manifests():
            manifest = self._load(path)
            if manifest is None or not gone.intersection(manifest.files):
                continue
            files = [f for f in manifest.files if f not in gone]
            files += [f for f in new if f not in files]
            self.writer.put_atomic(path, replace(manifest, files=tuple(files)).to_json())
            changed += 1
        return changed

    def _all_manifests(self) -> list[str]:
        folder = posixpath.join(self.writer.root, FLUSH_DIR)
        try:
            self.writer.fs.invalidate_cache(folder)
            return sorted(str(p) for p in self.writer.fs.glob(posixpath.join(folder, "*", "*.json")))
        except FileNotFoundError:
            return []

    # -- after the acknowledgements -------------------------------------------------------------

    def settle(self, info: FlushInfo, *, acked_all: bool) -> None:
        """Every batch of the flush acknowledged: nothing of it can come back, forget it. A flush
        with a batch left unacknowledged stays in doubt for the redelivery window."""
        if not acked_all:
            return
        self._remove(self._manifest_path(info.source, info.flush_id))

    def _remove(self, path: str) -> None:
        try:
            self.writer.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            # It only stays in doubt: later flushes read its keys until the window ends.
            log.warning("Could not remove the flush manifest %s: %s", path, exc)
