"""The drain's held state: leased batches waiting to land, and the partitions a flush of them writes.

Plain Python, no Airflow. :meth:`Buffer.add` is the commit point of docs/architecture.md section 3: a batch
joins in one step, with its records.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from airflow_provider_ktexport.lake.layout import first_day, record_type_folder
from airflow_provider_ktexport.lake.record_limits import too_deep_positions

__all__ = ["Buffer", "HeldBatch", "partitions_of", "record_bytes", "record_types_in", "too_deep_in"]


@dataclass(frozen=True)
class HeldBatch:
    """A leased batch in the buffer: its id, when its lease started (monotonic), its records, the
    partitions its records land in (record type and event day, as the flush will write them),
    which of its records nest too deep to be rows (decided once, as it joins) and each record's
    type as read then."""

    id: str
    leased_at: float
    raw_items: Sequence[bytes]
    partitions: frozenset[tuple[str, str]] = field(default=frozenset(), compare=False, repr=False)
    #: Positions in ``raw_items`` of the records nested deeper than the limit (rejects, screened
    #: by :func:`.record_limits.too_deep_positions`); None: not screened yet.
    too_deep: tuple[int, ...] | None = field(default=None, compare=False, repr=False)
    #: Each record's type folder as read when it joined (None: not read, or not readable), so
    #: the flush need not read it again (``build_tables(record_types=)``); empty: none read.
    record_types: Sequence[str | None] = field(default=(), compare=False, repr=False)


class _Head(msgspec.Struct):
    """The fields that choose a record's partition, read without building the record."""

    type: Any = None
    date: Any = None
    eventDate: Any = None  # the API's spelling
    dateEnd: Any = None
    received: Any = None


_HEAD = msgspec.json.Decoder(_Head)


def record_bytes(raws: Sequence[bytes]) -> int:
    """Bytes of ``raws`` as received (the JSON text the flush parses)."""
    return sum(map(len, raws))


def partitions_of(
    raws: Sequence[bytes], partition_by: Sequence[str], too_deep: Collection[int] | None = None
) -> frozenset[tuple[str, str]]:
    """The data files a flush writes for these records, as (record type, event day) pairs.

    Every record counts: a backfill's batch can spread over hundreds of days, and no sample can
    stand in for the whole. Each record's head is decoded alone (a few microseconds) and given
    the values the built tables get (:mod:`airflow_provider_ktexport.lake.partitions`): one file
    per record type, and per event day when ``event_date`` is a partition key (``ingest_date`` is
    one day per flush, so it adds no files). A record that does not decode is a reject (in
    ``_rejected/``), not a data file, and so is one nested too deep (``too_deep``: their positions,
    screened here when None), whatever recursion limit the process runs with.
    """
    return _heads(raws, partition_by, too_deep)[0]


def _heads(
    raws: Sequence[bytes], partition_by: Sequence[str], too_deep: Collection[int] | None
) -> tuple[frozenset[tuple[str, str]], dict[str, int], list[str | None]]:
    """:func:`partitions_of`, the bytes of the records of each record type, and each record's
    type folder (None for a reject), in one pass."""
    by_day = "event_date" in partition_by
    deep = frozenset(too_deep_positions(raws) if too_deep is None else too_deep)
    out: set[tuple[str, str]] = set()
    type_bytes: dict[str, int] = {}
    types: list[str | None] = [None] * len(raws)
    for j, raw in enumerate(raws):
        if j in deep:
            continue
        try:
            head = _HEAD.decode(raw)
        except (msgspec.MsgspecError, RecursionError):
            continue
        types[j] = rtype = record_type_folder(head.type)
        out.add((rtype, _event_day(head) if by_day else ""))
        type_bytes[rtype] = type_bytes.get(rtype, 0) + len(raw)
    return frozenset(out), type_bytes, types


def record_types_in(batches: Sequence[HeldBatch], records: Sequence[bytes]) -> list[str | None] | None:
    """Each record's type folder as its batch read it, for the flush's ``records`` (``batches``'
    records in order, as the flush will build them); None where a record differs from the one
    read (the API key masked in it) and when a batch read none."""
    types: list[str | None] = []
    for b in batches:
        if len(b.record_types) != len(b.raw_items):
            return None
        types.extend(b.record_types)
    originals = (raw for b in batches for raw in b.raw_items)
    return [t if raw is orig else None for t, raw, orig in zip(types, records, originals, strict=True)]


def too_deep_in(batches: Sequence[HeldBatch]) -> list[int] | None:
    """Positions of the too-deep records in the flush's record list (``batches``' records in
    order), from what each batch carries; None when a batch was not screened (then the flush
    screens every record)."""
    out: list[int] = []
    offset = 0
    for b in batches:
        if b.too_deep is None:
            return None
        out.extend(offset + j for j in b.too_deep)
        offset += len(b.raw_items)
    return out


def _event_day(head: _Head) -> str:
    """:func:`.layout.event_date` of the record the head was read from."""
    return first_day((head.date, head.eventDate, head.dateEnd, head.received))  # EVENT_TIME_FIELDS' order


class Buffer:
    """The batches a run holds until they land: :meth:`add` is the commit point.

    A batch joins in one step (one ``list.append`` of a :class:`HeldBatch` that carries its
    records), so an interrupt (Airflow's ``execution_timeout``, a kill) can never leave a held
    batch without its records for the kill-path flush to acknowledge.

    It also counts the partitions (files) a flush of it would write, exactly: each batch's set
    is computed as it joins (:func:`partitions_of`), so a flush that would write too many files
    on a slow object store starts early however widely a backfill's batches spread. And it counts
    the bytes held per record type: a flush builds one record type's table at a time, so the
    largest type's bytes set what building costs in memory (:data:`.pace.FLUSH_BYTES`).
    """

    def __init__(self, partition_by: Sequence[str]) -> None:
        self._batches: list[HeldBatch] = []
        self._partition_by = tuple(partition_by)
        self._partitions: set[tuple[str, str]] = set()
        self.records = 0
        #: Bytes of the held records as received: the flush's memory scales with them, not the count.
        self.bytes = 0
        self._type_bytes: dict[str, int] = {}
        #: Bytes held of the record type with the most (they only grow until :meth:`take`).
        self.largest_type_bytes = 0

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, batch: Any) -> None:
        """Hold a leased batch (anything with ``id``, ``leased_at``, ``raw_items``)."""
        deep = too_deep_positions(batch.raw_items)
        partitions, type_bytes, types = _heads(batch.raw_items, self._partition_by, deep)
        held = HeldBatch(batch.id, batch.leased_at, batch.raw_items, partitions, deep, types)
        self._batches.append(held)  # the commit point
        self.records += len(batch.raw_items)
        self.bytes += record_bytes(batch.raw_items)
        self._partitions |= held.partitions
        for rtype, size in type_bytes.items():
            held_bytes = self._type_bytes[rtype] = self._type_bytes.get(rtype, 0) + size
            self.largest_type_bytes = max(self.largest_type_bytes, held_bytes)

    def take(self) -> list[HeldBatch]:
        """Every held batch, oldest first; the buffer is empty afterwards."""
        batches = self._batches
        self._batches = []
        self.records = 0
        self.bytes = 0
        self._partitions = set()
        self._type_bytes = {}
        self.largest_type_bytes = 0
        return batches

    def oldest_lease(self) -> float:
        # Fetchers hand batches over in completion order, not lease order.
        return min(b.leased_at for b in self._batches)

    @property
    def partitions(self) -> int:
        """Partitions (data files) a flush of the buffer would write."""
        return len(self._partitions)
