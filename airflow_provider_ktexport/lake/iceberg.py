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
- Each snapshot's summary records the batch ids, record counts and connection it holds.

Data files written before a commit that never happens (a crash, a lost race out of time) are in
the table's location but in no snapshot: readers never see them, and orphan-file removal
(Spark's ``remove_orphan_files`` procedure, see docs/iceberg.md) deletes them.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportWriteError
from airflow_provider_ktexport.lake.layout import (
    QUARANTINE_DIR,
    REJECTED_DIR,
    folder_table,
    record_type_of_folder,
)
from airflow_provider_ktexport.lake.naming import legacy_renames
from airflow_provider_ktexport.lake.schema import PartitionTable
from airflow_provider_ktexport.lake.sinks import FlushInfo, Landed
from airflow_provider_ktexport.lake.variants import fit_table, name_new_columns
from airflow_provider_ktexport.protocol import sighting_digest

__all__ = [
    "EVENT_DATE_COLUMN",
    "QUARANTINE_TABLE",
    "REJECTS_TABLE",
    "IcebergSink",
    "load_catalog",
    "table_name",
]

log = logging.getLogger(__name__)

EVENT_DATE_COLUMN = "_event_date"
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
        pa.field("seen_at", pa.timestamp("us", tz="UTC")),
    ]
)


def _pyiceberg() -> Any:
    try:
        import pyiceberg.catalog
        import pyiceberg.exceptions
        import pyiceberg.expressions
    except ImportError as exc:  # pragma: no cover - the dev install has it
        raise KtExportConfigError(
            "Iceberg destinations need pyiceberg: pip install 'airflow-provider-ktexport[iceberg]'"
        ) from exc
    return pyiceberg


def load_catalog(name: str, properties: Mapping[str, Any]) -> Any:
    """A pyiceberg catalog from its properties (``type``/``uri``/``warehouse``...), with a clear error."""
    pyiceberg = _pyiceberg()
    try:
        return pyiceberg.catalog.load_catalog(name, **{k: str(v) for k, v in properties.items()})
    except (ValueError, TypeError, pyiceberg.exceptions.NoSuchPropertyException) as exc:
        keys = ", ".join(sorted(properties)) or "none"
        raise KtExportConfigError(
            f"Could not load the Iceberg catalog {name!r} (properties given: {keys}): {exc}. Pass the "
            "catalog's properties, e.g. {'type': 'sql', 'uri': 'sqlite:////data/catalog.db', "
            "'warehouse': 'file:///data/warehouse'} or {'type': 'rest', 'uri': 'https://...'}"
        ) from exc


#: The table of a record type as the engine keys it (its folder, :mod:`.layout`).
table_name = folder_table


def _plain_arrow(schema: pa.Schema) -> pa.Schema:
    """An Iceberg table's Arrow schema as the lake builds tables: string (not large_string), no ids."""
    fields = []
    for f in schema:
        if f.name == EVENT_DATE_COLUMN:
            continue
        t = pa.string() if pa.types.is_large_string(f.type) else f.type
        t = pa.binary() if pa.types.is_large_binary(t) else t
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def _event_days(part: PartitionTable) -> pa.Array:
    day = part.partition.get("event_date")
    value = date.fromisoformat(day) if day and day != "unknown" and len(day) == 10 else None
    return pa.repeat(pa.scalar(value, pa.date32()), part.table.num_rows)


class IcebergSink:
    """Lands flushes as Iceberg commits in ``namespace`` of ``catalog``.

    :param catalog: a pyiceberg catalog (see :func:`load_catalog`)
    :param namespace: where the tables live (created if missing)
    :param catalog_name: the catalog's name, for URIs in results and Asset events
    """

    def __init__(self, catalog: Any, namespace: str = "ktexport", *, catalog_name: str = "ktexport") -> None:
        self._ice = _pyiceberg()
        self.catalog = catalog
        self.namespace = namespace
        self.catalog_name = catalog_name
        try:
            catalog.create_namespace_if_not_exists(namespace)
        except Exception as exc:  # noqa: BLE001 - any catalog failure here is a destination problem
            if self._namespace_exists():
                return  # another writer created it at the same moment (SQL catalogs say IntegrityError)
            raise KtExportWriteError(
                f"Could not open namespace {namespace!r} in Iceberg catalog {catalog_name!r}: "
                f"{type(exc).__name__}: {exc}",
                destination=f"iceberg://{catalog_name}/{namespace}",
            ) from exc

    # -- tables ------------------------------------------------------------------------------------

    def _namespace_exists(self) -> bool:
        try:
            self.catalog.load_namespace_properties(self.namespace)
        except Exception:  # noqa: BLE001 - any failure means we cannot use it
            return False
        return True

    def identifier(self, table: str) -> str:
        return f"{self.namespace}.{table}"

    def uri(self, table: str) -> str:
        return f"iceberg://{self.catalog_name}/{self.namespace}/{table}"

    def _load(self, table: str) -> Any | None:
        try:
            return self.catalog.load_table(self.identifier(table))
        except self._ice.exceptions.NoSuchTableError:
            return None

    def _open(self, table: str, schema: pa.Schema, *, partition_by: str | None) -> Any:
        """The table, created with ``schema`` (and an identity partition) if it does not exist."""
        found = self._load(table)
        if found is None:
            try:
                found = self.catalog.create_table_if_not_exists(self.identifier(table), schema=schema)
            except Exception:
                # Another writer created it at the same moment (a SQL catalog may say so with an
                # IntegrityError); anything else fails again here, with its own error.
                found = self.catalog.load_table(self.identifier(table))
            log.info("Created Iceberg table %s", self.identifier(table))
        renames = legacy_renames([f.name for f in found.schema().fields])
        if renames:
            # Tables of the version that tagged names with capitals: renamed in place (Iceberg
            # tracks columns by id, so no data file changes). A conflict is retried by the caller.
            with found.update_schema() as update:
                for old, new in renames.items():
                    update.rename_column(old, new)
            log.info("Renamed columns of %s to this version's names: %s", self.identifier(table), renames)
        if partition_by and not found.spec().fields:
            try:
                with found.update_spec() as spec:
                    spec.add_identity(partition_by)
            except self._ice.exceptions.CommitFailedException:
                found = self.catalog.load_table(self.identifier(table))  # another writer did it
        return found

    def load_schema(self, record_type: str) -> pa.Schema | None:
        table = self._load(table_name(record_type))
        return None if table is None else _plain_arrow(table.schema().as_arrow())

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
            landed.append(
                self._commit(
                    table_name(record_type), arrow, info, record_type, partition_by=EVENT_DATE_COLUMN
                )
            )
        if rejects:
            arrow = pa.concat_tables(
                [
                    t.append_column(
                        "record_type",
                        pa.repeat(pa.scalar(record_type_of_folder(rtype), pa.string()), t.num_rows),
                    )
                    for rtype, t in rejects.items()
                ]
            )
            landed.append(self._commit(REJECTS_TABLE, arrow, info, "", partition_by=None, rejected=True))
        return landed

    def _properties(self, info: FlushInfo, rows: int) -> dict[str, str]:
        ids = ",".join(info.batch_ids)
        if len(ids) > _MAX_PROPERTY:
            ids = ids[:_MAX_PROPERTY] + f",...({len(info.batch_ids)} batches)"
        return {
            "ktexport.source": info.source,
            "ktexport.batch-ids": ids,
            "ktexport.batches": str(len(info.batch_ids)),
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
        rejected: bool = False,
    ) -> Landed:
        """Append ``arrow`` in one commit, retried on conflicts until ``info.land_by``; verified visible."""
        exc_types = self._ice.exceptions
        attempt = 0
        while True:
            attempt += 1
            try:
                handle = self._open(table, arrow.schema, partition_by=partition_by)
                published = _plain_arrow(handle.schema().as_arrow())
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
                if any(
                    name not in published.names for name in rows.schema.names if name != EVENT_DATE_COLUMN
                ):
                    # Only ever adds columns (union by name): existing ones keep their types.
                    with handle.update_schema() as update:
                        update.union_by_name(rows.schema)
                handle.append(rows, snapshot_properties=self._properties(info, rows.num_rows))
                snapshot = handle.current_snapshot()
                break
            except (exc_types.CommitFailedException, exc_types.CommitStateUnknownException) as exc:
                pause = min(2.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                if info.land_by is not None and time.monotonic() + pause >= info.land_by:
                    raise KtExportWriteError(
                        f"Committing to Iceberg table {self.identifier(table)} lost {attempt} races with other "
                        f"writers before its batches' leases ran out ({exc}); nothing was acknowledged and "
                        "the batches will be delivered again.",
                        destination=self.uri(table),
                    ) from exc
                log.warning(
                    "Commit to %s conflicted (%s); retrying on fresh metadata", self.identifier(table), exc
                )
                time.sleep(pause)
            except exc_types.ValidationError as exc:
                raise KtExportWriteError(
                    f"Iceberg refused the rows for {self.identifier(table)}: {exc}",
                    destination=self.uri(table),
                ) from exc
        self._verify_visible(table, snapshot.snapshot_id)
        summary = snapshot.summary.additional_properties if snapshot.summary is not None else {}
        size = int(summary.get("added-files-size", 0))
        extra = {
            "table": self.identifier(table),
            "snapshot_id": snapshot.snapshot_id,
            "rows": arrow.num_rows,
            "rejected": rejected,
        }
        return Landed(
            f"{self.uri(table)}@{snapshot.snapshot_id}",
            arrow.num_rows,
            size,
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

    # -- quarantine --------------------------------------------------------------------------------

    def quarantine(self, body: bytes, *, reason: str, batch_id: str | None) -> str:
        """One row per sighting in ``<namespace>._quarantine``; the body itself only the first time.

        Rows are keyed by :func:`~airflow_provider_ktexport.protocol.sighting_digest` (the body's
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
