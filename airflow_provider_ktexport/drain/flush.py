"""A flush: build the held batches' records into tables, land them, then acknowledge the batches.

Plain Python, no Airflow (docs/architecture.md section 3). The steps of one landing are named
methods of :class:`Flusher`, in the order they must run:

1. :meth:`Flusher.build` masks the key, builds the tables and rejects, and checks the ack commit
   point (:func:`check_complete`): written plus rejected rows equal each batch's records;
2. :meth:`Flusher.write` lands them (verified Parquet files or visible Iceberg commits);
3. :meth:`Flusher.acknowledge` sends the DELETEs, only for leases still running on our clock.

A failure before step 3 acknowledges nothing and raises. A flush that would not land inside its
oldest lease at this run's measured pace lands in several such steps, oldest leases first
(:mod:`airflow_provider_ktexport.drain.pace`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_provider_ktexport.drain.acks import Acknowledger, ack_margin
from airflow_provider_ktexport.drain.buffer import HeldBatch, record_types_in, too_deep_in
from airflow_provider_ktexport.drain.config import DrainConfig
from airflow_provider_ktexport.drain.metrics import MetricsReporter
from airflow_provider_ktexport.drain.pace import FlushPace
from airflow_provider_ktexport.drain.progress import Progress
from airflow_provider_ktexport.drain.result import DrainResult
from airflow_provider_ktexport.exceptions import KtExportError, KtExportRejectsError
from airflow_provider_ktexport.lake.layout import REJECTED_DIR
from airflow_provider_ktexport.lake.ledger import drop_repeats, new_flush_id
from airflow_provider_ktexport.lake.partitions import oldest_event_us
from airflow_provider_ktexport.lake.rejects import Landing, Reject, land_records, rejects_table
from airflow_provider_ktexport.lake.schema import PartitionTable
from airflow_provider_ktexport.lake.sinks import FlushInfo, Landed, ParquetSink, Sink

__all__ = ["Built", "Flusher", "check_complete"]


@dataclass(frozen=True)
class Built:
    """One landing's records, built: the masked records, their tables and rejects, and the
    ingest time stamped on them."""

    records: list[bytes]
    landing: Landing
    ingested_at: datetime


class Flusher:
    """Lands and acknowledges held batches for one drain run.

    :param on_pending: told, before and after each step, which taken batches are landing or still
        wait to land (the drain paces its fetchers by them: a batch leased now waits for them)
    :param mask_records: masks the API key inside the records before anything is built
    """

    def __init__(
        self,
        sink: Sink,
        config: DrainConfig,
        result: DrainResult,
        pace: FlushPace,
        acks: Acknowledger,
        metrics: MetricsReporter,
        progress: Progress,
        log: Any,
        *,
        mask_records: Callable[[list[bytes]], list[bytes]],
        on_pending: Callable[[Sequence[HeldBatch]], None],
    ) -> None:
        self.sink = sink
        self.config = config
        self.result = result
        self.pace = pace
        self.acks = acks
        self.metrics = metrics
        self.progress = progress
        self.log = log
        self._mask_records = mask_records
        self._on_pending = on_pending
        self._schemas: dict[str, Any] = {}

    def flush(self, batches: list[HeldBatch], reason: str) -> None:
        """Land and acknowledge ``batches``: in one step, or in several (oldest lease first)
        when this run's measured pace says their files would not all land inside the oldest lease."""
        pending = sorted(batches, key=lambda b: b.leased_at)
        held = (
            sum(len(b.raw_items) for b in pending),
            len(frozenset().union(*(b.partitions for b in pending))),
        )
        step = late = 0
        while pending:
            n = self.pace.next_step(pending, self.acks.time_left(pending[0].leased_at))
            self._on_pending(pending)
            batches, pending = pending[:n], pending[n:]
            step += 1
            late += self.land_step(batches, reason if step == 1 and not pending else f"{reason}, step {step}")
            self._on_pending(pending)
        if late:
            self._slow_down(*held)

    def land_step(self, batches: list[HeldBatch], reason: str) -> int:
        """Land ``batches`` (build, write, verify), acknowledge them, and learn the pace from it;
        returns how many could not be acknowledged because their leases had run out (before their
        write started, or before their acknowledgement)."""
        batches, late_before = self._unexpired(batches)
        if not batches:
            return late_before
        t0 = time.monotonic()
        oldest_lease = min(b.leased_at for b in batches)
        built = self.build(batches)
        info = self.flush_info(
            batches, built, land_by=oldest_lease + self.config.lease_seconds - self._margin()
        )
        landed = self.write(built, info)
        lag = self._note_lag(built.landing.tables, built.ingested_at)
        t_written = time.monotonic()
        acked, expired = self.acknowledge(batches, oldest_lease)
        # All acknowledged: no redelivery can follow, the flush is settled; else it stays in doubt.
        self.sink.settle(info, acked_all=acked == len(batches))
        elapsed = time.monotonic() - t0
        self._learn_pace(len(landed), len(batches), t_written - t0, elapsed)
        self.metrics.timing("flush_duration", elapsed)
        self._log_step(reason, batches, built, landed, elapsed, acked, t_written - oldest_lease)
        self.progress.flushed(lag)
        self._warn_after_step(batches, acked, expired, write_seconds=t_written - t0)
        if built.landing.rejects:
            self._report_rejects(built.landing.rejects, len(built.records))
        return expired + late_before

    # -- the steps ----------------------------------------------------------------------------------

    def build(self, batches: list[HeldBatch]) -> Built:
        """Build the batches' records into tables and rejects, and check they all add up."""
        # Masked before anything is built, so rows, _raw, rejects and _record_key all come from the
        # same text and the key is recoverable from none of them (not even by hashing guesses).
        # Masking rewrites text inside JSON strings only, so the nesting each batch was screened
        # for as it joined the buffer (too_deep_in) is the masked record's too.
        records = self._mask_records([raw for b in batches for raw in b.raw_items])
        batch_ids = [b.id for b in batches for _ in b.raw_items]
        ingested_at = datetime.now(UTC)
        landing = land_records(
            records,
            batch_ids,
            too_deep=too_deep_in(batches),
            source=self.config.source,
            ingested_at=ingested_at,
            partition_by=self.config.partition_by,
            include_raw=self.config.include_raw,
            known_schema=self._known_schema,
            record_types=record_types_in(batches, records),
        )
        for part in landing.tables:
            # Later flushes build at these types; the sink publishes them (schema store, table
            # schema) before any data at them is visible.
            self._schemas[part.record_type] = part.table.schema
        check_complete(batches, landing)
        return Built(records, landing, ingested_at)

    def flush_info(self, batches: list[HeldBatch], built: Built, *, land_by: float) -> FlushInfo:
        """What the sink records about this flush: a new flush id in the flush ledger (it stays in
        doubt until :meth:`.Sink.settle` says all its batches were acknowledged)."""
        return FlushInfo(
            batch_ids=[b.id for b in batches],
            records=len(built.records) - len(built.landing.rejects),
            rejected=len(built.landing.rejects),
            source=self.config.source,
            ingest_day=built.ingested_at.strftime("%Y-%m-%d"),
            land_by=land_by,
            flush_id=new_flush_id(),
            redelivery_window=self.config.redelivery_window,
        )

    def write(self, built: Built, info: FlushInfo) -> list[Landed]:
        """Land the built tables and rejects (verified files or visible commits) and count them;
        rows already landed (a repeat inside the flush, or by a flush in doubt) are dropped."""
        landing = built.landing
        rejected = rejects_table(landing.rejects, source=self.config.source, ingested_at=built.ingested_at)
        # A batch and its redelivery in one flush (a GET answered late in its lease): one copy.
        tables, repeats = drop_repeats(landing.tables, info.batch_ids)
        info.tally.add(repeats)
        landed = self.sink.land(tables, rejected, info)
        self._count_deduped(info.tally.deduped)
        self.result.add_pieces(landed)
        self.result.records += info.records
        self.result.rejected += info.rejected
        self.metrics.incr("records_landed", info.records)
        self.metrics.incr("records_rejected", info.rejected)
        return landed

    def acknowledge(self, batches: list[HeldBatch], oldest_lease: float) -> tuple[int, int]:
        """Acknowledge landed batches (their records are in the lake); (acked, expired)."""
        acked, expired = self.acks.ack_landed(batches)
        self.result.flushes += 1
        self.result.note_ack_lease_age(time.monotonic() - oldest_lease)
        return acked, expired

    # -- what a step learns and reports -------------------------------------------------------------

    def _unexpired(self, batches: list[HeldBatch]) -> tuple[list[HeldBatch], int]:
        """The batches that can still land in their leases when their write starts, and how many cannot.

        A batch past its lease may already be redelivered to another drain (or this one): writing
        it would race that copy, and it could not be acknowledged anyway. So may one whose lease
        ends before its own files can land at this run's pace: writing it only writes a copy. Both
        are left to the server, which delivers them again with a fresh lease.
        """
        live = [b for b in batches if self._can_land(b)]
        late = len(batches) - len(live)
        if late:
            self.result.lease_expired += late
            self.metrics.incr("leases_expired", late)
            self.log.warning(
                "%d batches' %g s leases ran out, or would before their files could land at this run's pace, "
                "before their write started: not written (the server delivers them again).",
                late,
                self.config.lease_seconds,
            )
        return live, late

    def _can_land(self, batch: HeldBatch) -> bool:
        """Whether ``batch`` alone can land in what is left of its lease at the measured pace.

        A batch that could not land even in a fresh lease is written all the same: only its
        landing shows it is too wide (:meth:`_too_wide`), and the run must say so.
        """
        left = self.acks.time_left(batch.leased_at)
        needs = self.pace.landing_seconds(len(batch.partitions))
        if left <= 0 or needs is None or needs >= self.config.lease_seconds - self._margin():
            return left > 0
        return left > needs

    def _count_deduped(self, rows: int) -> None:
        """Rows a flush did not write because a flush in doubt had landed them (redeliveries)."""
        if rows:
            self.result.deduped += rows
            self.metrics.incr("records_deduped", rows)
            self.log.info(
                "Dropped %d redelivered records already landed by a flush in doubt (exactly once).", rows
            )

    def _margin(self) -> float:
        return ack_margin(self.config.lease_seconds)

    def _log_step(
        self,
        reason: str,
        batches: list[HeldBatch],
        built: Built,
        landed: list[Landed],
        elapsed: float,
        acked: int,
        ack_lease_age: float,
    ) -> None:
        records = len(built.records)
        self.log.info(
            "Flush (%s): %d records from %d batches -> %d files (%d rejected records), %d bytes in %.2f s "
            "(%.0f records/s); acked %d/%d, oldest lease %.1f s old at ack",
            reason,
            records,
            len(batches),
            len(landed),
            len(built.landing.rejects),
            sum(piece.bytes for piece in landed),
            elapsed,
            records / elapsed if elapsed > 0 else 0.0,
            acked,
            len(batches),
            ack_lease_age,
        )

    def _warn_after_step(
        self, batches: list[HeldBatch], acked: int, expired: int, *, write_seconds: float
    ) -> None:
        failed = len(batches) - acked - expired
        if failed:
            self.log.warning(
                "%d acknowledgements failed (lease expired on the server or id unknown): those batches will "
                "be delivered again; the flush stays in doubt, so their records are dropped as already landed.",
                failed,
            )
        # A batch whose landing alone takes its whole lease is too wide for the store: it would
        # miss the lease even landed the moment it was leased. One that waited was only late.
        if expired and len(batches) == 1 and write_seconds >= self.config.lease_seconds - self._margin():
            self._too_wide(batches[0])

    def _learn_pace(self, files: int, batches: int, land_seconds: float, total_seconds: float) -> None:
        """Note what this landing cost.

        Only Parquet files cost per partition: a table sink (Iceberg) commits once per record type
        whatever the days, so its landings teach the batch pace but no cost per file.
        """
        if not isinstance(self.sink, ParquetSink):
            files = 0
        self.pace.note_flush(
            files=files, batches=batches, land_seconds=land_seconds, total_seconds=total_seconds
        )

    def _slow_down(self, records: int, partitions: int) -> None:
        """Leases ran out before a flush's acknowledgements: halve the flush limits for the rest of
        the run (from what the late flush held, when it held less than the limits)."""
        self.pace.shrink(records, partitions)
        self.result.flush_shrinks = self.pace.shrinks
        self.log.warning(
            "Leases ran out before this flush could be acknowledged: for the rest of the run flushes hold at "
            "most %d records and %d partition files (halved %d times).",
            self.pace.flush_records,
            self.pace.max_partitions,
            self.pace.shrinks,
        )

    def _too_wide(self, batch: HeldBatch) -> None:
        """A batch whose landing alone took longer than its lease could not be acknowledged:
        count and warn; stop the run at the second (each delivery would only write a copy)."""
        self.result.wide_batches += 1
        advice = (
            "raise write_concurrency (and, on S3, the connection pool: max_pool_connections) or the lease, "
            "or write to a store nearer the worker"
        )
        if self.result.wide_batches >= 2:
            raise KtExportError(
                f"Stopping the run: a second batch ({batch.id}, {len(batch.partitions)} partition files) could "
                "not land within its lease even alone, so each delivery of such a batch only writes another "
                f"copy. Nothing late was acknowledged; the batches will be delivered again. To go on, {advice}."
            )
        self.log.warning(
            "Batch %s alone writes %d partition files, more than its %g s lease lets land at this store's pace: "
            "it was written but not acknowledged, and will be delivered again (and dropped as already "
            "landed). If this repeats, %s.",
            batch.id,
            len(batch.partitions),
            self.config.lease_seconds,
            advice,
        )

    def _report_rejects(self, rejects: list[Reject], records: int) -> None:
        kinds = Counter(r.error_class for r in rejects)
        share = len(rejects) / records
        self.log.warning(
            "%d of %d records could not be rows (%s) and were kept with their exact text in the rejects "
            "table %s/; their batches were acknowledged. Read them with read_rejects().",
            len(rejects),
            records,
            ", ".join(f"{n} {k}" for k, n in kinds.most_common()),
            REJECTED_DIR,
        )
        limit = self.config.max_reject_share
        if limit is not None and share > limit:
            raise KtExportRejectsError(
                f"{len(rejects)} of {records} records in one flush ({share:.1%}) were rejected, above "
                f"max_reject_share={limit:g}. They are kept in {REJECTED_DIR}/ and acknowledged; look at "
                "their _error column, then raise max_reject_share (or set it to None) to go on.",
                rejected=len(rejects),
                records=records,
            )

    def _known_schema(self, record_type: str) -> Any:
        if record_type not in self._schemas:
            self._schemas[record_type] = self.sink.load_schema(record_type)
        return self._schemas[record_type]

    def _note_lag(self, tables: Sequence[PartitionTable], now: datetime) -> float | None:
        """The age of the oldest event time landed (None when unknown); a metric, so it can never
        fail a flush."""
        try:
            oldest = oldest_event_us(part.table for part in tables)
        except Exception:  # noqa: BLE001 - a metric must not cost the flush its acknowledgements
            self.log.debug("Could not compute the landed records' age", exc_info=True)
            return None
        if oldest is None:
            return None
        age = (now.timestamp() * 1_000_000 - oldest) / 1_000_000
        self.result.note_lag(age)
        # This flush's lag (not the run's maximum): the gauge follows the queue as it drains.
        self.metrics.gauge("oldest_record_age_seconds", age)
        return age


def check_complete(batches: Sequence[HeldBatch], landing: Landing) -> None:
    """The ack commit point: each batch's written rows plus rejected records equal its records."""
    import pyarrow.compute as pc

    expected: Counter[str] = Counter()
    for b in batches:
        expected[b.id] += len(b.raw_items)
    landed: Counter[str] = Counter()
    for part in landing.tables:
        counts = pc.value_counts(part.table.column("_batch_id"))
        for entry in counts.to_pylist():
            landed[entry["values"]] += entry["counts"]
    for r in landing.rejects:
        landed[r.batch_id] += 1
    if landed != expected:
        wrong = sorted(b for b in expected.keys() | landed.keys() if landed[b] != expected[b])
        raise KtExportError(
            f"Refusing to acknowledge a flush: the rows written and rejected do not add up to the records "
            f"held for batch(es) {', '.join(wrong[:5])}. Nothing was acknowledged; the batches will be "
            "delivered again. This is a bug: please report it with the task log."
        )
