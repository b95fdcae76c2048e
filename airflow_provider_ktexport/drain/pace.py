"""How much a flush may hold, and how far the fetchers may lease ahead, learnt from this run.

Plain Python, no Airflow. A flush must land and be acknowledged inside the lease of its oldest
batch, whatever the store's latency and however widely a backfill spreads its records. The
drain's settings (``flush_records``, ``max_flush_partitions``) are upper bounds; within them the
pace uses what this run measured:

* the wall time a file costs (a flush's landing time over its files), so a flush of what is
  held starts before it would write more files than the oldest lease has time for, and a flush
  that would not fit lands in several steps, each acknowledged in time (:meth:`FlushPace.next_step`);
* the wall time a batch costs (landing and acknowledging), so the fetchers lease no more batches
  ahead of the writer than it lands within one lease (:meth:`FlushPace.lease_ahead`);
* acknowledgements skipped for leases that ran out: the limits halve for the rest of the run
  (:meth:`FlushPace.shrink`) instead of repeating the same failure.

Before the first flush nothing is measured: that flush is bounded by the settings alone (in a
backfill, one flush of many batches writes far fewer files than one flush per batch, as their
days overlap), and while it runs the fetchers lease at most :data:`FIRST_LEASE_AHEAD` batches
ahead of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from airflow_provider_ktexport.drain.buffer import HeldBatch

__all__ = ["FIRST_LEASE_AHEAD", "FLUSH_BYTES", "SAFETY", "FlushPace"]

#: Share of the time left that a flush plans to use: the rest absorbs a store slower than measured.
SAFETY = 0.5
#: Batches the fetchers lease ahead of the writer before its pace is known.
FIRST_LEASE_AHEAD = 4
#: Record bytes (as received, decoded JSON) a flush holds at most, whatever ``flush_records`` says.
#: Building and writing a flush's tables takes about four times its records' bytes, so records of
#: 10 KB (100-point trips) would need 2 GB at the default 50,000 records. At 16 MiB a mix flush
#: holds about 20,000 records and a drain peaks near 300 MB whatever the record shape or the
#: queue's length (docs/performance.md, memory); 8 MiB measured 30 MB less and twice the files.
FLUSH_BYTES = 16 * 1024 * 1024


@dataclass
class FlushPace:
    """The limits a drain's flushes keep, and what they are learnt from.

    :param flush_records: records a flush holds at most (starts as the setting)
    :param max_partitions: partition files a flush writes at most (starts as the setting)
    :param lease_seconds: the lease a flush must fit in
    :param flush_bytes: record bytes a flush holds at most (:data:`FLUSH_BYTES`)
    """

    flush_records: int
    max_partitions: int
    lease_seconds: float
    flush_bytes: int = FLUSH_BYTES
    #: Wall seconds a file cost in the last flush (landing time over files); None before one.
    file_seconds: float | None = None
    #: Wall seconds a batch cost in the last flush (landing and acknowledging); None before one.
    batch_seconds: float | None = None
    #: Times the limits were halved after leases ran out.
    shrinks: int = 0

    def note_flush(self, *, files: int, batches: int, land_seconds: float, total_seconds: float) -> None:
        """Learn from a flush that landed ``files`` files for ``batches`` batches."""
        if files:
            self.file_seconds = land_seconds / files
        if batches:
            self.batch_seconds = total_seconds / batches

    def files_within(self, seconds_left: float) -> int | None:
        """Files a flush can plan to write in ``seconds_left``; None while no flush was measured."""
        if self.file_seconds is None:
            return None
        return max(0, int(seconds_left * SAFETY / max(self.file_seconds, 1e-6)))

    def partition_limit(self, seconds_left: float) -> int:
        """Partitions a flush of what is held may write, given the time left on its oldest lease."""
        fit = self.files_within(seconds_left)
        return self.max_partitions if fit is None else max(1, min(self.max_partitions, fit))

    def next_step(self, pending: Sequence[HeldBatch], seconds_left: float) -> int:
        """How many of ``pending`` (oldest lease first) the next landing takes: the most whose files
        fit in the time left on the first one's lease, and always at least one."""
        fit = self.files_within(seconds_left)
        if fit is None:
            return len(pending)
        files = set(pending[0].partitions)
        taken = 1
        for batch in pending[1:]:
            grown = files | batch.partitions
            if len(grown) > fit:
                break
            files, taken = grown, taken + 1
        return taken

    def lease_ahead(self, held: int = 0) -> int:
        """Batches the fetchers may hand over beyond the ``held`` ones leased and not yet landed:
        together, what the writer lands within half a lease at the measured pace (always one
        more, so the flush rules see new batches). Before a flush was measured,
        :data:`FIRST_LEASE_AHEAD`, whatever is held: a flush may need many batches to fill."""
        if self.batch_seconds is None:
            return FIRST_LEASE_AHEAD
        return max(1, int(self.lease_seconds * SAFETY / max(self.batch_seconds, 1e-6)) - held)

    def shrink(self, records: int, partitions: int) -> None:
        """A flush of ``records`` records writing ``partitions`` files outlived its leases: the
        next must be smaller, so both limits become half of it (or of the limit, if lower), and
        the byte cap halves with them."""
        self.flush_records = max(1, min(self.flush_records, records) // 2)
        self.flush_bytes = max(1, self.flush_bytes // 2)
        self.max_partitions = max(1, min(self.max_partitions, partitions) // 2)
        self.shrinks += 1
