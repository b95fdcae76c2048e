"""The drain's progress lines: running totals after every flush, and a summary when it ends.

Plain Python, no Airflow. They go to the drain's own logger, so they show in the task log and
in anything that configures logging (a command line). The wording is stable and documented in
docs/monitoring.md ("Progress lines"): people grep for it and tools may parse it. Only counts
and timings are printed: never a key, a URL or a record.
"""

from __future__ import annotations

import time
from typing import Any

from airflow_provider_ktexport.drain.result import DrainResult

__all__ = ["Progress"]


class Progress:
    """Writes the progress line after each flush and the summary line at the end of a run.

    :param result: the run's counters (read, never changed)
    :param log: the drain's logger
    """

    def __init__(self, result: DrainResult, log: Any) -> None:
        self.result = result
        self.log = log
        self.started = time.monotonic()

    def start(self) -> None:
        """The run starts now: rates count from here."""
        self.started = time.monotonic()

    def rate(self) -> float:
        """Records landed per second since the run started."""
        elapsed = time.monotonic() - self.started
        return self.result.records / elapsed if elapsed > 0 else 0.0

    def flushed(self, lag_s: float | None) -> None:
        """One INFO line of running totals, after a flush; ``lag_s`` is the age of the oldest
        event the flush landed (None when its records carry no event time)."""
        r = self.result
        self.log.info(
            "Progress: %d records landed (%.0f records/s), lag %s, %d rejected, %d acked, "
            "%d ack failed, %d leases expired, %d deduped, %d files",
            r.records,
            self.rate(),
            _seconds(lag_s),
            r.rejected,
            r.acked,
            r.ack_failed,
            r.lease_expired,
            r.deduped,
            len(r.files),
        )

    def finished(self) -> None:
        """The summary line when the run ends (``result.stopped`` and ``duration_s`` are set)."""
        r = self.result
        self.log.info(
            "Drain finished (%s): %d records in %d batches, %d files, %d bytes, %d acked, %d ack failed, "
            "%d leases expired, %d deduped, %d rejected, %d quarantined, %.1f s (%.0f records/s), max lag %s",
            r.stopped,
            r.records,
            r.batches,
            len(r.files),
            r.bytes,
            r.acked,
            r.ack_failed,
            r.lease_expired,
            r.deduped,
            r.rejected,
            r.quarantined,
            r.duration_s,
            r.records / r.duration_s if r.duration_s > 0 else 0.0,
            _seconds(r.oldest_record_age_s),
        )


def _seconds(value: float | None) -> str:
    """A lag for a log line: ``12.3 s``, or ``n/a`` when no landed record had an event time."""
    return "n/a" if value is None else f"{value:.1f} s"
