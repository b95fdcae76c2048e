"""The drain loop: lease batches, land them (verified Parquet or Iceberg commits), then acknowledge.

Plain Python, no Airflow: the operator adapts it, the benchmark and the crash
suite drive it directly.

How the time rules are kept (docs/architecture.md section 3):

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
  written and verified (or, with an Iceberg sink, the commit holding them is
  visible), never after its lease ran out on our clock. A failed write
  acknowledges nothing and raises.
* A record that cannot be a row goes to the rejects table with its exact text
  (:mod:`.lake.rejects`); written plus rejected rows must equal each batch's
  records before anything is acknowledged.
* A flush also starts early when the held batches span ``max_flush_partitions``
  partition files (counted exactly as each batch joins, :mod:`.buffer`), or more files than the
  oldest lease leaves time for at the pace this run measured, and writes its files concurrently
  (:mod:`.lake.sinks`). A flush that would not fit lands in several steps, each acknowledged in
  time; the fetchers lease no further ahead than the writer lands within a lease; and when leases
  ran out anyway, the flush limits halve for the rest of the run (:mod:`.pace`).
* A single batch that cannot land within its lease even alone is written but never acknowledged
  late: it is counted (``wide_batches``) and redelivered; a second one in a run stops the run with
  an error saying what to change, rather than keep writing copies.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Protocol

from airflow_provider_ktexport.buffer import Buffer, HeldBatch
from airflow_provider_ktexport.exceptions import (
    KtExportConfigError,
    KtExportError,
    KtExportProtocolError,
    KtExportRejectsError,
    KtExportTransientError,
)
from airflow_provider_ktexport.fetcher import BatchSource, Fetcher, HandoffQueue
from airflow_provider_ktexport.lake.layout import REJECTED_DIR
from airflow_provider_ktexport.lake.ledger import DEFAULT_REDELIVERY_WINDOW, drop_repeats, new_flush_id
from airflow_provider_ktexport.lake.partitions import EVENT_TIME_COLUMNS
from airflow_provider_ktexport.lake.rejects import Landing, Reject, land_records, rejects_table
from airflow_provider_ktexport.lake.schema import PartitionTable
from airflow_provider_ktexport.lake.sinks import MAX_WRITE_CONCURRENCY, FlushInfo, Landed, ParquetSink, Sink
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.pace import FlushPace
from airflow_provider_ktexport.protocol import is_ackable_id, redact

log = logging.getLogger(__name__)

#: Partition keys the provider knows how to derive.
PARTITION_KEYS = ("record_type", "event_date", "ingest_date")

#: Acknowledgements of one flush sent at once: a 50k-record flush is ~100 DELETEs, which must not
#: eat the lease one round trip at a time when the server is far away.
ACK_CONCURRENCY = 16


#: Entries of each list kept in a run's XCom summary (the Asset event's extra keeps as many).
MAX_SUMMARY_FILES = 500


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
    ack_quarantined_after: int = 3
    include_raw: bool = False
    partition_by: tuple[str, ...] = ("record_type", "event_date")
    source: str = "ktexport_default"
    max_reject_share: float | None = None
    max_flush_partitions: int = 2000
    #: None: 64 on an object store, 8 on a local disk (see lake.sinks.default_write_concurrency).
    write_concurrency: int | None = None
    #: Seconds a flush left in doubt (a batch not acknowledged) is remembered, so its records'
    #: redelivery is dropped as already landed: 7 days, since redeliveries wait for the next run.
    redelivery_window: float = DEFAULT_REDELIVERY_WINDOW

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
        if self.ack_quarantined_after < 1:
            raise KtExportConfigError(
                f"ack_quarantined_after must be at least 1, got {self.ack_quarantined_after!r}"
            )
        if self.max_reject_share is not None and not 0 <= self.max_reject_share < 1:
            raise KtExportConfigError(
                f"max_reject_share must be a share from 0 up to (not including) 1, or None to only warn; "
                f"got {self.max_reject_share!r}"
            )
        if self.max_flush_partitions < 1:
            raise KtExportConfigError(
                f"max_flush_partitions must be at least 1, got {self.max_flush_partitions!r}"
            )
        if self.write_concurrency is not None and not 1 <= self.write_concurrency <= MAX_WRITE_CONCURRENCY:
            raise KtExportConfigError(
                f"write_concurrency must be between 1 and {MAX_WRITE_CONCURRENCY}, or None for the default "
                f"(64 on an object store, 8 on a local disk); got {self.write_concurrency!r}"
            )
        if self.redelivery_window < self.lease_seconds:
            raise KtExportConfigError(
                f"redelivery_window must be at least the lease ({self.lease_seconds:g} s), got "
                f"{self.redelivery_window!r}: a redelivery later than the window lands twice; keep the "
                "default (7 days) unless runs are more frequent than that"
            )
        unknown = [k for k in self.partition_by if k not in PARTITION_KEYS]
        if unknown or not self.partition_by or len(set(self.partition_by)) != len(self.partition_by):
            raise KtExportConfigError(
                f"partition_by={list(self.partition_by)!r} is not valid: use distinct keys from {list(PARTITION_KEYS)}"
            )


class Metrics(Protocol):
    """Where a drain reports its counters, timings and gauges (names without a prefix).

    The operator adapts Airflow's ``Stats``; the default reports nothing. Docs: docs/monitoring.md.
    """

    def incr(self, name: str, count: int) -> None: ...

    def timing(self, name: str, seconds: float) -> None: ...

    def gauge(self, name: str, value: float) -> None: ...


class NoMetrics:
    """Reports nothing."""

    def incr(self, name: str, count: int) -> None:
        pass

    def timing(self, name: str, seconds: float) -> None:
        pass

    def gauge(self, name: str, value: float) -> None:
        pass


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


class Drain:
    """One run of the drain: ``Drain(client, writer, config).run()``.

    :param client: a ``KtExportClient`` (or anything with ``get_batch``/``ack``).
    :param writer: where flushes land: a ``LakeWriter`` (Parquet files) or any
        :class:`~airflow_provider_ktexport.lake.sinks.Sink` (Iceberg tables).
    :param config: the run's settings.
    :param should_stop: polled between steps; ``True`` stops leasing at once (kill, timeout).
    :param logger: where progress lines go (a ``logging.Logger`` or Airflow's task logger).
    :param metrics: where counters, timings and gauges go (see :class:`Metrics`); none by default.
    """

    def __init__(
        self,
        client: BatchSource,
        writer: LakeWriter | Sink,
        config: DrainConfig,
        *,
        should_stop: Callable[[], bool] | None = None,
        logger: Any = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.client = client
        self.metrics: Metrics = metrics or NoMetrics()
        self.sink: Sink = (
            ParquetSink(writer, concurrency=config.write_concurrency)
            if isinstance(writer, LakeWriter)
            else writer
        )
        self.config = config
        self._should_stop = should_stop or (lambda: False)
        self.log = logger or log
        self.result = DrainResult()
        self._answered = False  # a GET of this run got an answer (a batch or empty)
        self.buffer = Buffer(config.partition_by)
        self.pace = FlushPace(config.flush_records, config.max_flush_partitions, config.lease_seconds)
        self._handoff: HandoffQueue | None = None  # the fetchers' hand-off, told how far to lease ahead
        self._schemas: dict[str, Any] = {}
        self._ack_pool = ThreadPoolExecutor(max_workers=ACK_CONCURRENCY, thread_name_prefix="ktexport-ack")
        # Stored data must not hold the key, yet must keep every other byte: the client masks its
        # own key only (quarantined bodies anywhere, records inside their JSON strings); the
        # quarantine's reason is text for humans, where the token= belt applies too.
        self._redact_body: Callable[[bytes], bytes] = getattr(client, "redact_body", None) or (lambda b: b)
        self._mask_records: Callable[[list[bytes]], list[bytes]] = getattr(client, "mask_records", None) or (
            lambda raws: raws
        )
        self._redact_text: Callable[[str], str] = getattr(client, "redact_text", None) or (
            lambda text: redact(text, None)
        )

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

        self._prove_destination()
        fetcher = Fetcher(self.client, cfg.max_in_flight, run_deadline, keep_polling)
        self._handoff = fetcher.results
        self._pace_fetchers()
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
                if self._due_by_lease(now):
                    self._flush("lease age")
                    continue
                wait = run_deadline - now
                if self.buffer:
                    wait = min(wait, self.buffer.oldest_lease() + cfg.flush_seconds - now)
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
                    if self._due_by_records():
                        self._flush("flush_records")
                    elif self._due_by_partitions():
                        self._flush("max_flush_partitions")
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
            self.sink.close()
        self.result.stopped = stopped
        self.result.duration_s = time.monotonic() - started
        self.log.info(
            "Drain finished (%s): %d records in %d batches, %d files, %d bytes, %d acked, %d ack failed, "
            "%d leases expired, %d rejected, %d quarantined, %.1f s",
            stopped,
            self.result.records,
            self.result.batches,
            len(self.result.files),
            self.result.bytes,
            self.result.acked,
            self.result.ack_failed,
            self.result.lease_expired,
            self.result.rejected,
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

    def _prove_destination(self) -> None:
        """Fail before the first lease when the destination cannot take data.

        A destination found broken at the first flush has leased batches by then (a whole queue,
        on a fast source), and one found broken only when data arrives passes every empty run.
        """
        try:
            self.sink.prove_writable()
        except BaseException:
            self._ack_pool.shutdown(wait=False)
            self.sink.close()
            raise

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
        if not self.buffer:
            return
        if killed:
            # Land what is held only while the oldest lease leaves room to write and acknowledge.
            oldest_age = time.monotonic() - self.buffer.oldest_lease()
            if oldest_age > self.config.flush_seconds:
                self.log.warning(
                    "Stopping with %d leased batches too close to their lease end to land safely; "
                    "the server will deliver them again.",
                    len(self.buffer),
                )
                return
        self._flush("end of run")

    # -- buffering and the flush rules ---------------------------------------------------------------

    def _hold(self, batch: Any) -> None:
        self.buffer.add(batch)
        self.result.batches += 1
        self._pace_fetchers()

    def _pace_fetchers(self, landing: int = 0) -> None:
        """Tell the fetchers how many more batches to lease ahead of the writer, given the held
        ones and the ``landing`` ones a flush has taken but not landed yet."""
        if self._handoff is not None:
            self._handoff.lease_ahead = self.pace.lease_ahead(len(self.buffer) + landing)

    def _due_by_lease(self, now: float) -> bool:
        """The oldest held lease is ``flush_seconds`` old: land it while the lease leaves time to ack."""
        return bool(self.buffer) and now >= self.buffer.oldest_lease() + self.config.flush_seconds

    def _due_by_records(self) -> bool:
        """``flush_records`` are held (halved after leases ran out): memory is set by the flush
        size, not by the queue."""
        return self.buffer.records >= self.pace.flush_records

    def _due_by_partitions(self) -> bool:
        """A flush of what is held would write ``max_flush_partitions`` files (a backfill over many
        days), or more than the oldest lease leaves time for at this run's measured pace: each
        file costs round trips on an object store, so land before the leases run out."""
        if not self.buffer:
            return False
        limit = self.pace.partition_limit(self._time_left(self.buffer.oldest_lease()))
        return self.buffer.partitions >= limit

    def _time_left(self, leased_at: float) -> float:
        """Seconds until a lease that started at ``leased_at`` may no longer be acknowledged."""
        return leased_at + self.config.lease_seconds - self._ack_margin() - time.monotonic()

    def _take_ready(self, fetcher: Fetcher, backlog: deque[tuple[str, Any]]) -> None:
        """Hold every batch the fetchers have already handed over, up to the flush rules.

        Their leases started when they were fetched: they go into the next flush together
        instead of one flush (and one round of acknowledgements) each while their leases run.
        """
        while not (self._due_by_records() or self._due_by_partitions()):
            try:
                kind, item = fetcher.results.get_nowait()
            except queue.Empty:
                return
            if kind != "batch":
                backlog.append((kind, item))  # the loop handles it next, in order
                return
            self._hold(item)

    def _quarantine(self, exc: KtExportProtocolError) -> None:
        body = self._redact_body(exc.body)
        path = self.sink.quarantine(body, reason=self._redact_text(str(exc)), batch_id=exc.batch_id)
        self.result.quarantined += 1
        self._metric("incr", "batches_quarantined", 1)
        outcome = "not acknowledged: the server will deliver it again after its lease"
        if self.config.ack_quarantined and exc.batch_id:
            seen = self.sink.quarantine_sightings(body)
            if not is_ackable_id(exc.batch_id):
                outcome = "not acknowledged: its id is not one a DELETE may carry"
            elif seen < self.config.ack_quarantined_after:
                outcome = (
                    f"not acknowledged yet: seen {seen} of the {self.config.ack_quarantined_after} times "
                    "ack_quarantined waits for (a transient fault heals by redelivery)"
                )
            elif not self.sink.quarantine_kept(body):
                outcome = "not acknowledged: its stored copy did not read back (stored again)"
            elif self._ack_one(exc.batch_id):
                self.result.acked += 1
                self._metric("incr", "batches_acked", 1)
                outcome = f"acknowledged after {seen} sightings (ack_quarantined=True)"
            else:
                self.result.ack_failed += 1
                self._metric("incr", "ack_failures", 1)
                outcome = "its acknowledgement failed; it will be delivered again"
        self.log.warning(
            "Quarantined an undecodable batch body (%d bytes, id %s) at %s; %s",
            len(exc.body),
            exc.batch_id or "unknown",
            path,
            outcome,
        )

    # -- flushing -----------------------------------------------------------------------------------

    def _flush(self, reason: str) -> None:
        """Land and acknowledge every held batch: in one step, or in several (oldest lease first)
        when this run's measured pace says their files would not all land inside the oldest lease."""
        pending = sorted(self.buffer.take(), key=lambda b: b.leased_at)
        held = (
            sum(len(b.raw_items) for b in pending),
            len(frozenset().union(*(b.partitions for b in pending))),
        )
        step = late = 0
        while pending:
            n = self.pace.next_step(pending, self._time_left(pending[0].leased_at))
            batches, pending = pending[:n], pending[n:]
            step += 1
            late += self._land_step(
                batches, reason if step == 1 and not pending else f"{reason}, step {step}"
            )
            self._pace_fetchers(len(pending))
        if late:
            self._slow_down(*held)

    def _land_step(self, batches: list[HeldBatch], reason: str) -> int:
        """Land ``batches`` (build, write, verify), acknowledge them, and learn the pace from it;
        returns how many could not be acknowledged because their leases had run out."""
        batches, late_before = self._unexpired(batches)
        if not batches:
            return late_before
        t0 = time.monotonic()
        oldest_lease = min(b.leased_at for b in batches)
        # Masked before anything is built, so rows, _raw, rejects and _record_key all come from the
        # same text and the key is recoverable from none of them (not even by hashing guesses).
        records = self._mask_records([raw for b in batches for raw in b.raw_items])
        batch_ids = [b.id for b in batches for _ in b.raw_items]
        ingested_at = datetime.now(UTC)
        landing = land_records(
            records,
            batch_ids,
            source=self.config.source,
            ingested_at=ingested_at,
            partition_by=self.config.partition_by,
            include_raw=self.config.include_raw,
            known_schema=self._known_schema,
        )
        for part in landing.tables:
            # Later flushes build at these types; the sink publishes them (schema store, table
            # schema) before any data at them is visible.
            self._schemas[part.record_type] = part.table.schema
        self._check_complete(batches, landing)
        # A batch and its redelivery in one flush (a GET answered late in its lease): one copy.
        tables, repeats = drop_repeats(landing.tables, [b.id for b in batches])
        rejected = rejects_table(landing.rejects, source=self.config.source, ingested_at=ingested_at)
        info = FlushInfo(
            batch_ids=[b.id for b in batches],
            records=len(records) - len(landing.rejects),
            rejected=len(landing.rejects),
            source=self.config.source,
            ingest_day=ingested_at.strftime("%Y-%m-%d"),
            land_by=oldest_lease + self.config.lease_seconds - self._ack_margin(),
            flush_id=new_flush_id(),
            redelivery_window=self.config.redelivery_window,
        )
        info.tally.add(repeats)
        landed = self.sink.land(tables, rejected, info)
        self._count_deduped(info.tally.deduped)
        written_bytes = sum(piece.bytes for piece in landed)
        self.result.files.extend(piece.uri for piece in landed if not piece.rejected)
        self.result.rejected_files.extend(piece.uri for piece in landed if piece.rejected)
        self.result.landed.extend(piece.extra for piece in landed if piece.extra)
        for piece in landed:
            if not piece.rejected:
                by_type = self.result.rows_by_type
                by_type[piece.record_type] = by_type.get(piece.record_type, 0) + piece.rows
        self.result.bytes += written_bytes
        self.result.records += info.records
        self.result.rejected += info.rejected
        self.result.add_landed(landed)
        self._metric("incr", "records_landed", info.records)
        self._metric("incr", "records_rejected", info.rejected)
        self._note_lag(landing.tables, ingested_at)
        t_written = time.monotonic()
        acked, expired = self._ack_all(batches)
        self.sink.settle(info, acked_all=acked == len(batches))
        self.result.flushes += 1
        prev = self.result.max_ack_lease_age_s or 0.0
        self.result.max_ack_lease_age_s = max(prev, time.monotonic() - oldest_lease)
        elapsed = time.monotonic() - t0
        self._learn_pace(len(landed), len(batches), t_written - t0, elapsed)
        self._metric("timing", "flush_duration", elapsed)
        self.log.info(
            "Flush (%s): %d records from %d batches -> %d files (%d rejected records), %d bytes in %.2f s "
            "(%.0f records/s); acked %d/%d, oldest lease %.1f s old at ack",
            reason,
            len(records),
            len(batches),
            len(landed),
            len(landing.rejects),
            written_bytes,
            elapsed,
            len(records) / elapsed if elapsed > 0 else 0.0,
            acked,
            len(batches),
            t_written - oldest_lease,
        )
        failed = len(batches) - acked - expired
        if failed:
            self.log.warning(
                "%d acknowledgements failed (lease expired on the server or id unknown): those batches will "
                "be delivered again; the flush stays in doubt, so their records are dropped as already landed.",
                failed,
            )
        # A batch whose landing alone takes its whole lease is too wide for the store: it would
        # miss the lease even landed the moment it was leased. One that waited was only late.
        if expired and len(batches) == 1 and t_written - t0 >= self.config.lease_seconds - self._ack_margin():
            self._too_wide(batches[0])
        if landing.rejects:
            self._report_rejects(landing.rejects, len(records))
        return expired + late_before

    def _unexpired(self, batches: list[HeldBatch]) -> tuple[list[HeldBatch], int]:
        """The batches whose lease has not run out before their write starts, and how many had.

        A batch past its lease may already be redelivered to another drain (or this one): writing
        it would race that copy, and it could not be acknowledged anyway. It is left to the server.
        """
        live = [b for b in batches if self._time_left(b.leased_at) > 0]
        late = len(batches) - len(live)
        if late:
            self.result.lease_expired += late
            self._metric("incr", "leases_expired", late)
            self.log.warning(
                "%d batches' %g s leases ran out before their write started: not written (the server "
                "delivers them again).",
                late,
                self.config.lease_seconds,
            )
        return live, late

    def _count_deduped(self, rows: int) -> None:
        """Rows a flush did not write because a flush in doubt had landed them (redeliveries)."""
        if rows:
            self.result.deduped += rows
            self._metric("incr", "records_deduped", rows)
            self.log.info(
                "Dropped %d redelivered records already landed by a flush in doubt (exactly once).", rows
            )

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

    def _check_complete(self, batches: list[HeldBatch], landing: Landing) -> None:
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

    def _ack_all(self, batches: list[HeldBatch]) -> tuple[int, int]:
        """Acknowledge every batch whose lease has not run out on our clock; (acked, expired)."""
        outcomes = list(self._ack_pool.map(self._ack_held, batches))
        acked = sum(1 for o in outcomes if o == "acked")
        expired = sum(1 for o in outcomes if o == "expired")
        self.result.acked += acked
        self.result.lease_expired += expired
        self.result.ack_failed += len(outcomes) - acked - expired
        self._metric("incr", "batches_acked", acked)
        self._metric("incr", "leases_expired", expired)
        self._metric("incr", "ack_failures", len(outcomes) - acked - expired)
        if expired:
            self.log.warning(
                "%d batches landed after their %g s lease had run out: not acknowledged (the server may "
                "have leased them again); the flush stays in doubt, so their redelivery is dropped as already "
                "landed. Lower flush_seconds if this repeats across runs.",
                expired,
                self.config.lease_seconds,
            )
        return acked, expired

    def _ack_margin(self) -> float:
        # The server's lease began before our clock saw the answer: keep a small margin.
        return min(1.0, 0.05 * self.config.lease_seconds)

    def _ack_held(self, batch: HeldBatch) -> str:
        if time.monotonic() >= batch.leased_at + self.config.lease_seconds - self._ack_margin():
            return "expired"
        return "acked" if self._ack_one(batch.id) else "failed"

    def _ack_one(self, batch_id: str) -> bool:
        try:
            return bool(self.client.ack(batch_id))
        except KtExportError as exc:
            # The records are safely in the lake; a failed ack only means a redelivered copy.
            self.log.warning("Acknowledging batch %s failed: %s", batch_id, exc)
            return False

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

    def _note_lag(self, tables: Sequence[PartitionTable], now: datetime) -> None:
        """The age of the oldest event time landed; a metric, so it can never fail a flush."""
        try:
            oldest = _oldest_event_us(tables)
        except Exception:  # noqa: BLE001 - a metric must not cost the flush its acknowledgements
            self.log.debug("Could not compute the landed records' age", exc_info=True)
            return
        if oldest is not None:
            age = (now.timestamp() * 1_000_000 - oldest) / 1_000_000
            prev = self.result.oldest_record_age_s
            self.result.oldest_record_age_s = age if prev is None else max(prev, age)
            # This flush's lag (not the run's maximum): the gauge follows the queue as it drains.
            self._metric("gauge", "oldest_record_age_seconds", age)

    def _metric(self, kind: str, name: str, value: float) -> None:
        """Report one metric; a metrics backend can never fail a flush or cost its acknowledgements."""
        if kind == "incr" and not value:
            return  # counters only move when something happened: no zero packets
        try:
            getattr(self.metrics, kind)(name, value)
        except Exception:  # noqa: BLE001 - a metric must not cost the flush its acknowledgements
            self.log.debug("Could not report metric %s", name, exc_info=True)


def _oldest_event_us(tables: Sequence[PartitionTable]) -> int | None:
    """The earliest event time of the tables in microseconds since the epoch, in Arrow only
    (a Python datetime cannot hold every instant a timestamp column can)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    oldest: int | None = None
    for part in tables:
        for name in EVENT_TIME_COLUMNS:
            if name in part.table.column_names and pa.types.is_timestamp(part.table.schema.field(name).type):
                col = part.table.column(name).cast(pa.timestamp("us", tz="UTC")).cast(pa.int64())
                value = pc.min(col).as_py()
                if value is not None and (oldest is None or value < oldest):
                    oldest = value
                break
    return oldest
