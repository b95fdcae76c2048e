"""The drain's settings: the one home of their defaults and of their validation.

Plain Python, no Airflow. The operators read their defaults from :class:`DrainConfig`'s fields
(:data:`DEFAULTS`) instead of restating them, and every check runs here once, when a config is
built, so a setting is refused with the same message whoever passes it (docs/configuration.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from airflow_provider_ktexport.api.exchange import DEFAULT_LEASE_SECONDS
from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.lake.ledger import DEFAULT_REDELIVERY_WINDOW
from airflow_provider_ktexport.lake.sinks import MAX_WRITE_CONCURRENCY

__all__ = [
    "ACK_CONCURRENCY",
    "DEFAULTS",
    "PARTITION_KEYS",
    "DrainConfig",
    "connections_needed",
    "min_lease_margin",
]

#: Partition keys the provider knows how to derive.
PARTITION_KEYS = ("record_type", "event_date", "ingest_date")

#: Acknowledgements of one flush sent at once: a 50k-record flush is ~100 DELETEs, which must not
#: eat the lease one round trip at a time when the server is far away.
ACK_CONCURRENCY = 16


def connections_needed(max_in_flight: int) -> int:
    """HTTP connections a drain keeps busy at once: outstanding GETs plus concurrent acks."""
    return max_in_flight + ACK_CONCURRENCY


def min_lease_margin(lease_seconds: float) -> float:
    """Time a flush must leave under the lease for writing and acknowledging."""
    return max(2.0, 0.25 * lease_seconds)


@dataclass(frozen=True)
class DrainConfig:
    """Settings of one drain run; see docs/configuration.md for each."""

    max_runtime: float = 600.0
    flush_records: int = 50_000
    flush_seconds: float = 60.0
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    stop_when_empty: bool = True
    drain_until: float | None = None
    max_in_flight: int = 4
    ack_quarantined: bool = False
    ack_quarantined_after: int = 3
    include_raw: bool = False
    partition_by: tuple[str, ...] = ("record_type", "event_date")
    source: str = "ktexport_default"
    max_reject_share: float | None = None
    max_flush_partitions: int = 2000
    #: None: 64 on an object store, 8 on a local disk (see lake.sinks.default_write_concurrency).
    write_concurrency: int | None = None
    #: Seconds a flush left in doubt (a batch not acknowledged) is remembered, so its records'
    #: redelivery is dropped as already landed: 7 days, since redeliveries wait for the next run.
    redelivery_window: float = DEFAULT_REDELIVERY_WINDOW

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``KtExportConfigError`` naming the setting that is wrong and what to do."""
        self._check_times()
        self._check_limits()
        self._check_partition_by()

    def _check_times(self) -> None:
        if self.max_runtime <= 0:
            raise KtExportConfigError(f"max_runtime must be positive, got {self.max_runtime!r}")
        if self.lease_seconds <= 0:
            raise KtExportConfigError(f"lease_seconds must be positive, got {self.lease_seconds!r}")
        if self.flush_seconds <= 0:
            raise KtExportConfigError(f"flush_seconds must be positive, got {self.flush_seconds!r}")
        margin = min_lease_margin(self.lease_seconds)
        if self.flush_seconds > self.lease_seconds - margin:
            raise KtExportConfigError(
                f"flush_seconds={self.flush_seconds:g} leaves too little of the {self.lease_seconds:g} s lease "
                f"to write and acknowledge: keep it at most {self.lease_seconds - margin:g} s "
                f"(lease_seconds minus a margin of {margin:g} s), or lower it."
            )
        if self.redelivery_window < self.lease_seconds:
            raise KtExportConfigError(
                f"redelivery_window must be at least the lease ({self.lease_seconds:g} s), got "
                f"{self.redelivery_window!r}: a redelivery later than the window lands twice; keep the "
                "default (7 days) unless runs are more frequent than that"
            )

    def _check_limits(self) -> None:
        if self.flush_records < 1:
            raise KtExportConfigError(f"flush_records must be at least 1, got {self.flush_records!r}")
        if not 1 <= self.max_in_flight <= 32:
            raise KtExportConfigError(f"max_in_flight must be between 1 and 32, got {self.max_in_flight!r}")
        if self.ack_quarantined_after < 1:
            raise KtExportConfigError(
                f"ack_quarantined_after must be at least 1, got {self.ack_quarantined_after!r}"
            )
        if self.max_reject_share is not None and not 0 <= self.max_reject_share < 1:
            raise KtExportConfigError(
                f"max_reject_share must be a share from 0 up to (not including) 1, or None to only warn; "
                f"got {self.max_reject_share!r}"
            )
        if self.max_flush_partitions < 1:
            raise KtExportConfigError(
                f"max_flush_partitions must be at least 1, got {self.max_flush_partitions!r}"
            )
        if self.write_concurrency is not None and not 1 <= self.write_concurrency <= MAX_WRITE_CONCURRENCY:
            raise KtExportConfigError(
                f"write_concurrency must be between 1 and {MAX_WRITE_CONCURRENCY}, or None for the default "
                f"(64 on an object store, 8 on a local disk); got {self.write_concurrency!r}"
            )

    def _check_partition_by(self) -> None:
        unknown = [k for k in self.partition_by if k not in PARTITION_KEYS]
        if unknown or not self.partition_by or len(set(self.partition_by)) != len(self.partition_by):
            raise KtExportConfigError(
                f"partition_by={list(self.partition_by)!r} is not valid: use distinct keys from {list(PARTITION_KEYS)}"
            )


#: Every setting at its default, for the operators' signatures: reading ``DEFAULTS.lease_seconds``
#: keeps one home for each default (an operator that restated ``120.0`` would drift the day the
#: drain's default changes).
DEFAULTS = DrainConfig()
