"""The drain loop: lease batches, land them as verified Parquet, then acknowledge.

Plain Python, no Airflow: the operator adapts it, the benchmark and the crash
suite drive it directly.

How the time rules are kept (design.md section 3):

* Fetcher threads (``max_in_flight`` of them) keep GETs outstanding while the
  main thread decodes, writes and acknowledges, so network latency overlaps
  with CPU work. Every GET is given a deadline (the end of the run) so none
  can outlive it; a batch leased by an abandoned request is redelivered.
* The main thread holds each batch with the monotonic time its lease started
  (``Batch.leased_at``) and flushes when the oldest is ``flush_seconds`` old,
  when ``flush_records`` are buffered, when the queue answers empty, and at the
  end. ``flush_seconds`` is validated to leave a margin under the lease for
  the write and the acknowledgements.
* A batch is acknowledged only after every file holding its records was
  written and verified. A failed write acknowledges nothing and raises.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_provider_ktexport.exceptions import (
    KtExportConfigError,
    KtExportError,
    KtExportProtocolError,
    KtExportTransientError,
)
from airflow_provider_ktexport.fetcher import BatchSource, Fetcher
from airflow_provider_ktexport.lake.partitions import EVENT_TIME_COLUMNS
from airflow_provider_ktexport.lake.schema import PartitionTable, build_tables
from airflow_provider_ktexport.lake.writer import LakeWriter

log = logging.getLogger(__name__)

#: Partition keys the provider knows how to derive.
PARTITION_KEYS = ("record_type", "event_date", "ingest_date")

#: Acknowledgements of one flush sent at once: a 50k-record flush is ~100 DELETEs, which must not
#: eat the lease one round trip at a time when the server is far away.
ACK_CONCURRENCY = 16


def connections_needed(max_in_flight: int) -> int:
    """HTTP connections a drain keeps busy at once: outstanding GETs plus concurrent acks."""
    return max_in_flight + ACK_CONCURRENCY


def min_lease_margin(lease_seconds: float) -> float:
    """Time a flush must leave under the lease for writing and acknowledging."""
    return max(2.0, 0.25 * lease_seconds)


@dataclass(frozen=True)
class DrainConfig:
    """Settings of one drain run; see docs/configuration.md for each."""

    max_runtime: float = 600.0
    flush_records: int = 50_000
    flush_seconds: float = 60.0
    lease_seconds: float = 120.0
    stop_when_empty: bool = True
    drain_until: float | None = None
    max_in_flight: int = 4
    ack_quarantined: bool = False
    include_raw: bool = False
    partition_by: tuple[str, ...] = ("record_type", "event_date")
    source: str = "ktexport_default"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``KtExportConfigError`` naming the setting that is wrong and what to do."""
        if self.max_runtime <= 0:
            raise KtExportConfigError(f"max_runtime must be positive, got {self.max_runtime!r}")
        if self.flush_records < 1:
            raise KtExportConfigError(f"flush_records must be at least 1, got {self.flush_records!r}")
        if self.lease_seconds <= 0:
            raise KtExportConfigError(f"lease_seconds must be positive, got {self.lease_seconds!r}")
        if self.flush_seconds <= 0:
            raise KtExportConfigError(f"flush_seconds must be positive, got {self.flush_seconds!r}")
        margin = min_lease_margin(self.lease_seconds)
        if self.flush_seconds > self.lease_seconds - margin:
            raise KtExportConfigError(
                f"flush_seconds={self.flush_seconds:g} leaves too little of the {self.lease_seconds:g} s lease "
                f"to write and acknowledge: keep it at most {self.lease_seconds - margin:g} s "
                f"(lease_seconds minus a margin of {margin:g} s), or lower it."
            )
        if not 1 <= self.max_in_flight <= 32:
            raise KtExportConfigError(f"max_in_flight must be between 1 and 32, got {self.max_in_flight!r}")
        unknown = [k for k in self.partition_by if k not in PARTITION_KEYS]
        if unknown or not self.partition_by or len(set(self.partition_by)) != len(self.partition_by):
            raise KtExportConfigError(
                f"partition_by={list(self.partition_by)!r} is not valid: use distinct keys from {list(PARTITION_KEYS)}"
            )


@dataclass
class DrainResult:
    """What a run did; ``summary()`` is the small dict that goes to XCom."""

    records: int = 0
    batches: int = 0
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    acked: int = 0
    ack_failed: int = 0
    quarantined: int = 0
    flushes: int = 0
    duration_s: float = 0.0
    stopped: str = ""
    oldest_record_age_s: float | None = None
    max_ack_lease_age_s: float | None = None

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["duration_s"] = round(self.duration_s, 3)
        return out


@dataclass
class _Held:
    """A leased batch whose records wait in the buffer."""

    id: str
    leased_at: float
    records: int


class Drain:
    """One run of the drain: ``Drain(client, writer, config).run()``.

    :param client: a ``KtExportClient`` (or anything with ``get_batch``/``ack``).
    :param writer: the ``LakeWriter`` of the destination.
    :param config: the run's settings.
    :param should_stop: polled between steps; ``True`` stops leasing at once (kill, timeout).
    :param logger: where progress lines go (a ``logging.Logger`` or Airflow's task logger).
    """

    def __init__(
        self,
        client: BatchSource,
        writer: LakeWriter,
        config: DrainConfig,
        *,
        should_stop: Callable[[], bool] | None = None,
        logger: Any = None,
    ) -> None:
        self.client = client
        self.writer = writer
        self.config = config
        self._should_stop = should_stop or (lambda: False)
        self.log = logger or log
        self.result = DrainResult()
        self._answered = False  # a GET of this run got an answer (a batch or empty)
        self._held: list[_Held] = []
        self._records: list[bytes] = []
        self._record_batch: list[str] = []
        self._schemas: dict[str, Any] = {}
        self._ack_pool = ThreadPoolExecutor(max_workers=ACK_CONCURRENCY, thread_name_prefix="ktexport-ack")

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> DrainResult:
        cfg = self.config
        started = time.monotonic()
        run_deadline = started + cfg.max_runtime
        # drain_until is wall-clock (it comes from the sensor's XCom); convert once.
        until_mono = None
        if cfg.drain_until is not None:
            until_mono = started + (cfg.drain_until - time.time()) + self.client.long_poll_seconds

        def keep_polling() -> bool:
            return not cfg.stop_when_empty or (until_mono is not None and time.monotonic() < until_mono)

        fetcher = Fetcher(self.client, cfg.max_in_flight, run_deadline, keep_polling)
        fetcher.start()
        backlog: deque[tuple[str, Any]] = deque()
        stopped = "max_runtime"
        try:
            while True:
                if self._should_stop():
                    stopped = "stopped"
                    break
                now = time.monotonic()
                if now >= run_deadline:
                    break
                if self._held and now >= self._oldest_lease() + cfg.flush_seconds:
                    self._flush("lease age")
                    continue
                wait = run_deadline - now
                if self._held:
                    wait = min(wait, self._oldest_lease() + cfg.flush_seconds - now)
                try:
                    if backlog:
                        kind, item = backlog.popleft()
                    else:
                        kind, item = fetcher.results.get(timeout=max(0.01, min(wait, 1.0)))
                except queue.Empty:
                    if not fetcher.alive() and fetcher.results.empty():
                        break  # every fetcher reached the run deadline
                    continue
                if kind != "error":
                    self._answered = True
                if kind == "batch":
                    self._hold(item)
                    self._take_ready(fetcher, backlog)
                    if len(self._records) >= cfg.flush_records:
                        self._flush("flush_records")
                elif kind == "empty":
                    self._flush("queue empty")
                    if not keep_polling():
                        stopped = "empty"
                        break
                elif isinstance(item, KtExportProtocolError):
                    self._quarantine(item)
                elif self._ends_quietly(item):
                    continue  # that fetcher has stopped; the others run to the deadline
                else:
                    raise item
            fetcher.stop()
            self._finish(fetcher, wait_for_fetchers=stopped != "stopped", killed=stopped == "stopped")
        except BaseException:
            # Land what is held if there is time (its records are valid), then re-raise the cause.
            fetcher.abandon()
            try:
                self._finish(fetcher, wait_for_fetchers=False, killed=True)
            except Exception:
                self.log.exception("Could not land the held batches while failing; they will be redelivered")
            raise
        finally:
            fetcher.stop()
            self._ack_pool.shutdown(wait=False)
        self.result.stopped = stopped
        self.result.duration_s = time.monotonic() - started
        self.log.info(
            "Drain finished (%s): %d records in %d batches, %d files, %d bytes, %d acked, %d ack failed, "
            "%d quarantined, %.1f s",
            stopped,
            self.result.records,
            self.result.batches,
            len(self.result.files),
            self.result.bytes,
            self.result.acked,
            self.result.ack_failed,
            self.result.quarantined,
            self.result.duration_s,
        )
        return self.result

    def _ends_quietly(self, exc: BaseException) -> bool:
        """A transient failure in the run's last seconds, from a server that answered earlier in it.

        Its retries would pass ``max_runtime``: the run ends as if the time were up (what it holds
        still lands) instead of failing the task; the next run takes over. A server that has not
        answered once in this run fails the task, so an outage is never hidden.
        """
        if not (isinstance(exc, KtExportTransientError) and exc.out_of_time and self._answered):
            return False
        self.log.warning("The run's time ran out while the export API was failing; ending the run: %s", exc)
        return True

    def _finish(self, fetcher: Fetcher, *, wait_for_fetchers: bool, killed: bool) -> None:
        """Collect batches that in-flight GETs still deliver, then land what is held."""
        if wait_for_fetchers:
            # In-flight GETs end within one long poll (an empty queue answers then) or at the run
            # deadline; their batches land now rather than come back after their lease.
            end = time.monotonic() + self.client.long_poll_seconds + 5.0
            while (fetcher.alive() or not fetcher.results.empty()) and time.monotonic() < end:
                try:
                    kind, item = fetcher.results.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "batch":
                    self._hold(item)
                elif kind == "error" and isinstance(item, KtExportProtocolError):
                    self._quarantine(item)
        fetcher.abandon()
        if not self._held:
            return
        if killed:
            # Land what is held only while the oldest lease leaves room to write and acknowledge.
            oldest_age = time.monotonic() - self._oldest_lease()
            if oldest_age > self.config.flush_seconds:
                self.log.warning(
                    "Stopping with %d leased batches too close to their lease end to land safely; "
                    "the server will deliver them again.",
                    len(self._held),
                )
                return
        self._flush("end of run")

    # -- buffering ----------------------------------------------------------------------------------

    def _hold(self, batch: Any) -> None:
        self._held.append(_Held(batch.id, batch.leased_at, len(batch.raw_items)))
        self._records.extend(batch.raw_items)
        self._record_batch.extend([batch.id] * len(batch.raw_items))
        self.result.batches += 1

    def _oldest_lease(self) -> float:
        # Fetchers hand batches over in completion order, not lease order.
        return min(h.leased_at for h in self._held)

    def _take_ready(self, fetcher: Fetcher, backlog: deque[tuple[str, Any]]) -> None:
        """Hold every batch the fetchers have already handed over, up to ``flush_records``.

        Their leases started when they were fetched: they go into the next flush together
        instead of one flush (and one round of acknowledgements) each while their leases run.
        """
        while len(self._records) < self.config.flush_records:
            try:
                kind, item = fetcher.results.get_nowait()
            except queue.Empty:
                return
            if kind != "batch":
                backlog.append((kind, item))  # the loop handles it next, in order
                return
            self._hold(item)

    def _quarantine(self, exc: KtExportProtocolError) -> None:
        path = self.writer.quarantine(exc.body, reason=str(exc), batch_id=exc.batch_id)
        self.result.quarantined += 1
        acked = False
        if self.config.ack_quarantined and exc.batch_id:
            acked = self.client.ack(exc.batch_id)
        self.log.warning(
            "Quarantined an undecodable batch body (%d bytes, id %s) at %s; %s",
            len(exc.body),
            exc.batch_id or "unknown",
            path,
            "acknowledged (ack_quarantined=True)"
            if acked
            else "not acknowledged: the server will deliver it again after its lease",
        )

    # -- flushing -----------------------------------------------------------------------------------

    def _flush(self, reason: str) -> None:
        if not self._held:
            return
        t0 = time.monotonic()
        held, records, batch_ids = self._held, self._records, self._record_batch
        self._held, self._records, self._record_batch = [], [], []
        ingested_at = datetime.now(UTC)
        tables = build_tables(
            records,
            batch_ids,
            source=self.config.source,
            ingested_at=ingested_at,
            partition_by=self.config.partition_by,
            include_raw=self.config.include_raw,
            known_schema=self._known_schema,
        )
        for part in tables:
            # Later flushes build at these (widened) types; the writer publishes a widening to the
            # lake's schema store before any file written at the new types is visible.
            self._schemas[part.record_type] = part.table.schema
        written_bytes = 0
        for part in tables:
            written = self.writer.write(part.table, part.partition)
            self.result.files.append(written.uri)
            written_bytes += written.bytes
        self.result.bytes += written_bytes
        self.result.records += len(records)
        self._note_lag(tables, ingested_at)
        t_written = time.monotonic()
        # Every file of this flush is verified: acknowledge all its batches, concurrently so a
        # large flush does not eat its lease one round trip at a time.
        oldest_lease = min(h.leased_at for h in held)
        oldest_age = t_written - oldest_lease
        outcomes = list(self._ack_pool.map(self._ack_one, [h.id for h in held]))
        acked = sum(outcomes)
        self.result.acked += acked
        self.result.ack_failed += len(outcomes) - acked
        self.result.flushes += 1
        prev = self.result.max_ack_lease_age_s or 0.0
        self.result.max_ack_lease_age_s = max(prev, time.monotonic() - oldest_lease)
        elapsed = time.monotonic() - t0
        self.log.info(
            "Flush (%s): %d records from %d batches -> %d files, %d bytes in %.2f s (%.0f records/s); "
            "acked %d/%d, oldest lease %.1f s old at ack",
            reason,
            len(records),
            len(held),
            len(tables),
            written_bytes,
            elapsed,
            len(records) / elapsed if elapsed > 0 else 0.0,
            acked,
            len(held),
            oldest_age,
        )
        if acked < len(held):
            self.log.warning(
                "%d acknowledgements failed (lease expired or id unknown): those batches will be delivered "
                "again and land twice; remove duplicates by _record_key.",
                len(held) - acked,
            )

    def _ack_one(self, batch_id: str) -> bool:
        try:
            return bool(self.client.ack(batch_id))
        except KtExportError as exc:
            # The records are safely in the lake; a failed ack only means a redelivered copy.
            self.log.warning("Acknowledging batch %s failed: %s", batch_id, exc)
            return False

    def _known_schema(self, record_type: str) -> Any:
        if record_type not in self._schemas:
            self._schemas[record_type] = self.writer.load_schema(record_type)
        return self._schemas[record_type]

    def _note_lag(self, tables: Sequence[PartitionTable], now: datetime) -> None:
        import pyarrow.compute as pc

        oldest = None
        for part in tables:
            for name in EVENT_TIME_COLUMNS:
                if name in part.table.column_names and str(part.table.schema.field(name).type).startswith(
                    "timestamp"
                ):
                    value = pc.min(part.table.column(name)).as_py()
                    if value is not None and (oldest is None or value < oldest):
                        oldest = value
                    break
        if oldest is not None:
            age = (now - oldest).total_seconds()
            prev = self.result.oldest_record_age_s
            self.result.oldest_record_age_s = age if prev is None else max(prev, age)
