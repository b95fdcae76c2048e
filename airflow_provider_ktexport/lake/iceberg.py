"""Apache Iceberg tables as the lake: one table per record type, committed before acknowledgement.

Plain Python over pyiceberg (the ``iceberg`` extra), no Airflow. :class:`IcebergSink` is a
:class:`~airflow_provider_ktexport.lake.sinks.Sink`: the drain builds the same typed tables as
for Parquet and hands them here; :meth:`IcebergSink.land` appends each record type's rows in one
commit and returns only once the catalog shows that snapshot, so the drain acknowledges a batch
only after the commits holding all its records (and its rejects) are visible.

- Tables ``<namespace>.<record type table>`` (:func:`.layout.folder_table`: the type itself for
  ordinary types, never a reserved ``_`` name) with the Parquet lake's columns, plus ``_event_date`` (the
  event day the Parquet lake keeps in its path), partitioned by identity on it.
- The schema only gains columns (``union_by_name``); a column never changes type (the lake's
  variant rule sends a value that does not fit to a column of its own).
- Rejected records go to ``<namespace>._rejected``; undecodable bodies to
  ``<namespace>._quarantine`` (one row per sighting, the body on the first).
- A commit that loses a race with another writer (a second drain, a compaction) is retried on
  fresh metadata until the flush's ``land_by`` (its oldest lease's end, less a margin).
- Exactly once as landed (:mod:`.iceberg_ledger`): each commit's summary names its flush; rows
  a flush still in doubt (not all its batches acknowledged) already landed are dropped before
  the commit, and a commit whose outcome is unknown is looked for by its flush id before a retry.
- Each snapshot's summary records the connection, record counts and the ids of the batches that
  have rows in that table (not every batch of the flush: a table's history names its own batches).
- A SQL catalog's tables get ``metadata/version-hint.text`` after each commit, so DuckDB's
  ``iceberg_scan`` finds a table by its folder.
- Tables are created with their partition spec and with :data:`DEFAULT_TABLE_PROPERTIES`, which
  bound what each commit leaves behind (old ``metadata.json`` files deleted, manifests merged);
  a table created before gets the ones it lacks on first use. Snapshots, small data files and
  orphans are :mod:`.iceberg_maintenance`'s job.

Data files written before a commit that never happens (a crash, a lost race out of time) are in
the table's location but in no snapshot: readers never see them, and orphan-file removal
(Spark's ``remove_orphan_files`` procedure, see docs/iceberg.md) deletes them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyarrow as pa

from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.iceberg_catalog import (
    load_catalog,
    write_version_hint,
)
from airflow_provider_ktexport.lake.iceberg_ledger import (
    IcebergLedger,
    find_flush,
    maybe_committed_errors,
    record_settles,
    without_rebase,
)
from airflow_provider_ktexport.lake.iceberg_quarantine import QUARANTINE_TABLE, IcebergQuarantine
from airflow_provider_ktexport.lake.iceberg_tables import (
    DEFAULT_TABLE_PROPERTIES,
    plain_arrow,
)
from airflow_provider_ktexport.lake.layout import (
    BATCH_ID_COLUMN,
    EVENT_DATE_COLUMN,
    EVENT_DATE_KEY,
    RECORD_TYPE_KEY,
    REJECTED_DIR,
    event_day_value,
    folder_table,
    record_type_of_folder,
)
from airflow_provider_ktexport.lake.ledger import DEFAULT_REDELIVERY_WINDOW, drop_landed
from airflow_provider_ktexport.lake.schema import PartitionTable
from airflow_provider_ktexport.lake.sinks import FlushInfo, Landed
from airflow_provider_ktexport.lake.variants import fit_table, name_new_columns

__all__ = [
    "DEFAULT_TABLE_PROPERTIES",
    "EVENT_DATE_COLUMN",
    "QUARANTINE_TABLE",
    "REJECTS_TABLE",
    "IcebergSink",
    "load_catalog",
    "table_name",
]

log = logging.getLogger(__name__)

REJECTS_TABLE = REJECTED_DIR
#: Longest snapshot property value kept (batch ids of a very large flush are cut, and say so).
_MAX_PROPERTY = 16_000


#: The table of a record type as the engine keys it (its folder, :mod:`.layout`).
table_name = folder_table


def _event_days(part: PartitionTable) -> pa.Array:
    """The ``_event_date`` of a partition's rows: its ``event_date`` (:func:`.layout.event_date`,
    the UTC day), as the Parquet lake keeps it in its path."""
    value = event_day_value(part.partition.get(EVENT_DATE_KEY))
    return pa.repeat(pa.scalar(value, pa.date32()), part.table.num_rows)


@dataclass
class _Tried:
    """What the latest attempt of a commit committed, or tried to: an attempt whose outcome was
    unknown may have committed it, and then that is what landed."""

    rows: pa.Table
    #: Rows dropped as already landed by a flush in doubt.
    dropped: int = 0


class IcebergSink(IcebergQuarantine):
    """Lands flushes as Iceberg commits in ``namespace`` of ``catalog`` (its tables: :class:`IcebergTables`, its quarantine: :class:`IcebergQuarantine`).

    Takes :class:`IcebergTables`' arguments (the catalog, the namespace, the catalog's name and
    table properties).
    """

    #: The redelivery window of the last flush landed, for the settles recorded at close.
    _window: float = DEFAULT_REDELIVERY_WINDOW

    @cached_property
    def ledger(self) -> IcebergLedger:
        """Flush ids in snapshot summaries: what makes a redelivery land once (:mod:`.iceberg_ledger`)."""
        return IcebergLedger()

    def prove_writable(self) -> None:
        """Nothing more to do: opening the sink already proved the catalog (its namespace) and the
        warehouse (:func:`.iceberg_catalog.check_warehouse_writable`), before any lease."""

    def load_schema(self, record_type: str) -> pa.Schema | None:
        table = self._load(table_name(record_type))
        return None if table is None else plain_arrow(table.schema().as_arrow())

    # -- landing -----------------------------------------------------------------------------------

    def land(
        self, tables: Sequence[PartitionTable], rejects: Mapping[str, pa.Table], info: FlushInfo
    ) -> list[Landed]:
        by_type: dict[str, list[PartitionTable]] = {}
        for part in tables:
            by_type.setdefault(part.record_type, []).append(part)
        landed = []
        for record_type, parts in by_type.items():
            arrow = pa.concat_tables(
                [
                    p.table.append_column(pa.field(EVENT_DATE_COLUMN, pa.date32()), _event_days(p))
                    for p in parts
                ]
            )
            batches = frozenset().union(*(p.batch_ids for p in parts))
            piece = self._commit(
                table_name(record_type),
                arrow,
                info,
                record_type,
                partition_by=EVENT_DATE_COLUMN,
                batch_ids=[b for b in info.batch_ids if b in batches],
            )
            if piece is not None:  # None: every row was already landed by a flush in doubt
                landed.append(piece)
        if rejects:
            arrow = pa.concat_tables(
                [
                    t.append_column(
                        RECORD_TYPE_KEY,
                        pa.repeat(pa.scalar(record_type_of_folder(rtype), pa.string()), t.num_rows),
                    )
                    for rtype, t in rejects.items()
                ]
            )
            batches = frozenset(arrow.column(BATCH_ID_COLUMN).to_pylist())
            piece = self._commit(
                REJECTS_TABLE,
                arrow,
                info,
                "",
                partition_by=None,
                rejected=True,
                batch_ids=[b for b in info.batch_ids if b in batches],
            )
            if piece is not None:  # always: rejects are never dropped
                landed.append(piece)
        return landed

    def _properties(self, info: FlushInfo, rows: int, batch_ids: Sequence[str]) -> dict[str, str]:
        """The snapshot summary: the batches with rows in this commit (not all of the flush's)."""
        ids = ",".join(batch_ids)
        if len(ids) > _MAX_PROPERTY:
            ids = ids[:_MAX_PROPERTY] + f",...({len(batch_ids)} batches)"
        return {
            "ktexport.source": info.source,
            "ktexport.batch-ids": ids,
            "ktexport.batches": str(len(batch_ids)),
            "ktexport.flush-records": str(info.records),
            "ktexport.flush-rejected": str(info.rejected),
            "ktexport.rows-in-commit": str(rows),
        }

    def _commit(
        self,
        table: str,
        arrow: pa.Table,
        info: FlushInfo,
        record_type: str,
        *,
        partition_by: str | None,
        batch_ids: Sequence[str],
        rejected: bool = False,
    ) -> Landed | None:
        """Append ``arrow`` in one commit, retried on conflicts until ``info.land_by``; verified visible.

        Rows a flush in doubt already landed are dropped first, on the metadata the commit is based
        on (a commit racing in between fails the optimistic commit, and the retry drops again);
        returns None when none are left. An attempt whose outcome is unknown is looked for (its
        flush id) before the next, so a commit is never made twice.
        """
        exc_types = self._ice.exceptions
        attempt = 0
        self._window = info.redelivery_window
        tried = _Tried(arrow)
        while True:
            attempt += 1
            try:
                outcome = self._attempt(
                    table,
                    arrow,
                    info,
                    tried,
                    attempt,
                    partition_by=partition_by,
                    batch_ids=batch_ids,
                    rejected=rejected,
                )
                break
            except (exc_types.CommitFailedException, *maybe_committed_errors(exc_types)) as exc:
                time.sleep(self._pause_after_conflict(table, attempt, exc, info))
            except exc_types.ValidationError as exc:
                raise KtExportWriteError(
                    f"Iceberg refused the rows for {self.identifier(table)}: {exc}",
                    destination=self.uri(table),
                ) from exc
        info.tally.add(tried.dropped)  # what the committed (or last) attempt dropped
        if outcome is None:
            return None
        return self._committed(table, outcome, info, tried, record_type=record_type, rejected=rejected)

    def _committed(
        self,
        table: str,
        outcome: tuple[Any, Any],
        info: FlushInfo,
        tried: _Tried,
        *,
        record_type: str,
        rejected: bool,
    ) -> Landed:
        """A commit made: verified visible and noted in the ledger, as a landed piece of the flush."""
        handle, snapshot = outcome
        self._verify_visible(table, snapshot.snapshot_id)
        if info.flush_id:
            summary = snapshot.summary.additional_properties if snapshot.summary is not None else {}
            self.ledger.committed(table, info.flush_id, summary)
        return self._landed(table, tried.rows, handle, snapshot, record_type=record_type, rejected=rejected)

    def _attempt(
        self,
        table: str,
        arrow: pa.Table,
        info: FlushInfo,
        tried: _Tried,
        attempt: int,
        *,
        partition_by: str | None,
        batch_ids: Sequence[str],
        rejected: bool,
    ) -> tuple[Any, Any] | None:
        """One attempt on the table as it is now: (table, snapshot), or None when every row was
        already landed by a flush in doubt. A retry first looks for its flush: an earlier attempt
        whose outcome was unknown may have committed it."""
        handle = self._open(table, arrow.schema, partition_by=partition_by)
        done = find_flush(handle, info.flush_id) if info.flush_id and attempt > 1 else None
        if done is not None:
            return handle, done
        kept = self._drop_in_doubt(table, handle, arrow, info, tried, rejected=rejected)
        if not kept.num_rows:
            return None
        return self._append(table, handle, kept, info, tried, batch_ids=batch_ids, rejected=rejected)

    def _drop_in_doubt(
        self, table: str, handle: Any, arrow: pa.Table, info: FlushInfo, tried: _Tried, *, rejected: bool
    ) -> pa.Table:
        """``arrow`` without the rows whose ``_record_key`` a flush of the same source still in doubt
        added to this table (metadata this attempt commits on); rejects are never dropped."""
        tried.dropped = 0
        if not info.flush_id or rejected:
            return arrow
        keys = self.ledger.in_doubt_keys(
            table, handle, info.source, own=info.flush_id, window=info.redelivery_window
        )
        kept, tried.dropped = drop_landed(arrow, keys)
        return kept

    def _append(
        self,
        table: str,
        handle: Any,
        kept: pa.Table,
        info: FlushInfo,
        tried: _Tried,
        *,
        batch_ids: Sequence[str],
        rejected: bool,
    ) -> tuple[Any, Any]:
        """``kept`` fitted to the table as it is now, appended with the flush's id in the snapshot
        summary; (table, snapshot)."""
        published = plain_arrow(handle.schema().as_arrow())
        # Another writer may have given a new column its type first: values that do not fit
        # it move to variant columns, so no column ever changes type.
        # A new case twin is named against the table's names: its twin name goes into
        # the same optimistic commit that publishes it, so no two writers disagree.
        rows = (
            kept
            if rejected
            else name_new_columns(
                fit_table(kept, dict(zip(published.names, published.types, strict=True))),
                published.names,
            )
        )
        if any(name not in published.names for name in rows.schema.names if name != EVENT_DATE_COLUMN):
            # Only ever adds columns (union by name): existing ones keep their types.
            with handle.update_schema() as update:
                update.union_by_name(rows.schema)
        tried.rows = rows
        properties = self._properties(info, rows.num_rows, batch_ids)
        if info.flush_id:
            properties |= self.ledger.summary(table, info.flush_id, tried.dropped, info.redelivery_window)
            handle = without_rebase(handle)  # after any schema commit, which reloads its view
        handle.append(rows, snapshot_properties=properties)
        return handle, handle.current_snapshot()

    def _pause_after_conflict(self, table: str, attempt: int, exc: Exception, info: FlushInfo) -> float:
        """How long to wait before the next attempt; raises when that would outlive the leases."""
        pause = min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
        if info.land_by is not None and time.monotonic() + pause >= info.land_by:
            raise KtExportWriteError(
                f"Committing to Iceberg table {self.identifier(table)} lost {attempt} races with other "
                f"writers before its batches' leases ran out ({exc}); nothing was acknowledged and "
                "the batches will be delivered again.",
                destination=self.uri(table),
            ) from exc
        log.warning("Commit to %s conflicted (%s); retrying on fresh metadata", self.identifier(table), exc)
        return pause

    def _landed(
        self,
        table: str,
        rows: pa.Table,
        handle: Any,
        snapshot: Any,
        *,
        record_type: str,
        rejected: bool,
    ) -> Landed:
        """The commit as a landed piece of the flush, for the drain's result and lineage."""
        summary = snapshot.summary.additional_properties if snapshot.summary is not None else {}
        extra = {
            "table": self.identifier(table),
            "snapshot_id": snapshot.snapshot_id,
            "rows": rows.num_rows,
            "rejected": rejected,
        }
        return Landed(
            f"{self.uri(table)}@{snapshot.snapshot_id}",
            rows.num_rows,
            int(summary.get("added-files-size", 0)),
            rejected=rejected,
            record_type=record_type,
            extra=extra,
            dataset=self.uri(table),
            location=str(handle.location()),
            files=int(summary.get("added-data-files", 1)),
            schema=rows.schema,
        )

    def _verify_visible(self, table: str, snapshot_id: int) -> None:
        """The catalog, read afresh, has the snapshot: what the drain's acknowledgements rest on."""
        fresh = self.catalog.load_table(self.identifier(table))
        if fresh.snapshot_by_id(snapshot_id) is None:
            raise KtExportWriteError(
                f"Iceberg table {self.identifier(table)} does not show snapshot {snapshot_id} after its commit; "
                "nothing is acknowledged.",
                destination=self.uri(table),
            )
        if self._version_hints:
            write_version_hint(fresh)

    # -- the flush ledger --------------------------------------------------------------------------

    def settle(self, info: FlushInfo, *, acked_all: bool) -> None:
        if info.flush_id:
            self.ledger.settle(info.flush_id, acked_all=acked_all)

    def close(self) -> None:
        """Record the run's last settles; the catalog itself is the caller's."""
        record_settles(self, self.ledger, window=self._window)
