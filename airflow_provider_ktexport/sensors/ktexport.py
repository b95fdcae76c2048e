"""KtExportSensor: wait until a KT export queue holds data, without stealing it from the drain.

The export API cannot be peeked: the sensor's ``GET /v2/stream`` *leases* a
batch, which returns to the queue only when the lease ends (120 s). The sensor
never acknowledges it and never puts records in XCom; it returns when that
lease ends, and the drain's ``drain_until`` keeps the drain polling until then,
so the probed batch lands in the same run (docs/sensor.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from airflow_provider_ktexport.api.exchange import DEFAULT_LEASE_SECONDS
from airflow_provider_ktexport.api.probe import Probe, error_from_event, lease_end_iso
from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportTransientError
from airflow_provider_ktexport.hooks.ktexport import KtExportHook
from airflow_provider_ktexport.triggers.ktexport import KtExportTrigger

try:  # Airflow 3.2+
    from airflow.sdk.configuration import conf
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.configuration import conf  # type: ignore[no-redef]

try:  # Airflow 3.2+ exposes it from the Task SDK
    from airflow.sdk.exceptions import AirflowSensorTimeout
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.exceptions import AirflowSensorTimeout  # type: ignore[no-redef]

if TYPE_CHECKING:
    from airflow.sdk import Context


def _default_deferrable() -> bool:
    return conf.getboolean("operators", "default_deferrable", fallback=False)


class KtExportSensor(BaseSensorOperator):
    """Wait until the export queue holds data; return (XCom) when the probed batch's lease ends.

    Each poke is one long-polling ``GET /v2/stream`` (up to the connection's
    ``long_poll_seconds``). On data the batch stays leased, unacknowledged; the
    sensor succeeds with ``{"lease_ends_at": "<ISO-8601 UTC>", "record_count": n}``
    (``record_count`` is ``None`` when the body could not be decoded: the drain
    quarantines it). Pass ``lease_ends_at`` to the drain's ``drain_until``.

    An empty queue, 429/5xx and network errors mean "not yet". A refused key
    raises :class:`~airflow_provider_ktexport.exceptions.KtExportAuthError` at
    once, even with ``soft_fail=True`` (a wrong key is not "no data").

    :param ktexport_conn_id: the KT Export connection (templated)
    :param lease_seconds: the server's lease, 120 s on the real API (as on the drain operator)
        (templated: a rendered value is read as a number of seconds)
    :param deferrable: wait in the triggerer (async long poll) instead of a worker slot; default
        ``[operators] default_deferrable``
    :param poke_interval: seconds between pokes (a poke itself can last one long poll)
    :param timeout: seconds before the sensor fails (or skips with ``soft_fail``)
    :param mode: ``poke`` or ``reschedule``
    :param soft_fail: skip instead of failing on timeout (never on an auth error)
    """

    template_fields: Sequence[str] = ("ktexport_conn_id", "lease_seconds")
    ui_color = "#d9ecf2"

    def __init__(
        self,
        *,
        ktexport_conn_id: str = KtExportHook.default_conn_name,
        lease_seconds: float | str = DEFAULT_LEASE_SECONDS,
        deferrable: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.ktexport_conn_id = ktexport_conn_id
        self.lease_seconds = lease_seconds
        self.deferrable = _default_deferrable() if deferrable is None else deferrable

    @cached_property
    def hook(self) -> KtExportHook:
        """The hook, built on first use (never at DAG parse time)."""
        return KtExportHook(ktexport_conn_id=self.ktexport_conn_id)

    def _lease_seconds(self) -> float:
        # Templated: a rendered "{{ params.lease_seconds }}" arrives as text.
        try:
            value = float(self.lease_seconds)
        except (TypeError, ValueError):
            raise KtExportConfigError(
                f"lease_seconds must be a number of seconds, got {self.lease_seconds!r}"
            ) from None
        if not value > 0:
            raise KtExportConfigError(f"lease_seconds must be > 0, not {self.lease_seconds!r}")
        return value

    def probe(self) -> Probe | None:
        """One long-polling GET: a :class:`Probe` when it leased data, else ``None``.

        :raises KtExportAuthError: the key was refused (never retried, never "no data")
        """
        lease_seconds = self._lease_seconds()
        try:
            return self.hook.probe(lease_seconds)
        except KtExportTransientError as exc:
            self.log.warning("%s; will try again", exc)
            return None

    def poke(self, context: Context) -> PokeReturnValue:
        """Probe once; done when a batch was leased (its lease end is the XCom value)."""
        found = self.probe()
        if found is None:
            self.log.info("the queue of %r is empty", self.ktexport_conn_id)
            return PokeReturnValue(is_done=False)
        self._log_found(found)
        return PokeReturnValue(is_done=True, xcom_value=found.as_xcom())

    def execute(self, context: Context) -> Any:
        """Poke (poke/reschedule mode); or poke once, then defer to :class:`KtExportTrigger`."""
        if not self.deferrable:
            return super().execute(context)
        started = time.time()
        found = self.probe()
        if found is not None:
            self._log_found(found)
            return found.as_xcom()
        remaining = max(0.0, self.timeout - (time.time() - started))
        self.defer(
            trigger=KtExportTrigger(
                ktexport_conn_id=self.ktexport_conn_id,
                lease_seconds=self._lease_seconds(),
                timeout_at=started + self.timeout,
            ),
            method_name="execute_complete",
            # The triggerer's own limit, a little after the trigger's: the trigger ends first and says why.
            timeout=timedelta(seconds=remaining + 60),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: return the lease end, or raise what went wrong."""
        if not event:
            raise RuntimeError("KtExportSensor resumed without a trigger event")
        status = event.get("status")
        if status == "success":
            self.log.info(
                "batch %s leased (%s records); its lease ends at %s (left unacknowledged for the drain)",
                event.get("batch_id"),
                event.get("record_count"),
                event.get("lease_ends_at"),
            )
            return Probe.xcom_of_event(event)
        if status == "timeout":
            message = f"Sensor has timed out: {event.get('message')}"
            # Logged here because soft_fail replaces it with a generic skip message.
            self.log.warning("%s", message)
            # An AirflowException: soft_fail turns it into a skip, as in poke mode.
            raise AirflowSensorTimeout(message)
        # auth -> KtExportAuthError (not an AirflowException, so soft_fail cannot hide it), ...
        raise error_from_event(event)

    def _log_found(self, found: Probe) -> None:
        self.log.info(
            "batch %s leased (%s records); left unacknowledged, its lease ends at %s",
            found.batch_id,
            found.record_count,
            lease_end_iso(found.lease_ends_at),
        )
