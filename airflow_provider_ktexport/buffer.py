"""The drain's held state: leased batches waiting to land, and the estimate of what a flush writes.

Plain Python, no Airflow. :meth:`Buffer.add` is the commit point of design.md section 3: a batch
joins in one step, with its records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["Buffer", "HeldBatch"]


@dataclass(frozen=True)
class HeldBatch:
    """A leased batch in the buffer: its id, when its lease started (monotonic) and its records."""

    id: str
    leased_at: float
    raw_items: Sequence[bytes]


class _Head(msgspec.Struct):
    """The fields that choose a record's partition, read without building the record."""

    type: Any = None
    date: Any = None
    eventDate: Any = None  # the API's spelling
    dateEnd: Any = None
    received: Any = None


_HEAD = msgspec.json.Decoder(_Head)
#: Records per batch whose partition the buffer reads (a few microseconds each).
_PARTITION_SAMPLES = 8


class Buffer:
    """The batches a run holds until they land: :meth:`add` is the commit point.

    A batch joins in one step (one ``list.append`` of a :class:`HeldBatch` that carries its
    records), so an interrupt (Airflow's ``execution_timeout``, a kill) can never leave a held
    batch without its records for the kill-path flush to acknowledge.

    It also estimates how many partitions a flush of it would write, from a few records spread
    over each batch (a backfill's batches each cover a stretch of time), so a flush that would
    write too many files on a slow object store starts early.
    """

    def __init__(self, partition_by: Sequence[str]) -> None:
        self._batches: list[HeldBatch] = []
        self._partition_by = tuple(partition_by)
        self._partitions: set[tuple[str, ...]] = set()
        self.records = 0

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, batch: Any) -> None:
        """Hold a leased batch (anything with ``id``, ``leased_at``, ``raw_items``)."""
        self._batches.append(HeldBatch(batch.id, batch.leased_at, batch.raw_items))  # the commit point
        self.records += len(batch.raw_items)
        self._note_partitions(batch.raw_items)

    def take(self) -> list[HeldBatch]:
        """Every held batch, oldest first; the buffer is empty afterwards."""
        batches = self._batches
        self._batches = []
        self.records = 0
        self._partitions = set()
        return batches

    def oldest_lease(self) -> float:
        # Fetchers hand batches over in completion order, not lease order.
        return min(b.leased_at for b in self._batches)

    @property
    def partitions(self) -> int:
        """Estimated partitions (files) a flush of the buffer would write."""
        return len(self._partitions)

    def _note_partitions(self, raws: Sequence[bytes]) -> None:
        if not raws:
            return
        step = max(1, len(raws) // _PARTITION_SAMPLES)
        for raw in raws[::step]:
            try:
                head = _HEAD.decode(raw)
            except (msgspec.MsgspecError, RecursionError):
                continue  # a record that does not decode is a reject: no partition of its own
            key = []
            for name in self._partition_by:
                if name == "record_type":
                    key.append(str(head.type))
                elif name == "event_date":
                    times = (head.date, head.eventDate, head.dateEnd, head.received)
                    key.append(next((t[:10] for t in times if type(t) is str), "unknown"))
            self._partitions.add(tuple(key))
