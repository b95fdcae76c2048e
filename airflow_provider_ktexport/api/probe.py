"""What a waiting sensor reports: a probed lease, or an error that travels as a trigger event.

A probe cannot peek: ``GET /v2/stream`` leases the batch it returns, so a probe never
acknowledges it and reports when its lease ends; the drain's ``drain_until`` polls until then.
The sensor (sync transport) and the trigger (async transport) both build a :class:`Probe` with
:func:`probe_of`, and the sensor's XCom is :meth:`Probe.as_xcom` on either path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from airflow_provider_ktexport.api.exchange import Lease, Problem, lease_end
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportBodyTooLargeError,
    KtExportConfigError,
    KtExportError,
    KtExportHTTPError,
    KtExportProtocolError,
    KtExportTransientError,
)

__all__ = ["Probe", "error_event", "error_from_event", "lease_end_iso", "probe_of"]


def lease_end_iso(epoch_seconds: float) -> str:
    """ISO-8601 UTC text (``...+00:00``) of an epoch time: what ``drain_until`` accepts."""
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).isoformat()


@dataclass(frozen=True)
class Probe:
    """A probe that found data: the batch stays leased (not acknowledged) until ``lease_ends_at``.

    :param lease_ends_at: epoch seconds (wall clock) when the batch returns to the queue
    :param record_count: records in the probed batch; ``None`` when its body could not be decoded
    :param batch_id: the leased batch's id, when known (for logs only)
    """

    lease_ends_at: float
    record_count: int | None
    batch_id: str | None = None

    def as_xcom(self) -> dict[str, Any]:
        """The sensor's XCom: metadata only, never records."""
        return {"lease_ends_at": lease_end_iso(self.lease_ends_at), "record_count": self.record_count}

    def as_event(self) -> dict[str, Any]:
        """A success event payload (JSON-serialisable)."""
        return {"status": "success", **self.as_xcom(), "batch_id": self.batch_id}

    @staticmethod
    def xcom_of_event(event: Mapping[str, Any]) -> dict[str, Any]:
        """The XCom of a success event (what :meth:`as_xcom` gave before it travelled)."""
        return {"lease_ends_at": event["lease_ends_at"], "record_count": event.get("record_count")}


_CAUSES: tuple[tuple[type[KtExportError], str], ...] = (
    (KtExportAuthError, "auth"),
    (KtExportBodyTooLargeError, "body_too_large"),
    (KtExportConfigError, "config"),
    (KtExportProtocolError, "protocol"),
    (KtExportHTTPError, "http"),
    (KtExportTransientError, "transient"),
)


def error_event(exc: BaseException) -> dict[str, Any]:
    """An error event payload that keeps the cause (class, status) and the (redacted) message."""
    cause = "error"
    for kind, name in _CAUSES:
        if isinstance(exc, kind):
            cause = name
            break
    else:
        # The connection id is not defined (matched by name: the class moved between Airflow versions).
        if type(exc).__name__ == "AirflowNotFoundException":
            cause = "config"
    event = {
        "status": "error",
        "cause": cause,
        "status_code": getattr(exc, "status_code", None),
        "message": str(exc),
    }
    if isinstance(exc, KtExportBodyTooLargeError):
        event.update(limit=exc.limit, received=exc.received)
    return event


def error_from_event(event: Mapping[str, Any]) -> KtExportError:
    """Rebuild the exception an error event stands for (auth -> :class:`KtExportAuthError`, ...)."""
    message = str(event.get("message") or "the KT export trigger failed without a message")
    status_code = event.get("status_code")
    cause = event.get("cause")
    if cause == "protocol":
        return KtExportProtocolError(message, body=b"")
    if cause == "body_too_large":
        return KtExportBodyTooLargeError(
            message, limit=int(event.get("limit") or 0), received=int(event.get("received") or 0)
        )
    kinds: dict[Any, type[KtExportError]] = {
        "auth": KtExportAuthError,
        "config": KtExportConfigError,
        "http": KtExportHTTPError,
        "transient": KtExportTransientError,
    }
    return kinds.get(cause, KtExportError)(message, status_code=status_code)


def probe_of(found: Lease | Problem, lease_seconds: float, *, now_mono: float, now_wall: float) -> Probe:
    """The probe of a GET that leased something. A :class:`Problem` counts as data too: only a
    lease answers 200 (an empty queue answers 500), and the drain that follows keeps the body in
    quarantine and reports it, instead of a sensor waiting forever on a batch it cannot read."""
    ends = lease_end(found.received_at, lease_seconds, now_mono=now_mono, now_wall=now_wall)
    if isinstance(found, Problem):
        return Probe(ends, None, found.batch_id)
    return Probe(ends, len(found.items), found.batch_id)
