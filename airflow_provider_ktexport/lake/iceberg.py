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
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from airflow_provider_ktexport.api.envelope import sighting_digest
from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.iceberg_catalog import (
    load_catalog,
    write_version_hint,
)
from airflow_provider_ktexport.lake.iceberg_tables import (
    DEFAULT_TABLE_PROPERTIES,
    IcebergTables,
    plain_arrow,
)
from airflow_provider_ktexport.lake.layout import (
    BATCH_ID_COLUMN,
    EVENT_DATE_COLUMN,
    EVENT_DATE_KEY,
    QUARANTINE_DIR,
    RECORD_TYPE_KEY,
    REJECTED_DIR,
    TIMESTAMP,
    event_day_value,
    folder_table,
    record_type_of_folder,
)
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
QUARANTINE_TABLE = QUARANTINE_DIR
#: Longest snapshot property value kept (batch ids of a very large flush are cut, and say so).
_MAX_PROPERTY = 16_000


_QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string()),
        pa.field("body", pa.binary()),
        pa.field("reason", pa.string()),
        pa.field("batch_id", pa.string()),
        pa.field("seen_at", TIMESTAMP),
    ]
)


#: The table of a record type as the engine keys it (its folder, :mod:`.layout`).
table_name = folder_table


def _event_days(part: PartitionTable) -> pa.Array:
    """The ``_event_date`` of a partition's rows: its ``event_date`` (:func:`.layout.event_date`,
    the UTC day), as the Parquet lake keeps it in its path."""
    value = event_day_value(part.partition.get(EVENT_DATE_KEY))
    return pa.repeat(pa.scalar(value, pa.date32()), part.table.num_rows)


class IcebergSink(IcebergTables):
    """Lands flushes as Iceberg commits in ``namespace`` of ``catalog`` (its tables: :class:`IcebergTables`).

    :param catalog: a pyiceberg catalog (see :func:`load_catalog`)
    :param namespace: where the tables live (created if missing)
    :param catalog_name: the catalog's name, for URIs in results and Asset events
    :param table_properties: table properties over :data:`DEFAULT_TABLE_PROPERTIES`, given to new
        tables and to existing ones that lack them
    """

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
            landed.append(
                self._commit(
                    table_name(record_type),
                    arrow,
                    info,
                    record_type,
                    partition_by=EVENT_DATE_COLUMN,
                    batch_ids=[b for b in info.batch_ids if b in batches],
                )
            )
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
            landed.append(
                self._commit(
                    REJECTS_TABLE,
                    arrow,
                    info,
                    "",
                    partition_by=None,
                    rejected=True,
                    batch_ids=[b for b in info.batch_ids if b in batches],
                )
            )
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
    ) -> Landed:
        """Append ``arrow`` in one commit, retried on conflicts until ``info.land_by``; verified visible."""
        exc_types = self._ice.exceptions
        attempt = 0
        while True:
            attempt += 1
            try:
                handle, rows, snapshot = self._append(
                    table, arrow, info, partition_by=partition_by, batch_ids=batch_ids, rejected=rejected
                )
                break
            except (exc_types.CommitFailedException, exc_types.CommitStateUnknownException) as exc:
                time.sleep(self._pause_after_conflict(table, attempt, exc, info))
            except exc_types.ValidationError as exc:
                raise KtExportWriteError(
                    f"Iceberg refused the rows for {self.identifier(table)}: {exc}",
                    destination=self.uri(table),
                ) from exc
        self._verify_visible(table, snapshot.snapshot_id)
        return self._landed(table, arrow, rows, handle, snapshot, record_type=record_type, rejected=rejected)

    def _append(
        self,
        table: str,
        arrow: pa.Table,
        info: FlushInfo,
        *,
        partition_by: str | None,
        batch_ids: Sequence[str],
        rejected: bool,
    ) -> tuple[Any, pa.Table, Any]:
        """One attempt: ``arrow`` fitted to the table as it is now, appended; (table, rows, snapshot)."""
        handle = self._open(table, arrow.schema, partition_by=partition_by)
        published = plain_arrow(handle.schema().as_arrow())
        # Another writer may have given a new column its type first: values that do not fit
        # it move to variant columns, so no column ever changes type.
        # A new case twin is named against the table's names: its twin name goes into
        # the same optimistic commit that publishes it, so no two writers disagree.
        rows = (
            arrow
            if rejected
            else name_new_columns(
                fit_table(arrow, dict(zip(published.names, published.types, strict=True))),
                published.names,
            )
        )
        if any(name not in published.names for name in rows.schema.names if name != EVENT_DATE_COLUMN):
            # Only ever adds columns (union by name): existing ones keep their types.
            with handle.update_schema() as update:
                update.union_by_name(rows.schema)
        handle.append(rows, snapshot_properties=self._properties(info, rows.num_rows, batch_ids))
        return handle, rows, handle.current_snapshot()

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
        arrow: pa.Table,
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
            "rows": arrow.num_rows,
            "rejected": rejected,
        }
        return Landed(
            f"{self.uri(table)}@{snapshot.snapshot_id}",
            arrow.num_rows,
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

    # -- quarantine --------------------------------------------------------------------------------

    def quarantine(self, body: bytes, *, reason: str, batch_id: str | None) -> str:
        """One row per sighting in ``<namespace>._quarantine``; the body itself only the first time.

        Rows are keyed by :func:`~airflow_provider_ktexport.api.envelope.sighting_digest` (the body's
        SHA-256 with its envelope id blanked), so redeliveries under new ids count as sightings
        of one body (its column still named ``sha256``).
        """
        digest = sighting_digest(body)
        first = self._sightings(digest) == 0
        row = pa.table(
            {
                "sha256": [digest],
                "body": [bytes(body) if first else None],
                "reason": [reason],
                "batch_id": [batch_id],
                "seen_at": [datetime.now(UTC)],
            },
            schema=_QUARANTINE_SCHEMA,
        )
        handle = self._open(QUARANTINE_TABLE, _QUARANTINE_SCHEMA, partition_by=None)
        handle.append(row)
        return f"{self.uri(QUARANTINE_TABLE)}#sha256={digest}"

    def quarantine_sightings(self, body: bytes) -> int:
        return self._sightings(sighting_digest(body))

    def quarantine_kept(self, body: bytes) -> bool:
        """Whether the table, read afresh, holds this body (its id aside) in a row of its digest."""
        digest = sighting_digest(body)
        stored = self._quarantine_rows(digest, ("sha256", "body"))
        return any(b is not None and sighting_digest(b) == digest for b in stored.column("body").to_pylist())

    def _sightings(self, digest: str) -> int:
        return self._quarantine_rows(digest, ("sha256",)).num_rows

    def _quarantine_rows(self, digest: str, fields: tuple[str, ...]) -> pa.Table:
        handle = self._load(QUARANTINE_TABLE)
        if handle is None:
            return pa.table({name: pa.array([], _QUARANTINE_SCHEMA.field(name).type) for name in fields})
        return handle.scan(
            row_filter=self._ice.expressions.EqualTo("sha256", digest), selected_fields=fields
        ).to_arrow()

    def close(self) -> None:
        """Nothing to release: the catalog is the caller's."""
