"""Undecodable batch bodies: stored under ``_quarantine`` and, by default, left to be redelivered.

Plain Python, no Airflow. With ``ack_quarantined`` a body is acknowledged only once its stored
copy reads back and the same body failed ``ack_quarantined_after`` times (a transient truncation
heals by redelivery), and never under an id a DELETE may not carry (docs/delivery-semantics.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from airflow_provider_ktexport.api.envelope import is_ackable_id
from airflow_provider_ktexport.drain.acks import Acknowledger
from airflow_provider_ktexport.drain.config import DrainConfig
from airflow_provider_ktexport.drain.metrics import MetricsReporter
from airflow_provider_ktexport.drain.result import DrainResult
from airflow_provider_ktexport.exceptions import KtExportProtocolError
from airflow_provider_ktexport.lake.sinks import Sink

__all__ = ["Quarantine"]


class Quarantine:
    """Stores a batch body the client could not decode, and decides whether to acknowledge it.

    :param redact_body: masks the API key in a stored body, keeping every other byte
    :param redact_text: masks secrets in the human-readable reason
    """

    def __init__(
        self,
        sink: Sink,
        config: DrainConfig,
        result: DrainResult,
        acks: Acknowledger,
        metrics: MetricsReporter,
        log: Any,
        *,
        redact_body: Callable[[bytes], bytes],
        redact_text: Callable[[str], str],
    ) -> None:
        self.sink = sink
        self.config = config
        self.result = result
        self.acks = acks
        self.metrics = metrics
        self.log = log
        self._redact_body = redact_body
        self._redact_text = redact_text

    def keep(self, exc: KtExportProtocolError) -> None:
        """Store the body ``exc`` carries, acknowledge it if the policy allows, and say which."""
        body = self._redact_body(exc.body)
        path = self.sink.quarantine(body, reason=self._redact_text(str(exc)), batch_id=exc.batch_id)
        self.result.quarantined += 1
        self.metrics.incr("batches_quarantined", 1)
        outcome = "not acknowledged: the server will deliver it again after its lease"
        if self.config.ack_quarantined and exc.batch_id:
            outcome = self._maybe_ack(body, exc.batch_id)
        self.log.warning(
            "Quarantined an undecodable batch body (%d bytes, id %s) at %s; %s",
            len(exc.body),
            exc.batch_id or "unknown",
            path,
            outcome,
        )

    def _maybe_ack(self, body: bytes, batch_id: str) -> str:
        """Acknowledge a quarantined body under ``ack_quarantined``'s rules; what happened, as text."""
        seen = self.sink.quarantine_sightings(body)
        if not is_ackable_id(batch_id):
            return "not acknowledged: its id is not one a DELETE may carry"
        if seen < self.config.ack_quarantined_after:
            return (
                f"not acknowledged yet: seen {seen} of the {self.config.ack_quarantined_after} times "
                "ack_quarantined waits for (a transient fault heals by redelivery)"
            )
        if not self.sink.quarantine_kept(body):
            return "not acknowledged: its stored copy did not read back (stored again)"
        if self.acks.ack_one(batch_id):
            self.result.acked += 1
            self.metrics.incr("batches_acked", 1)
            return f"acknowledged after {seen} sightings (ack_quarantined=True)"
        self.result.ack_failed += 1
        self.metrics.incr("ack_failures", 1)
        return "its acknowledgement failed; it will be delivered again"
