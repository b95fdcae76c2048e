"""Acknowledging landed batches: a DELETE per batch, never one whose lease ran out on our clock.

Plain Python, no Airflow (docs/architecture.md section 3). Only the flush calls
:meth:`Acknowledger.ack_landed`, and only after every record of those batches is in the lake
(as rows or rejects); a failed acknowledgement costs a redelivery (dropped as already landed by
the flush ledger), never a record.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from airflow_provider_ktexport.drain.buffer import HeldBatch
from airflow_provider_ktexport.drain.config import ACK_CONCURRENCY, DrainConfig
from airflow_provider_ktexport.drain.fetcher import BatchSource
from airflow_provider_ktexport.drain.metrics import MetricsReporter
from airflow_provider_ktexport.drain.result import DrainResult
from airflow_provider_ktexport.exceptions import KtExportError

__all__ = ["Acknowledger", "ack_margin"]

log = logging.getLogger(__name__)


def ack_margin(lease_seconds: float) -> float:
    """The server's lease began before our clock saw the answer: keep a small margin."""
    return min(1.0, 0.05 * lease_seconds)


class Acknowledger:
    """Sends a run's acknowledgements, ``ACK_CONCURRENCY`` at once, and counts them.

    :param client: the drain's client (``ack(batch_id) -> bool``)
    :param config: the run's settings (the lease length)
    :param result: the run's counters (acked, ack_failed, lease_expired)
    :param metrics: where the ack counters go
    :param logger: the drain's logger
    """

    def __init__(
        self,
        client: BatchSource,
        config: DrainConfig,
        result: DrainResult,
        metrics: MetricsReporter,
        logger: Any = None,
    ) -> None:
        self.client = client
        self.lease_seconds = config.lease_seconds
        self.result = result
        self.metrics = metrics
        self.log = logger or log
        self._pool = ThreadPoolExecutor(max_workers=ACK_CONCURRENCY, thread_name_prefix="ktexport-ack")

    def time_left(self, leased_at: float) -> float:
        """Seconds until a lease that started at ``leased_at`` may no longer be acknowledged."""
        return leased_at + self.lease_seconds - ack_margin(self.lease_seconds) - time.monotonic()

    def ack_landed(self, batches: list[HeldBatch]) -> tuple[int, int]:
        """Acknowledge every batch whose lease has not run out on our clock; (acked, expired).

        The caller has landed every record of ``batches``: this is the only place a flush's
        DELETEs are sent.
        """
        outcomes = list(self._pool.map(self._ack_held, batches))
        acked = sum(1 for o in outcomes if o == "acked")
        expired = sum(1 for o in outcomes if o == "expired")
        self.result.acked += acked
        self.result.lease_expired += expired
        self.result.ack_failed += len(outcomes) - acked - expired
        self.metrics.incr("batches_acked", acked)
        self.metrics.incr("leases_expired", expired)
        self.metrics.incr("ack_failures", len(outcomes) - acked - expired)
        if expired:
            self.log.warning(
                "%d batches landed after their %g s lease had run out: not acknowledged (the server may "
                "have leased them again); the flush stays in doubt, so their redelivery is dropped as already "
                "landed. Lower flush_seconds if this repeats across runs.",
                expired,
                self.lease_seconds,
            )
        return acked, expired

    def _ack_held(self, batch: HeldBatch) -> str:
        if self.time_left(batch.leased_at) <= 0:
            return "expired"
        return "acked" if self.ack_one(batch.id) else "failed"

    def ack_one(self, batch_id: str) -> bool:
        """One DELETE; False (and a warning) when it failed. Counts nothing: callers do."""
        try:
            return bool(self.client.ack(batch_id))
        except KtExportError as exc:
            # The records are safely in the lake; a failed ack only means a redelivered copy.
            self.log.warning("Acknowledging batch %s failed: %s", batch_id, exc)
            return False

    def close(self) -> None:
        """Stop the ack threads (without waiting: a run that fails must not hang on a DELETE)."""
        self._pool.shutdown(wait=False)
