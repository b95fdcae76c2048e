"""The quarantine table of an Iceberg lake: undecodable bodies, one row per sighting (docs/iceberg.md).

:class:`IcebergQuarantine` is the part of :class:`~airflow_provider_ktexport.lake.iceberg.IcebergSink`
that keeps bodies the drain could not decode in ``<namespace>._quarantine``, apart from the
flush commits: a sighting is appended on its own, before the batch holding it is acknowledged.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from airflow_provider_ktexport.api.envelope import sighting_digest
from airflow_provider_ktexport.lake.iceberg_tables import IcebergTables
from airflow_provider_ktexport.lake.layout import QUARANTINE_DIR, TIMESTAMP

__all__ = ["QUARANTINE_TABLE", "IcebergQuarantine"]

QUARANTINE_TABLE = QUARANTINE_DIR

_QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string()),
        pa.field("body", pa.binary()),
        pa.field("reason", pa.string()),
        pa.field("batch_id", pa.string()),
        pa.field("seen_at", TIMESTAMP),
    ]
)


class IcebergQuarantine(IcebergTables):
    """Iceberg tables with the quarantine: the sink's quarantine methods, read back by digest."""

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
