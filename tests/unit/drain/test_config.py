"""DrainConfig: the one home of the drain's defaults and checks."""

from __future__ import annotations

import inspect
from datetime import timedelta

import pytest

from airflow_provider_ktexport.drain import DrainConfig
from airflow_provider_ktexport.drain.config import DEFAULTS
from airflow_provider_ktexport.exceptions import KtExportConfigError


class TestConfig:
    def test_defaults_are_valid(self):
        cfg = DrainConfig()
        assert (cfg.flush_seconds, cfg.lease_seconds, cfg.flush_records) == (60, 120, 50_000)

    def test_short_test_settings_are_accepted(self):
        DrainConfig(lease_seconds=8, flush_seconds=3)

    @pytest.mark.parametrize("flush", [100, 119, 120, 200])
    def test_flush_too_close_to_the_lease_is_refused_with_the_limit(self, flush):
        with pytest.raises(KtExportConfigError, match=r"flush_seconds=.* at most 90 s"):
            DrainConfig(flush_seconds=flush, lease_seconds=120)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"max_runtime": 0},
            {"flush_records": 0},
            {"lease_seconds": 0},
            {"flush_seconds": 0},
            {"max_in_flight": 0},
            {"max_in_flight": 33},
            {"ack_quarantined_after": 0},
            {"max_reject_share": 1.0},
            {"max_flush_partitions": 0},
            {"write_concurrency": 0},
            {"redelivery_window": 60},
            {"partition_by": ("record_type", "hour")},
            {"partition_by": ()},
        ],
    )
    def test_bad_values_name_the_setting(self, kwargs):
        with pytest.raises(KtExportConfigError, match=next(iter(kwargs))):
            DrainConfig(**kwargs)


def test_the_drain_operators_read_their_defaults_from_drain_config():
    """One home for each default: the operator's signature shows DrainConfig's values, so the
    two can never drift (the operator used to restate all thirteen)."""
    from airflow_provider_ktexport.operators.ktexport import KtExportDrainOperatorBase

    params = inspect.signature(KtExportDrainOperatorBase.__init__).parameters
    shared = [name for name in params if hasattr(DEFAULTS, name) and name != "drain_until"]
    assert len(shared) == 14  # every setting but source (the connection id) and drain_until
    for name in shared:
        default = params[name].default
        if isinstance(default, timedelta):
            default = default.total_seconds()
        assert default == getattr(DEFAULTS, name), name


def test_a_bad_lease_is_refused_by_the_operator_with_drain_configs_message():
    """lease_seconds is checked in one place: the operator's error is DrainConfig's, word for word."""
    from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator

    with pytest.raises(KtExportConfigError) as direct:
        DrainConfig(lease_seconds=-1.0)
    with pytest.raises(KtExportConfigError) as through_operator:
        KtExportToParquetOperator(task_id="t", destination="file:///tmp/lake", lease_seconds=-1)
    assert str(through_operator.value) == str(direct.value)
