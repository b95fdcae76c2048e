"""The emulator's accounting: what it served and what was acknowledged, for tests to check.

A :class:`Ledger` holds no lock: the emulator updates and reads it while holding its own, so a
snapshot never shows a batch half counted.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_ktexport.testing.stock import Entry, Lease, Stock

#: What :meth:`Ledger.snapshot` counts besides leases, the queue and faults.
COUNTERS = (
    "served",
    "emitted",
    "acked",
    "acked_records",
    "delivered_records",
    "redelivered",
    "expired",
    "ack_unknown",
    "ack_vetoed",
    "requests",
    "connections",
    "gzip_responses",
    "empty_polls",
    "unauthorized",
    "hostile",
    "broken_envelopes",
    "acked_broken_envelopes",
)


class Ledger:
    """Counters, every ``emulator_seq`` delivered and acknowledged, and the batches served broken."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.delivered: list[int] = []
        self.acked: list[int] = []
        self._broken: set[str] = set()

    def served(self, lease: Lease) -> None:
        """Count a leased batch and its records, redeliveries included."""
        self.delivered.extend(e.seq for e in lease.entries)
        self.counts["served"] += 1
        self.counts["delivered_records"] += len(lease.entries)
        self.counts["redelivered"] += sum(e.deliveries > 1 for e in lease.entries)

    def broke(self, batch_id: str) -> None:
        """Note a batch served without readable items (an envelope or repeated-key fault)."""
        self._broken.add(batch_id)
        self.counts["broken_envelopes"] += 1

    def acknowledged(self, batch_id: str, entries: list[Entry]) -> None:
        """Count an applied ack; acking a broken batch loses records the client never saw."""
        self.counts["acked"] += 1
        self.counts["acked_records"] += len(entries)
        if batch_id in self._broken:
            self.counts["acked_broken_envelopes"] += 1
        self.acked.extend(e.seq for e in entries)

    def snapshot(self, stock: Stock, fault_counts: dict[str, int]) -> dict[str, Any]:
        """The counters with the stock's leases, queue and hostile records and the faults fired."""
        out: dict[str, Any] = dict(self.counts)
        out["leased"] = len(stock.leases)
        out["leased_records"] = sum(len(x.entries) for x in stock.leases.values())
        out["queued"] = len(stock.queue) + stock.pending
        out["hostile"] = len(stock.hostile)
        out["faults"] = dict(fault_counts)
        return out
