"""Metrics: the drain's Metrics sink and the Airflow Stats adapter."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.exceptions import KtExportProtocolError
from airflow_provider_ktexport.operators._metrics import AirflowStatsMetrics, airflow_stats
from tests.unit.drain.support import HOSTILE, FakeClient, batch_of, good_records, make_batch, writer_for


class FakeMetrics:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.fail = fail

    def _note(self, kind: str, name: str, value: float) -> None:
        if self.fail:
            raise RuntimeError("metrics backend down")
        self.calls.append((kind, name, value))

    def incr(self, name: str, count: int) -> None:
        self._note("incr", name, count)

    def timing(self, name: str, seconds: float) -> None:
        self._note("timing", name, seconds)

    def gauge(self, name: str, value: float) -> None:
        self._note("gauge", name, value)

    def sums(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for kind, name, value in self.calls:
            if kind == "incr":
                out[name] += value
        return dict(out)

    def of(self, kind: str, name: str) -> list[float]:
        return [v for k, n, v in self.calls if k == kind and n == name]


def drain(client, lake: Path, metrics, **cfg) -> Drain:
    cfg = {"max_runtime": 20, "lease_seconds": 8, "flush_seconds": 3, "max_in_flight": 1, **cfg}
    d = Drain(client, writer_for(lake), DrainConfig(**cfg), metrics=metrics)
    d.run()
    return d


# -- metrics ---------------------------------------------------------------------------------------


def test_counters_add_up_to_what_landed_was_rejected_quarantined_and_acked(tmp_path):
    metrics = FakeMetrics()
    client = FakeClient(
        [
            make_batch("a", range(0, 30)),
            batch_of("b", good_records(5, 100) + [HOSTILE["number_out_of_range"], HOSTILE["lone_surrogate"]]),
            KtExportProtocolError("truncated", body=b'{"id": "q", "items": [1', batch_id="q"),
            make_batch("c", range(30, 40)),
        ]
    )
    result = drain(client, tmp_path / "lake", metrics, flush_records=20).result
    assert result.records == 45 and result.rejected == 2
    assert metrics.sums() == {
        "records_landed": 45,
        "records_rejected": 2,
        "batches_quarantined": 1,
        "batches_acked": 3,
    }
    assert len(metrics.of("timing", "flush_duration")) == result.flushes >= 2
    ages = metrics.of("gauge", "oldest_record_age_seconds")
    assert len(ages) == result.flushes and max(ages) == result.oldest_record_age_s
    # The records are from 2026-11-25T10:00Z: the lag is their age when they landed.
    expected = (datetime.now(UTC) - datetime(2026, 11, 25, 10, tzinfo=UTC)).total_seconds()
    assert max(ages) == pytest.approx(expected, abs=60)


def test_failed_acks_are_counted(tmp_path):
    metrics = FakeMetrics()
    client = FakeClient([make_batch("x", range(2)), make_batch("y", range(2, 4))], ack_result=False)
    drain(client, tmp_path / "lake", metrics)
    assert metrics.sums() == {"records_landed": 4, "ack_failures": 2}


def test_a_failing_metrics_backend_never_costs_a_flush_its_acks(tmp_path):
    client = FakeClient([make_batch("x", range(3))])
    result = drain(client, tmp_path / "lake", FakeMetrics(fail=True)).result
    assert client.acks == ["x"] and result.acked == 1 and result.records == 3


def test_the_stats_adapter_prefixes_names_and_tags_the_connection():
    calls = []

    class FakeStats:
        def incr(self, stat, count, *, tags):
            calls.append(("incr", stat, count, tags))

        def timing(self, stat, dt, *, tags):
            calls.append(("timing", stat, dt, tags))

        def gauge(self, stat, value, *, tags):
            calls.append(("gauge", stat, value, tags))

    m = AirflowStatsMetrics("kt_prod", stats=FakeStats())
    m.incr("records_landed", 7)
    m.timing("flush_duration", 1.5)
    m.gauge("oldest_record_age_seconds", 42.0)
    tags = {"conn_id": "kt_prod"}
    assert calls == [
        ("incr", "ktexport.records_landed", 7, tags),
        ("timing", "ktexport.flush_duration", timedelta(seconds=1.5), tags),
        ("gauge", "ktexport.oldest_record_age_seconds", 42.0, tags),
    ]


def test_airflows_stats_is_found_on_this_airflow():
    stats = airflow_stats()
    assert all(callable(getattr(stats, name)) for name in ("incr", "timing", "gauge"))


# -- lineage helpers -------------------------------------------------------------------------------
