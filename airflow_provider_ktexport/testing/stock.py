"""The emulator's queue of records: what is queued, what is owed, and which records are hostile.

Leases take records from the front and an expired lease puts them back there. Records come in
three ways: :meth:`Stock.enqueue` (given records), :meth:`Stock.add_generated`
(built now) and :meth:`Stock.owe` (built only when a lease needs them, so a million-record
benchmark costs no memory up front). Poison mode turns a share of generated records into hostile
ones (:mod:`airflow_provider_ktexport.testing.hostile`). A :class:`Stock` holds no lock: the
emulator calls it while holding its own.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any

from airflow_provider_ktexport.testing.hostile import (
    HOSTILE_KINDS,
    KEY_TEXT_KINDS,
    hostile_record,
    key_text_record,
)
from airflow_provider_ktexport.testing.records import RecordGenerator
from airflow_provider_ktexport.testing.wire import json_bytes


class Entry:
    """One queued record: its ``emulator_seq``, the exact bytes served, how often it was served."""

    __slots__ = ("seq", "raw", "deliveries")

    def __init__(self, seq: int, raw: bytes) -> None:
        self.seq = seq
        self.raw = raw
        self.deliveries = 0


class Lease:
    """A leased batch: its id, its records and when it goes back to the queue."""

    __slots__ = ("id", "entries", "expires")

    def __init__(self, lease_id: str, entries: list[Entry], expires: float) -> None:
        self.id = lease_id
        self.entries = entries
        self.expires = expires


def as_record(entry: Entry) -> dict[str, Any]:
    """The record ``on_ack`` sees; a hostile one Python cannot decode (nested past its recursion
    limit) as ``{"emulator_seq": seq, "_raw": text}``, so a hook can still tell which it is."""
    try:
        record = json.loads(entry.raw)
    except (ValueError, RecursionError):
        return {"emulator_seq": entry.seq, "_raw": entry.raw.decode("utf-8", "replace")}
    return record if isinstance(record, dict) else {"emulator_seq": entry.seq, "_raw": entry.raw.decode()}


class Stock:
    """Queued, owed and leased records, numbered by ``emulator_seq``; see the module docstring."""

    def __init__(self, generator: RecordGenerator, *, seed: int, distinct: int) -> None:
        self.generator = generator
        self.queue: deque[Entry] = deque()
        #: Records owed by :meth:`owe`: built only when a lease needs them.
        self.pending = 0
        self.next_seq = 1
        self.hostile: dict[int, tuple[str, bytes]] = {}
        self.leases: dict[str, Lease] = {}
        self._group_rng = random.Random(seed + 1)
        self._seed = seed
        self._distinct = distinct
        self._templates: dict[int, bytes] = {}
        self._poison = 0.0
        self._poison_kinds: tuple[str, ...] = HOSTILE_KINDS

    def has_data(self) -> bool:
        """True when a GET would lease something."""
        return bool(self.queue) or self.pending > 0

    def expire(self, now: float) -> int:
        """Put the records of leases expired by ``now`` back at the front of the queue, oldest lease
        first; returns how many leases expired."""
        expired = [lease for lease in self.leases.values() if lease.expires <= now]
        back: list[Entry] = []
        for lease in expired:
            del self.leases[lease.id]
            back.extend(lease.entries)
        self.queue.extendleft(reversed(back))
        return len(expired)

    def lease(self, batch_size: int, seconds: float, api_key: str) -> Lease | None:
        """Lease up to ``batch_size`` records from the front of the queue for ``seconds``; None when
        there is nothing to lease. Owed records are built as needed."""
        n = batch_size
        q = self.queue
        if q and q[0].deliveries:
            # A redelivery need not keep the old grouping, so clients must not rely on it.
            n = self._group_rng.randint(max(1, n // 2), n)
        short = n - len(q)
        if short > 0 and self.pending:
            self.materialise(min(short, self.pending), api_key)
        if not q:
            return None
        entries = [q.popleft() for _ in range(min(n, len(q)))]
        lease = Lease(uuid.uuid4().hex, entries, time.monotonic() + seconds)
        self.leases[lease.id] = lease
        for e in entries:
            e.deliveries += 1
        return lease

    def enqueue(self, records: Sequence[dict[str, Any]]) -> list[Entry]:
        """Queue records; those without ``emulator_seq`` get the next one."""
        entries = []
        for rec in records:
            if "emulator_seq" not in rec:
                rec = {**rec, "emulator_seq": self.next_seq}
            seq = rec["emulator_seq"]
            if isinstance(seq, int) and seq >= self.next_seq:
                self.next_seq = seq + 1
            entries.append(Entry(seq, json_bytes(rec)))
        self.queue.extend(entries)
        return entries

    def reserve(self, n: int) -> int:
        """Set aside ``n`` seqs for records built outside the lock; returns the first."""
        start = self.next_seq
        self.next_seq += n
        return start

    def add_generated(self, records: list[dict[str, Any]], api_key: str) -> list[dict[str, Any]]:
        """Queue records built for reserved seqs; returns the ordinary ones (hostile ones take their
        seq's place as text and are listed in :attr:`hostile`)."""
        ordinary: list[dict[str, Any]] = []
        for rec in records:
            seq = rec["emulator_seq"]
            raw = self._hostile_raw(seq, api_key) if self._poison > 0 else None
            if raw is None:
                ordinary.append(rec)
                raw = json_bytes(rec)
            self.queue.append(Entry(seq, raw))
        return ordinary

    def owe(self, n: int) -> None:
        """Promise ``n`` generated records, built when a lease needs them."""
        self.pending += n

    def materialise(self, n: int, api_key: str) -> None:
        """Build ``n`` owed records onto the end of the queue."""
        for _ in range(n):
            seq = self.reserve(1)
            hostile = self._hostile_raw(seq, api_key) if self._poison > 0 else None
            if hostile is not None:
                raw = hostile
            elif self._distinct > 0:
                prefix = self._template(((seq - 1) % self._distinct) + 1)
                raw = b"%b%d}" % (prefix, seq)
            else:
                raw = json_bytes(self.generator.record(seq))
            self.queue.append(Entry(seq, raw))
        self.pending -= n

    def _template(self, seq: int) -> bytes:
        # The record's JSON up to its emulator_seq value, which the generator always puts last.
        prefix = self._templates.get(seq)
        if prefix is None:
            raw = json_bytes(self.generator.record(seq))
            marker = b'"emulator_seq":'
            prefix = raw[: raw.rindex(marker) + len(marker)]
            self._templates[seq] = prefix
        return prefix

    def set_poison(self, rate: float, kinds: Sequence[str] | None) -> None:
        """Make a share ``rate`` (0..1) of records generated from now on hostile, of ``kinds``."""
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"poison rate {rate} is not within 0..1")
        chosen = tuple(kinds) if kinds else HOSTILE_KINDS
        unknown = sorted(set(chosen) - set(HOSTILE_KINDS) - set(KEY_TEXT_KINDS))
        if unknown:
            known = [*HOSTILE_KINDS, *KEY_TEXT_KINDS]
            raise ValueError(f"unknown hostile kind(s) {unknown}; known: {known}")
        self._poison = rate
        self._poison_kinds = chosen

    def _hostile_raw(self, seq: int, api_key: str) -> bytes | None:
        # A pure function of (seed, seq) decides; the kinds take turns so that every kind shows up
        # among the first few hostile records.
        if random.Random(self._seed * 7_919 + seq * 104_729).random() >= self._poison:
            return None
        kind = self._poison_kinds[len(self.hostile) % len(self._poison_kinds)]
        if kind in KEY_TEXT_KINDS:
            raw = key_text_record(kind, seq, api_key)
        else:
            raw = hostile_record(kind, seq)
        self.hostile[seq] = (kind, raw)
        return raw
