"""Where a flush lands: the drain hands a sink its tables and rejects, and acknowledges on return.

A sink's :meth:`~Sink.land` returns only when every table it was given is durable and visible
to readers (Parquet files written and verified; an Iceberg commit accepted by the catalog), so
the drain's rule "acknowledge only what has landed" holds whatever the destination. Two sinks:
:class:`ParquetSink` (files under a lake root, :mod:`.writer`) and
:class:`~airflow_provider_ktexport.lake.iceberg.IcebergSink` (tables in a catalog).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa

from airflow_provider_ktexport.lake.layout import INGEST_DATE_KEY, RECORD_TYPE_KEY, REJECTED_DIR, dataset_dir
from airflow_provider_ktexport.lake.ledger import DEFAULT_REDELIVERY_WINDOW, FlushTally, ParquetLedger
from airflow_provider_ktexport.lake.schema import PartitionTable
from airflow_provider_ktexport.lake.writer import LakeWriter

__all__ = ["FlushInfo", "Landed", "ParquetSink", "Sink", "default_write_concurrency"]

log = logging.getLogger(__name__)

#: Files written at once on a local disk: its writes are bound by the disk, not by round trips.
LOCAL_WRITE_CONCURRENCY = 8
#: Files written at once on an object store (S3, GCS and Azure take hundreds of parallel PUTs):
#: each file waits on round trips, so a backfill flush over hundreds of partitions needs many.
OBJECT_STORE_WRITE_CONCURRENCY = 64
#: The most files written at once (threads; each holds one file's bytes).
MAX_WRITE_CONCURRENCY = 256
#: botocore's connection pool when the S3 filesystem does not set ``max_pool_connections``.
_BOTOCORE_POOL = 10


def default_write_concurrency(writer: LakeWriter) -> int:
    """Files a flush writes at once when ``write_concurrency`` is not set: more on an object store."""
    return LOCAL_WRITE_CONCURRENCY if writer.local else OBJECT_STORE_WRITE_CONCURRENCY


def _note_s3_pool(writer: LakeWriter, concurrency: int) -> None:
    """Say so when s3fs's connection pool, not ``write_concurrency``, sets how many PUTs run at once."""
    config = getattr(writer.fs, "config_kwargs", None)
    protocols = writer.fs.protocol if isinstance(writer.fs.protocol, (tuple, list)) else (writer.fs.protocol,)
    if not isinstance(config, dict) or "s3" not in protocols:
        return
    pool = int(config.get("max_pool_connections") or _BOTOCORE_POOL)
    if pool < concurrency:
        log.info(
            "S3 writes run %d at a time (the S3 client's connection pool), not write_concurrency=%d: set "
            '"config_kwargs": {"max_pool_connections": %d} in the AWS connection\'s extra to use them all.',
            pool,
            concurrency,
            concurrency,
        )


@dataclass(frozen=True)
class FlushInfo:
    """What a flush holds, for sinks that record it (Iceberg snapshot properties)."""

    batch_ids: Sequence[str]
    records: int
    rejected: int
    source: str
    ingest_day: str
    #: Monotonic time by which the flush must have landed (the oldest lease's end, less a margin).
    land_by: float | None = None
    #: The flush's id in the flush ledger (:mod:`.ledger`); empty: not recorded.
    flush_id: str = ""
    #: Seconds a flush left in doubt is remembered (``DrainConfig.redelivery_window``).
    redelivery_window: float = DEFAULT_REDELIVERY_WINDOW
    #: What the sink reports back (rows dropped as already landed by a flush in doubt).
    tally: FlushTally = field(default_factory=FlushTally, compare=False)


@dataclass(frozen=True)
class Landed:
    """One durable, visible piece of a flush: a file, or a table commit."""

    uri: str
    rows: int
    bytes: int
    rejected: bool = False
    record_type: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    #: The dataset the piece belongs to, for lineage: a record type's folder (or the lake root when
    #: the first partition key is not the record type), or a table's URI.
    dataset: str = ""
    #: Where the dataset's data lives (a table's location); the dataset itself for a folder.
    location: str = ""
    #: Data files the piece added (a commit may add several).
    files: int = 1
    #: The Arrow schema of the rows as they landed (after fitting to the published types).
    schema: pa.Schema | None = field(default=None, compare=False, repr=False)


class Sink(Protocol):
    """What the drain needs of a destination."""

    def prove_writable(self) -> None:
        """Show the destination takes data, before the drain leases anything; raise
        ``KtExportConfigError`` when it is misconfigured, ``KtExportWriteError`` when unreachable."""
        ...

    def load_schema(self, record_type: str) -> pa.Schema | None: ...

    def land(
        self, tables: Sequence[PartitionTable], rejects: Mapping[str, pa.Table], info: FlushInfo
    ) -> list[Landed]: ...

    def settle(self, info: FlushInfo, *, acked_all: bool) -> None:
        """After the acknowledgements: a flush all of whose batches were acknowledged is settled
        (no redelivery can follow); otherwise it stays in doubt for the redelivery window."""
        ...

    def quarantine(self, body: bytes, *, reason: str, batch_id: str | None) -> str: ...

    def quarantine_sightings(self, body: bytes) -> int: ...

    def quarantine_kept(self, body: bytes) -> bool: ...

    def close(self) -> None: ...


class ParquetSink:
    """Parquet files under a lake root, a flush's files written concurrently.

    On an object store each file costs round trips (a PUT, then a HEAD that verifies it); a
    flush over hundreds of partitions written a few at a time would outlive its leases.

    :param writer: the lake's :class:`LakeWriter`
    :param concurrency: files written at once (default: :func:`default_write_concurrency`)
    """

    def __init__(self, writer: LakeWriter, *, concurrency: int | None = None) -> None:
        self.writer = writer
        self.ledger = ParquetLedger(writer)
        self.concurrency = concurrency or default_write_concurrency(writer)
        _note_s3_pool(writer, self.concurrency)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="ktexport-write")

    def prove_writable(self) -> None:
        self.writer.prove_writable()

    def load_schema(self, record_type: str) -> pa.Schema | None:
        return self.writer.load_schema(record_type)

    def land(
        self, tables: Sequence[PartitionTable], rejects: Mapping[str, pa.Table], info: FlushInfo
    ) -> list[Landed]:
        # Exactly once as landed: rows an in-doubt flush already landed are dropped, and this
        # flush's manifest is written before its files (names planned).
        planned = self.ledger.prepare(tables, info) if info.flush_id else [(p, None) for p in tables]
        jobs = [(part.table, part.partition, "", part.record_type, name) for part, name in planned]
        jobs += [
            (table, {RECORD_TYPE_KEY: rtype, INGEST_DATE_KEY: info.ingest_day}, REJECTED_DIR, rtype, None)
            for rtype, table in rejects.items()
        ]
        futures = [
            self._pool.submit(self.writer.write, job[0], job[1], area=job[2], name=job[4]) for job in jobs
        ]
        _, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            # Stop what has not started and wait for what has: no file of a failed flush may
            # appear after the drain has given up on it (a retrying PUT could land later).
            for f in pending:
                f.cancel()
            wait(pending)
            raise failed[0].exception()  # type: ignore[misc]
        written = [f.result() for f in futures]
        return [
            Landed(
                w.uri,
                w.rows,
                w.bytes,
                rejected=bool(job[2]),
                record_type=job[3],
                dataset=self.dataset_of(job[1], job[2]),
                schema=w.schema,
            )
            for w, job in zip(written, jobs, strict=True)
        ]

    def dataset_of(self, partition: Mapping[str, str], area: str = "") -> str:
        """The folder a file belongs to as a dataset: its record type's folder when the record type
        is the first partition key, else the lake root (or the area's folder, e.g. ``_rejected``):
        :func:`.layout.dataset_dir`."""
        return self.writer.uri_of(self.writer.lake.join(dataset_dir(partition, area)))

    def settle(self, info: FlushInfo, *, acked_all: bool) -> None:
        if info.flush_id:
            self.ledger.settle(info, acked_all=acked_all)

    def quarantine(self, body: bytes, *, reason: str, batch_id: str | None) -> str:
        return self.writer.quarantine(body, reason=reason, batch_id=batch_id)

    def quarantine_sightings(self, body: bytes) -> int:
        return self.writer.quarantine_sightings(body)

    def quarantine_kept(self, body: bytes) -> bool:
        return self.writer.quarantine_kept(body)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
