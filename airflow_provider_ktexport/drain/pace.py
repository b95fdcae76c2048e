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

Before the first flush nothing is measured: a file is assumed to cost :data:`FIRST_FILE_SECONDS`
(a conservative guess, many times what S3 measured) until one flush has landed. The fetchers
lease one batch first (its records tell how many files a batch writes), then at most
:data:`FIRST_LEASE_AHEAD` ahead of the writer, fewer when what is held would already take half a
lease at that assumed cost.

A batch leased while the writer is busy waits for it: its lease runs while the batches ahead of
it land. So the fetchers count every batch the writer has taken and not landed (held, and in the
landing under way) and every GET still outstanding, and lease none while those fill half a lease
(:meth:`FlushPace.lease_ahead` may answer 0; the drain then flushes what it holds at once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from airflow_provider_ktexport.drain.buffer import HeldBatch

__all__ = [
    "FIRST_FILE_SECONDS",
    "FIRST_LEASE_AHEAD",
    "FLUSH_BYTES",
    "FLUSH_TOTAL_BYTES",
    "SAFETY",
    "FlushPace",
]

#: Share of the time left that a flush plans to use: the rest absorbs a store slower than measured.
SAFETY = 0.5
#: Batches the fetchers lease ahead of the writer before its pace is known (at most).
FIRST_LEASE_AHEAD = 4
#: Wall seconds a file is assumed to cost before a flush was measured: a file that takes two
#: requests from a store answering 40 a second. S3 at 40 ms with 64 connections measured 2.5 ms
#: a file, a moto server on the loaded 2-core test machine 10-37 ms (docs/performance.md), a
#: local disk well under 1 ms. A first flush of a backfill bounded by the settings alone wrote
#: 2,000 files in 22-29 s of a 30 s lease, and the batches leased meanwhile could not land in
#: theirs; at this cost it writes at most 290 files (or one batch) in a 30 s lease, and later
#: flushes go by what it measured.
FIRST_FILE_SECONDS = 0.05
#: Record bytes (as received, decoded JSON) of one record type a flush holds at most, whatever
#: ``flush_records`` says. A flush builds one record type's table at a time, and building takes
#: several times its records' bytes, so records of 10 KB (100-point trips) would need 2 GB at the
#: default 50,000 records. At 16 MiB a drain peaks near 300 MB whatever the record shape or the
#: queue's length (docs/performance.md, memory); 8 MiB measured 30 MB less and twice the files.
FLUSH_BYTES = 16 * 1024 * 1024
#: Record bytes of all record types a flush holds at most. Held records and built tables stay
#: until the flush lands, but only the largest type's building costs more, so many record types
#: share a larger flush instead of writing a file per type for every 16 MiB.
#: Measured at 32 MiB: 50 record types 450 files per 100,000 records instead of 900, peak RSS
#: below the one-type drain's at 16 MiB (docs/performance.md, "Many record types").
FLUSH_TOTAL_BYTES = 2 * FLUSH_BYTES


@dataclass
class FlushPace:
    """The limits a drain's flushes keep, and what they are learnt from.

    :param flush_records: records a flush holds at most (starts as the setting)
    :param max_partitions: partition files a flush writes at most (starts as the setting)
    :param lease_seconds: the lease a flush must fit in
    :param flush_bytes: record bytes of one record type a flush holds at most (:data:`FLUSH_BYTES`)
    :param flush_total_bytes: record bytes a flush holds at most (:data:`FLUSH_TOTAL_BYTES`)
    """

    flush_records: int
    max_partitions: int
    lease_seconds: float
    flush_bytes: int = FLUSH_BYTES
    flush_total_bytes: int = FLUSH_TOTAL_BYTES
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
        """Files a flush can plan to write in ``seconds_left``; None when nothing bounds them by
        time (a table sink, whose landings teach no cost per file)."""
        per_file = self._file_cost()
        if per_file is None:
            return None
        return max(0, int(seconds_left * SAFETY / max(per_file, 1e-6)))

    def _file_cost(self) -> float | None:
        """The measured cost of a file, or :data:`FIRST_FILE_SECONDS` before any flush was measured."""
        if self.file_seconds is None and self.batch_seconds is None:
            return FIRST_FILE_SECONDS
        return self.file_seconds

    def landing_seconds(self, files: int) -> float | None:
        """Wall seconds ``files`` files take to land at the measured pace; None before a flush
        measured what a file costs."""
        return None if self.file_seconds is None else files * self.file_seconds

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

    def lease_ahead(self, held: int = 0, files: int = 0) -> int:
        """Batches the fetchers may lease beyond the ``held`` ones the writer has taken and not
        landed yet (``files``: the partition files those write).

        Together, what the writer lands within half a lease at the measured pace (at the assumed
        :data:`FIRST_FILE_SECONDS` a file before a flush was measured, and then at most
        :data:`FIRST_LEASE_AHEAD`; one while nothing is held or measured). It is 0 while the held
        batches fill that: a batch leased then would wait for them with its lease running. With
        nothing held it is at least one.
        """
        seconds = self._batch_cost(held, files)
        if seconds is None:
            return 1  # nothing known: one batch, whose records tell how wide the queue's batches are
        fit = int(self.lease_seconds * SAFETY / max(seconds, 1e-6))
        if self.batch_seconds is None:
            fit = min(fit, FIRST_LEASE_AHEAD + held)
        return max(0 if held else 1, fit - held)

    def _batch_cost(self, held: int, files: int) -> float | None:
        """Wall seconds a batch costs: measured, else what the held ones would take at the assumed
        cost per file (None when nothing is held or measured)."""
        if self.batch_seconds is not None:
            return self.batch_seconds
        if not held:
            return None
        return files * FIRST_FILE_SECONDS / held

    def shrink(self, records: int, partitions: int) -> None:
        """A flush of ``records`` records writing ``partitions`` files outlived its leases: the
        next must be smaller, so both limits become half of it (or of the limit, if lower), and
        the byte caps halve with them."""
        self.flush_records = max(1, min(self.flush_records, records) // 2)
        self.flush_bytes = max(1, self.flush_bytes // 2)
        self.flush_total_bytes = max(1, self.flush_total_bytes // 2)
        self.max_partitions = max(1, min(self.max_partitions, partitions) // 2)
        self.shrinks += 1
