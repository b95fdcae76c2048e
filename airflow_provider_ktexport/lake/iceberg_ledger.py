"""The flush ledger of the Iceberg sink: flush ids in snapshot summaries (see :mod:`.ledger`).

Every commit of a flush carries the flush's id, its writer's id and the ids of earlier flushes of
that writer which are now *settled* (all their batches acknowledged) in its snapshot summary. A
flush is in doubt for a table while a snapshot of the table within the redelivery window names
it and no summary (nor the table property :data:`SETTLED_PROPERTY`, written when a run ends with
settles no commit has carried) says it is settled. All of that is in the table metadata a commit
loads anyway: in the normal case the check reads nothing more. After a crash, the keys of an
in-doubt flush are read from the data files its snapshot added (``_record_key`` only), once per run.

The same summaries answer an unknown commit outcome: a table that already holds the flush's id
has its commit, and is not committed again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from airflow_provider_ktexport.lake.iceberg_catalog import (
    pyiceberg_modules,
    wants_version_hint,
    write_version_hint,
)
from airflow_provider_ktexport.lake.ledger import DEFAULT_REDELIVERY_WINDOW, read_keys, unique_keys

if TYPE_CHECKING:
    from airflow_provider_ktexport.lake.iceberg_tables import IcebergTables

__all__ = [
    "FLUSH_ID",
    "SETTLED",
    "SETTLED_PROPERTY",
    "WRITER_ID",
    "IcebergLedger",
    "kept_for_redelivery",
    "record_settles",
]

log = logging.getLogger(__name__)

#: Snapshot summary keys.
FLUSH_ID = "ktexport.flush-id"
WRITER_ID = "ktexport.writer-id"
SETTLED = "ktexport.settled"
DEDUPED = "ktexport.deduped"
SOURCE = "ktexport.source"
#: The flush's redelivery window in seconds: snapshot expiry keeps an in-doubt flush's snapshot
#: that long (:func:`kept_for_redelivery`).
WINDOW = "ktexport.redelivery-window"
#: Table property: ``{flush id: settled at (epoch seconds)}`` for settles no commit carried.
SETTLED_PROPERTY = "ktexport.settled-flushes"


def _summary(snapshot: Any) -> dict[str, str]:
    summary = getattr(snapshot, "summary", None)
    return dict(summary.additional_properties) if summary is not None else {}


def maybe_committed_errors(exc_types: Any) -> tuple[type[BaseException], ...]:
    """Errors after which a commit may have happened (the catalog applied it, the answer was lost):
    the outcome is looked for by flush id before any retry."""
    return (
        exc_types.CommitStateUnknownException,
        exc_types.ServerError,
        exc_types.ServiceUnavailableError,
        ConnectionError,
        TimeoutError,
    )


def without_rebase(table: Any) -> Any:
    """``table`` as loaded, but committing without pyiceberg's own retries.

    pyiceberg (0.10+) retries a conflicting append itself on fresh metadata
    (``commit.retry.num-retries``): that would commit rows whose drop was decided on the old
    metadata, missing what the winning writer just landed. Our retry reloads and decides again.
    Only this handle's view changes; the table's properties in the catalog stay the owner's.
    """
    props = dict(table.metadata.properties)
    props["commit.retry.num-retries"] = "0"
    table.metadata = table.metadata.model_copy(update={"properties": props})
    return table


def find_flush(table: Any, flush_id: str) -> Any | None:
    """The snapshot of ``table`` that committed ``flush_id`` (newest first), or None."""
    for snapshot in reversed(table.snapshots()):
        if _summary(snapshot).get(FLUSH_ID) == flush_id:
            return snapshot
    return None


def settled_in_property(table: Any) -> dict[str, float]:
    """The settles recorded in the table property (a damaged value counts as none)."""
    try:
        value = json.loads(table.properties.get(SETTLED_PROPERTY) or "{}")
        return {str(k): float(v) for k, v in value.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def in_doubt_snapshots(table: Any, source: str, *, own: str, window: float) -> dict[str, Any]:
    """``{flush id: snapshot}`` of the flushes of ``source`` in doubt in ``table`` (metadata only)."""
    since_ms = (time.time() - window) * 1000
    settled = set(settled_in_property(table))
    flushes: dict[str, Any] = {}
    for snapshot in table.snapshots():
        if snapshot.timestamp_ms < since_ms:
            continue
        props = _summary(snapshot)
        if props.get(SOURCE) != source:
            continue
        settled.update(f for f in props.get(SETTLED, "").split(",") if f)
        flush_id = props.get(FLUSH_ID)
        if flush_id and flush_id != own:
            flushes[flush_id] = snapshot
    return {f: s for f, s in flushes.items() if f not in settled}


def kept_for_redelivery(table: Any) -> set[int]:
    """Snapshot ids that snapshot expiry must keep: those of flushes still in doubt, inside their
    redelivery window. Without its snapshot an in-doubt flush cannot be found, and a redelivery of
    its records would land twice."""
    settled = set(settled_in_property(table))
    for snapshot in table.snapshots():
        settled.update(f for f in _summary(snapshot).get(SETTLED, "").split(",") if f)
    now_ms = time.time() * 1000
    kept = set()
    for snapshot in table.snapshots():
        props = _summary(snapshot)
        flush_id = props.get(FLUSH_ID)
        if not flush_id or flush_id in settled:
            continue
        try:
            window = float(props.get(WINDOW, DEFAULT_REDELIVERY_WINDOW))
        except ValueError:
            window = DEFAULT_REDELIVERY_WINDOW
        if snapshot.timestamp_ms + window * 1000 > now_ms:
            kept.add(snapshot.snapshot_id)
    return kept


def added_files(table: Any, snapshot: Any) -> list[str]:
    """The data files ``snapshot`` added to ``table`` (from its own manifests)."""
    from pyiceberg.manifest import ManifestEntryStatus

    paths = []
    for manifest in snapshot.manifests(table.io):
        if manifest.added_snapshot_id != snapshot.snapshot_id:
            continue  # carried over from earlier snapshots
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if entry.status == ManifestEntryStatus.ADDED and entry.snapshot_id == snapshot.snapshot_id:
                paths.append(entry.data_file.file_path)
    return paths


class IcebergLedger:
    """One writer's flush ledger over the tables of a namespace.

    :param writer_id: this writer (one per sink); default: a random id
    """

    def __init__(self, writer_id: str | None = None) -> None:
        self.writer_id = writer_id or uuid.uuid4().hex[:16]
        #: Keys of in-doubt flushes per (table, flush id): a committed snapshot never changes.
        self._keys: dict[tuple[str, str], pa.Array] = {}
        #: Flushes committed to a table and not yet settled.
        self._open: dict[str, set[str]] = {}
        #: Settled flushes per table that no commit has recorded yet.
        self._settled: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    # -- before a commit ------------------------------------------------------------------------

    def in_doubt_keys(self, name: str, table: Any, source: str, *, own: str, window: float) -> pa.Array:
        """The record keys that flushes of ``source`` in doubt added to ``table`` (``name``)."""
        parts = []
        with self._lock:
            known = set(self._settled.get(name, {}))  # settled here, not yet recorded by a commit
        for flush_id, snapshot in in_doubt_snapshots(table, source, own=own, window=window).items():
            if flush_id in known:
                continue
            key = (name, flush_id)
            if key not in self._keys:
                self._keys[key] = unique_keys(self._read(table, snapshot))
            parts.append(self._keys[key])
        return unique_keys(parts)

    @staticmethod
    def _read(table: Any, snapshot: Any) -> Iterable[pa.Array]:
        for path in added_files(table, snapshot):
            with table.io.new_input(path).open() as stream:
                yield read_keys(stream)

    def summary(self, name: str, flush_id: str, deduped: int, window: float) -> dict[str, str]:
        """The ledger's part of a commit's snapshot summary to table ``name``."""
        with self._lock:
            settled = ",".join(sorted(self._settled.get(name, {})))
        out = {FLUSH_ID: flush_id, WRITER_ID: self.writer_id, DEDUPED: str(deduped), WINDOW: f"{window:g}"}
        if settled:
            out[SETTLED] = settled
        return out

    # -- after a commit and after the acknowledgements ------------------------------------------

    def committed(self, name: str, flush_id: str, summary: dict[str, str]) -> None:
        """A commit to ``name`` is visible: note its flush, and forget the settles it carried."""
        carried = set(summary.get(SETTLED, "").split(","))
        with self._lock:
            self._open.setdefault(flush_id, set()).add(name)
            pending = self._settled.get(name, {})
            for f in carried:
                pending.pop(f, None)

    def settle(self, flush_id: str, *, acked_all: bool) -> None:
        """Every batch of the flush acknowledged: the next commit to each of its tables says so.
        Otherwise it stays in doubt (for the window)."""
        with self._lock:
            tables = self._open.pop(flush_id, set())
            if acked_all:
                for name in tables:
                    self._settled.setdefault(name, {})[flush_id] = time.time()

    def unrecorded(self) -> dict[str, dict[str, float]]:
        """Settles per table that no commit carried (the run's last flushes)."""
        with self._lock:
            return {name: dict(f) for name, f in self._settled.items() if f}

    def recorded(self, name: str) -> None:
        with self._lock:
            self._settled.pop(name, None)


def merged_settles(table: Any, new: dict[str, float], *, window: float) -> str:
    """The table property's value with ``new`` settles added and those past ``window`` removed."""
    since = time.time() - window
    merged = {f: t for f, t in settled_in_property(table).items() if t >= since}
    merged.update(new)
    return json.dumps(merged, separators=(",", ":"), sort_keys=True)


def record_settles(tables: IcebergTables, ledger: IcebergLedger, *, window: float) -> None:
    """Settles no commit carried (the run's last flushes) go into a table property, so later
    runs need not read those flushes' keys; a failure only leaves them in doubt (a cost, not
    a duplicate)."""
    for table, settled in ledger.unrecorded().items():
        if _record_on(tables, tables.identifier(table), settled, window=window):
            ledger.recorded(table)


def _record_on(tables: IcebergTables, identifier: str, settled: dict[str, float], *, window: float) -> bool:
    """Merge ``settled`` into one table's :data:`SETTLED_PROPERTY`, on fresh metadata after a lost
    race (three tries); whether it was recorded."""
    exceptions = pyiceberg_modules().exceptions
    for _ in range(3):
        try:
            handle = tables.catalog.load_table(identifier)
        except exceptions.NoSuchTableError:
            return False
        try:
            with handle.transaction() as tx:
                tx.set_properties({SETTLED_PROPERTY: merged_settles(handle, settled, window=window)})
        except exceptions.CommitFailedException:
            continue  # another writer committed: merge again on fresh metadata
        except Exception as exc:  # noqa: BLE001 - a settle is an optimisation; the flushes stay in doubt
            log.warning("Could not record settled flushes on %s: %s", identifier, exc)
            return False
        if wants_version_hint(tables.catalog):
            write_version_hint(tables.catalog.load_table(identifier))
        return True
    return False
