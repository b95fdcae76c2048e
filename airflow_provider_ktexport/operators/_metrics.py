"""The drain's metrics through Airflow's own ``Stats`` (StatsD, Datadog or OpenTelemetry, as configured).

Names are ``ktexport.<metric>`` with the tag ``conn_id``: backends with tags (DogStatsD, InfluxDB-style
StatsD, OpenTelemetry) keep connections apart; plain StatsD drops the tag and sums them. See
docs/monitoring.md for each metric and an alerting recipe.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

#: Every metric name starts with this.
PREFIX = "ktexport."


def airflow_stats() -> Any:
    """Airflow's ``Stats`` facade, wherever this Airflow keeps it.

    Airflow 3.2+ moved it to the Task SDK (``airflow.sdk.observability.stats``); the old
    ``airflow.stats`` still works there but warns. Airflow 3.1 has only ``airflow.stats``.
    """
    try:
        from airflow.sdk.observability.stats import Stats
    except ImportError:
        try:
            from airflow.observability.stats import Stats  # type: ignore[no-redef,assignment]
        except ImportError:  # pragma: no cover - Airflow 3.1
            from airflow.stats import Stats  # type: ignore[no-redef,attr-defined]
    return Stats


class AirflowStatsMetrics:
    """A :class:`~airflow_provider_ktexport.drain.metrics.Metrics` that reports through Airflow's ``Stats``.

    :param conn_id: the ``ktexport`` connection drained, sent as the ``conn_id`` tag
    :param stats: the ``Stats`` facade (default: Airflow's)
    """

    def __init__(self, conn_id: str, *, stats: Any = None) -> None:
        self.tags = {"conn_id": conn_id}
        self.stats = stats if stats is not None else airflow_stats()

    def incr(self, name: str, count: int) -> None:
        self.stats.incr(PREFIX + name, count, tags=self.tags)

    def timing(self, name: str, seconds: float) -> None:
        # A timedelta: StatsD sends milliseconds, OpenTelemetry its own unit, each from the one value.
        self.stats.timing(PREFIX + name, timedelta(seconds=seconds), tags=self.tags)

    def gauge(self, name: str, value: float) -> None:
        self.stats.gauge(PREFIX + name, value, tags=self.tags)
