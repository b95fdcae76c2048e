"""Where a drain reports its counters, timings and gauges (docs/monitoring.md).

Plain Python, no Airflow: the operator adapts Airflow's ``Stats`` to :class:`Metrics`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

__all__ = ["Metrics", "MetricsReporter", "NoMetrics"]


class Metrics(Protocol):
    """Where a drain reports its counters, timings and gauges (names without a prefix).

    The operator adapts Airflow's ``Stats``; the default reports nothing. Docs: docs/monitoring.md.
    """

    def incr(self, name: str, count: int) -> None: ...

    def timing(self, name: str, seconds: float) -> None: ...

    def gauge(self, name: str, value: float) -> None: ...


class NoMetrics:
    """Reports nothing."""

    def incr(self, name: str, count: int) -> None:
        pass

    def timing(self, name: str, seconds: float) -> None:
        pass

    def gauge(self, name: str, value: float) -> None:
        pass


class MetricsReporter:
    """The drain's side of :class:`Metrics`: a backend that fails can never fail a flush or cost
    its acknowledgements, and counters only move when something happened (no zero packets)."""

    def __init__(self, metrics: Metrics, log: Any = None) -> None:
        self.metrics = metrics
        self.log = log or logging.getLogger(__name__)

    def incr(self, name: str, count: int) -> None:
        if count:
            self._report("incr", name, count)

    def timing(self, name: str, seconds: float) -> None:
        self._report("timing", name, seconds)

    def gauge(self, name: str, value: float) -> None:
        self._report("gauge", name, value)

    def _report(self, kind: str, name: str, value: float) -> None:
        try:
            getattr(self.metrics, kind)(name, value)
        except Exception:  # noqa: BLE001 - a metric must not cost the flush its acknowledgements
            self.log.debug("Could not report metric %s", name, exc_info=True)
