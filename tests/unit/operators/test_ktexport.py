"""KtExportToParquetOperator without running Airflow: construction, copying, validation."""

from __future__ import annotations

import copy

import pytest

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator


def make(**kw) -> KtExportToParquetOperator:
    kw.setdefault("destination", "file:///tmp/lake")
    return KtExportToParquetOperator(task_id="drain", **kw)


def test_operator_survives_deepcopy():
    """Airflow deep-copies operators (partial/expand, template rendering) before they run."""
    op = make(max_reject_share=0.1, max_flush_partitions=50)
    clone = copy.deepcopy(op)
    assert clone.max_reject_share == 0.1 and clone.max_flush_partitions == 50
    clone.on_kill()  # nothing to stop before execute: must not fail


@pytest.mark.parametrize(
    "kw, setting",
    [
        ({"max_reject_share": 1.5}, "max_reject_share"),
        ({"max_flush_partitions": 0}, "max_flush_partitions"),
        ({"write_concurrency": 0}, "write_concurrency"),
        ({"ack_quarantined_after": 0}, "ack_quarantined_after"),
    ],
)
def test_bad_settings_fail_at_parse_time_naming_the_setting(kw, setting):
    with pytest.raises(KtExportConfigError, match=setting):
        make(**kw)


def test_drain_until_takes_the_sensors_whole_xcom_as_rendered_text():
    from airflow_provider_ktexport.operators.ktexport import parse_drain_until

    probe = {"lease_ends_at": "2026-12-01T10:00:00+00:00", "batch_id": "b1", "records": 3}
    expected = 1796119200.0
    assert parse_drain_until(probe) == expected
    assert parse_drain_until(str(probe)) == expected  # what "{{ ti.xcom_pull(task_ids='wait') }}" renders
    assert parse_drain_until(__import__("json").dumps(probe)) == expected
    with pytest.raises(KtExportConfigError, match="drain_until"):
        parse_drain_until("{'no_lease': 1}")


def test_lease_and_flush_age_are_templated_and_read_as_seconds_when_the_task_runs():
    assert {"lease_seconds", "flush_seconds"} <= set(KtExportToParquetOperator.template_fields)
    # Templated: not checked at parse time (a 60 s flush age would not fit a 5 s lease).
    op = make(lease_seconds="{{ params.lease_seconds }}", flush_seconds="{{ params.lease_seconds / 2 }}")
    op.lease_seconds, op.flush_seconds = "5", "2.5"  # as rendered
    config = op._config(drain_until=None)
    assert (config.lease_seconds, config.flush_seconds) == (5.0, 2.5)
    op.lease_seconds, op.flush_seconds = "5", "60"
    with pytest.raises(KtExportConfigError, match="flush_seconds"):
        op._config(drain_until=None)
    op.lease_seconds = "five"
    with pytest.raises(KtExportConfigError, match="lease_seconds must be a number of seconds, got 'five'"):
        op._config(drain_until=None)
    with pytest.raises(KtExportConfigError, match="flush_seconds"):
        make(lease_seconds=5)  # a literal lease is still checked at parse time
