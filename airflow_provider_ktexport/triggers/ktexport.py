"""Triggers that wait, in the triggerer, until a KT export queue holds data.

A probe cannot peek: the export API's ``GET /v2/stream`` *leases* the batch it
returns, and the batch goes back to the queue only when the lease ends (120 s).
So a probe never acknowledges what it found and reports when its lease ends;
the drain that follows keeps polling until then (``drain_until``) and lands the
probed batch in the same run. See docs/sensor.md.

The triggers hold no protocol rule: the connection is read by
:class:`~airflow_provider_ktexport.hooks.ktexport_async.KtExportAsyncHook`, the waiting is
:class:`~airflow_provider_ktexport.transport.async_client.AsyncProber`'s (async, so nothing here
blocks the triggerer's event loop), and what an answer means is
:mod:`airflow_provider_ktexport.api`'s, which the drain's sync client drives too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from airflow_provider_ktexport.api.exchange import DEFAULT_LEASE_SECONDS
from airflow_provider_ktexport.api.probe import Probe, error_event, error_from_event, lease_end_iso
from airflow_provider_ktexport.exceptions import KtExportError
from airflow_provider_ktexport.hooks.ktexport_async import aclient_settings
from airflow_provider_ktexport.transport.async_client import AsyncProber

try:  # Airflow 3.2+ (the same class is re-exported by airflow.exceptions)
    from airflow.sdk.exceptions import AirflowNotFoundException
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.exceptions import AirflowNotFoundException  # type: ignore[no-redef]

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "AsyncProber",
    "KtExportEventTrigger",
    "KtExportTrigger",
    "Probe",
    "aclient_settings",
    "error_event",
    "error_from_event",
    "lease_end_iso",
]


# ---------------------------------------------------------------------------- triggers


class KtExportTrigger(BaseTrigger):
    """Long-poll the queue from the triggerer until it holds data; used by ``KtExportSensor``.

    Yields one event: ``{"status": "success", "lease_ends_at": ISO-8601, "record_count": n,
    "batch_id": id}`` when a GET leased data (it is *not* acknowledged: it returns to the queue
    at ``lease_ends_at``); ``{"status": "error", "cause": "auth" | "config" | "http" | "protocol"
    | "error", "status_code": ..., "message": ...}`` on a failure waiting cannot fix; or
    ``{"status": "timeout", ...}`` once ``timeout_at`` has passed. Empty answers (500, a 200
    without id) loop; 429/5xx and network errors back off and keep waiting.

    The API key never appears in the kwargs: the trigger reads the connection in the triggerer.

    :param ktexport_conn_id: the KT Export connection
    :param lease_seconds: the server's lease (120 s on the real API)
    :param timeout_at: epoch seconds after which no new GET starts and a timeout event is sent
        (the triggerer's own timeout applies too; this one also works in ``dag.test()``)
    """

    def __init__(
        self,
        *,
        ktexport_conn_id: str = "ktexport_default",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        timeout_at: float | None = None,
    ) -> None:
        super().__init__()
        self.ktexport_conn_id = ktexport_conn_id
        self.lease_seconds = float(lease_seconds)
        self.timeout_at = None if timeout_at is None else float(timeout_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs: the connection id, never the key."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "ktexport_conn_id": self.ktexport_conn_id,
                "lease_seconds": self.lease_seconds,
                "timeout_at": self.timeout_at,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait for data; yield exactly one event."""
        try:
            settings = await aclient_settings(self.ktexport_conn_id)
            async with AsyncProber(settings, lease_seconds=self.lease_seconds, logger=self.log) as prober:
                probe = await prober.wait_for_data(deadline=self.timeout_at)
        except (KtExportError, AirflowNotFoundException) as exc:
            # The cause travels in the event; execute_complete raises the matching error.
            yield TriggerEvent(error_event(exc))
            return
        if probe is None:
            yield TriggerEvent(
                {"status": "timeout", "message": f"no data in the queue of {self.ktexport_conn_id!r} in time"}
            )
            return
        self.log.info(
            "batch %s leased (%s records); its lease ends at %s",
            probe.batch_id,
            probe.record_count,
            lease_end_iso(probe.lease_ends_at),
        )
        yield TriggerEvent(probe.as_event())


class KtExportEventTrigger(BaseEventTrigger):
    """Fire an event each time the queue holds data, for ``AssetWatcher`` scheduling.

    A probe leases the batch it finds, so firing and probing again at once would
    keep the batch away from the drain the event starts (starvation). After each
    event this trigger therefore sleeps past the probed lease *and* the drain's
    grace long poll (``lease_ends_at + long_poll_seconds``, at least
    ``lease_seconds`` from firing) before it probes again. The event payload
    carries ``lease_ends_at`` for the drain's ``drain_until``, reachable in the
    triggered DAG as ``triggering_asset_events`` ... ``.extra["payload"]["lease_ends_at"]``.

    An auth or configuration failure is raised (the triggerer logs it and the
    watcher stops): an asset event must not stand for "the key is wrong".

    :param ktexport_conn_id: the KT Export connection
    :param lease_seconds: the server's lease (120 s on the real API)
    """

    def __init__(
        self, *, ktexport_conn_id: str = "ktexport_default", lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> None:
        super().__init__()
        self.ktexport_conn_id = ktexport_conn_id
        self.lease_seconds = float(lease_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs: the connection id, never the key."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"ktexport_conn_id": self.ktexport_conn_id, "lease_seconds": self.lease_seconds},
        )

    def quiet_until(self, probe: Probe, fired_at: float, long_poll_seconds: float) -> float:
        """When the next probe may start: past the lease and the drain's grace long poll."""
        return max(probe.lease_ends_at, fired_at + self.lease_seconds) + long_poll_seconds

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield an event per probed batch, pausing at least one lease after each."""
        settings = await aclient_settings(self.ktexport_conn_id)
        async with AsyncProber(settings, lease_seconds=self.lease_seconds, logger=self.log) as prober:
            while True:
                probe = await prober.wait_for_data()
                if probe is None:  # pragma: no cover - no deadline, so wait_for_data returns a probe
                    continue
                fired_at = time.time()
                resume_at = self.quiet_until(probe, fired_at, prober.long_poll_seconds)
                self.log.info(
                    "batch %s leased (%s records), lease ends at %s; next probe after %s",
                    probe.batch_id,
                    probe.record_count,
                    lease_end_iso(probe.lease_ends_at),
                    lease_end_iso(resume_at),
                )
                yield TriggerEvent(probe.as_event())
                await asyncio.sleep(max(0.0, resume_at - time.time()))
