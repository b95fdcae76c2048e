"""The drain loop: lease batches, land them (verified Parquet or Iceberg commits), then acknowledge.

This module holds :class:`Drain` and its polling loop; the flush (:mod:`.flush`), the
acknowledgements (:mod:`.acks`), the quarantine (:mod:`.quarantine`) and the run's counters
(:mod:`.result`, :mod:`.progress`) live beside it in the ``drain`` package.

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
  (:mod:`airflow_provider_ktexport.lake.rejects`); written plus rejected rows must equal each
  batch's records before anything is acknowledged (:func:`.flush.check_complete`).
* A flush also starts early when the held batches span ``max_flush_partitions``
  partition files (counted exactly as each batch joins, :mod:`.buffer`), or more files than the
  oldest lease leaves time for at the pace this run measured, and writes its files concurrently
  (:mod:`airflow_provider_ktexport.lake.sinks`). A flush that would not fit lands in several
  steps, each acknowledged in time; the fetchers lease no further ahead than the writer lands
  within half a lease, counting the batches a landing holds and their own GETs, and what is held
  lands at once when they may lease no more; and when leases ran out anyway, the flush limits
  halve for the rest of the run (:mod:`.pace`).
* A single batch that cannot land within its lease even alone is written but never acknowledged
  late: it is counted (``wide_batches``) and redelivered; a second one in a run stops the run with
  an error saying what to change, rather than keep writing copies.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from airflow_provider_ktexport.api.redact import redact
from airflow_provider_ktexport.drain.acks import Acknowledger
from airflow_provider_ktexport.drain.buffer import Buffer, HeldBatch
from airflow_provider_ktexport.drain.config import DrainConfig
from airflow_provider_ktexport.drain.fetcher import BatchSource, Fetcher, HandoffQueue, handoff_bytes
from airflow_provider_ktexport.drain.flush import Flusher
from airflow_provider_ktexport.drain.metrics import Metrics, MetricsReporter, NoMetrics
from airflow_provider_ktexport.drain.pace import FlushPace
from airflow_provider_ktexport.drain.progress import Progress
from airflow_provider_ktexport.drain.quarantine import Quarantine
from airflow_provider_ktexport.drain.result import DrainResult
from airflow_provider_ktexport.exceptions import KtExportProtocolError, KtExportTransientError
from airflow_provider_ktexport.lake.memory import cap_heap_retention
from airflow_provider_ktexport.lake.sinks import ParquetSink, Sink
from airflow_provider_ktexport.lake.writer import LakeWriter

__all__ = ["Drain"]

#: The drain's logger, named for the package (as drain.py's was): configure this one name to see a
#: drain's flush, progress and summary lines outside Airflow (docs/monitoring.md).
log = logging.getLogger("airflow_provider_ktexport.drain")


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
        self.progress = Progress(self.result, self.log)
        reporter = MetricsReporter(self.metrics, self.log)
        self.acks = Acknowledger(client, config, self.result, reporter, self.log)
        self.flusher = self._flusher(reporter)
        self.quarantine = self._quarantine(reporter)

    # Stored data must not hold the key, yet must keep every other byte: the client masks its own
    # key only (quarantined bodies anywhere, records inside their JSON strings); the quarantine's
    # reason is text for humans, where the token= belt applies too.

    def _flusher(self, reporter: MetricsReporter) -> Flusher:
        """The flush steps, masking the key in records with the client's own mask."""
        return Flusher(
            self.sink,
            self.config,
            self.result,
            self.pace,
            self.acks,
            reporter,
            self.progress,
            self.log,
            mask_records=getattr(self.client, "mask_records", None) or (lambda raws: raws),
            on_pending=self._pace_fetchers,
        )

    def _quarantine(self, reporter: MetricsReporter) -> Quarantine:
        """The quarantine, redacting stored bodies and reasons with the client's own redaction."""
        return Quarantine(
            self.sink,
            self.config,
            self.result,
            self.acks,
            reporter,
            self.log,
            redact_body=getattr(self.client, "redact_body", None) or (lambda b: b),
            redact_text=getattr(self.client, "redact_text", None) or (lambda text: redact(text, None)),
        )

    # -- the loop -----------------------------------------------------------------------------------

    def run(self) -> DrainResult:
        """Lease, land and acknowledge until the queue is empty, the time is up or the run is stopped."""
        started = time.monotonic()
        cap_heap_retention()  # freed bodies go back to the kernel (lake.memory)
        self.progress.start()
        run_deadline = started + self.config.max_runtime
        keep_polling = self._keep_polling_rule(started)
        self._prove_destination()
        fetcher = Fetcher(
            self.client,
            self.config.max_in_flight,
            run_deadline,
            keep_polling,
            max_bytes=handoff_bytes(self.pace.flush_bytes),
        )
        self._handoff = fetcher.results
        self._pace_fetchers()
        fetcher.start()
        try:
            stopped = self._poll(fetcher, run_deadline, keep_polling)
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
            self.acks.close()
            self.sink.close()
        self.result.stopped = stopped
        self.result.duration_s = time.monotonic() - started
        self.progress.finished()
        return self.result

    def _keep_polling_rule(self, started: float) -> Callable[[], bool]:
        """Whether an empty answer lets the run go on: always without ``stop_when_empty``, else
        until ``drain_until`` plus one long poll."""
        cfg = self.config
        # drain_until is wall-clock (it comes from the sensor's XCom); convert once.
        until_mono = None
        if cfg.drain_until is not None:
            until_mono = started + (cfg.drain_until - time.time()) + self.client.long_poll_seconds

        def keep_polling() -> bool:
            return not cfg.stop_when_empty or (until_mono is not None and time.monotonic() < until_mono)

        return keep_polling

    def _poll(self, fetcher: Fetcher, run_deadline: float, keep_polling: Callable[[], bool]) -> str:
        """Take the fetchers' answers and flush by the rules until the run ends; why it ended
        (``stopped``, ``empty`` or ``max_runtime``)."""
        backlog: deque[tuple[str, Any]] = deque()
        while True:
            if self._should_stop():
                return "stopped"
            now = time.monotonic()
            if now >= run_deadline:
                return "max_runtime"
            if self._due_by_lease(now):
                self._flush("lease age")
                continue
            try:
                kind, item = self._next_answer(fetcher, backlog, self._wait_for(now, run_deadline))
            except queue.Empty:
                if not fetcher.alive() and fetcher.results.empty():
                    return "max_runtime"  # every fetcher reached the run deadline
                continue
            if kind != "error":
                self._answered = True
            if kind == "batch":
                self._on_batch(item, fetcher, backlog)
            elif kind == "empty":
                self._flush("queue empty")
                if not keep_polling():
                    return "empty"
            else:
                self._on_error(item)

    def _wait_for(self, now: float, run_deadline: float) -> float:
        """How long the loop may wait for an answer: to the deadline or the next flush by age."""
        wait = run_deadline - now
        if self.buffer:
            wait = min(wait, self.buffer.oldest_lease() + self.config.flush_seconds - now)
        return wait

    def _next_answer(self, fetcher: Fetcher, backlog: deque[tuple[str, Any]], wait: float) -> tuple[str, Any]:
        """The next answer, in order: one set aside by :meth:`_take_ready` first; else ``queue.Empty``."""
        if backlog:
            return backlog.popleft()
        return fetcher.results.get(timeout=max(0.01, min(wait, 1.0)))

    def _on_batch(self, batch: Any, fetcher: Fetcher, backlog: deque[tuple[str, Any]]) -> None:
        """Hold a leased batch (and any already handed over), then flush if a rule says so."""
        self._hold(batch)
        self._take_ready(fetcher, backlog)
        if self._due_by_records():
            self._flush("flush_records")
        elif self._due_by_partitions():
            self._flush("max_flush_partitions")
        elif self._due_by_pace():
            self._flush("lease ahead")

    def _on_error(self, exc: BaseException) -> None:
        """A fetcher's failure: quarantine an undecodable body, end quietly at the deadline, or raise."""
        if isinstance(exc, KtExportProtocolError):
            self.quarantine.keep(exc)
        elif not self._ends_quietly(exc):
            raise exc  # that fetcher has stopped; a quiet end lets the others run to the deadline

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
            self.acks.close()
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
                    self.quarantine.keep(item)
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

    def _pace_fetchers(self, landing: Sequence[HeldBatch] = ()) -> None:
        """Tell the fetchers how many more batches to lease ahead of the writer, given the held
        ones and the ``landing`` ones a flush has taken but not landed yet (a batch leased now
        waits for all of them)."""
        if self._handoff is not None:
            self._handoff.set_lease_ahead(self._lease_ahead(landing))

    def _lease_ahead(self, landing: Sequence[HeldBatch] = ()) -> int:
        files = self.buffer.partitions + len(frozenset().union(*(b.partitions for b in landing)))
        return self.pace.lease_ahead(len(self.buffer) + len(landing), files)

    def _due_by_lease(self, now: float) -> bool:
        """The oldest held lease is ``flush_seconds`` old: land it while the lease leaves time to ack."""
        return bool(self.buffer) and now >= self.buffer.oldest_lease() + self.config.flush_seconds

    def _due_by_records(self) -> bool:
        """``flush_records`` are held (halved after leases ran out), or records of
        ``pace.flush_bytes`` of one record type, or of ``pace.flush_total_bytes`` in all: memory
        is set by the flush size, not by the queue, and by bytes too, as building a record
        type's table takes several times its records' bytes (:data:`.pace.FLUSH_BYTES`)."""
        held = self.buffer
        pace = self.pace
        return (
            held.records >= pace.flush_records
            or held.bytes >= pace.flush_total_bytes
            or held.largest_type_bytes >= pace.flush_bytes
        )

    def _due_by_pace(self) -> bool:
        """The fetchers lease nothing more until what is held lands (it fills half a lease at this
        run's pace, :meth:`.pace.FlushPace.lease_ahead`): waiting for ``flush_seconds`` would only
        spend the held leases."""
        return bool(self.buffer) and self._lease_ahead() == 0

    def _due_by_partitions(self) -> bool:
        """A flush of what is held would write ``max_flush_partitions`` files (a backfill over many
        days), or more than the oldest lease leaves time for at this run's measured pace: each
        file costs round trips on an object store, so land before the leases run out."""
        if not self.buffer:
            return False
        limit = self.pace.partition_limit(self.acks.time_left(self.buffer.oldest_lease()))
        return self.buffer.partitions >= limit

    def _take_ready(self, fetcher: Fetcher, backlog: deque[tuple[str, Any]]) -> None:
        """Hold every batch the fetchers have already handed over, up to the flush rules.

        Their leases started when they were fetched: they go into the next flush together
        instead of one flush (and one round of acknowledgements) each while their leases run.
        """
        while not (self._due_by_records() or self._due_by_partitions() or self._due_by_pace()):
            try:
                kind, item = fetcher.results.get_nowait()
            except queue.Empty:
                return
            if kind != "batch":
                backlog.append((kind, item))  # the loop handles it next, in order
                return
            self._hold(item)

    def _flush(self, reason: str) -> None:
        """Land and acknowledge every held batch (:meth:`.flush.Flusher.flush`)."""
        self.flusher.flush(self.buffer.take(), reason)
