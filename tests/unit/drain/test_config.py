"""DrainConfig: the one home of the drain's defaults and checks."""

from __future__ import annotations

import pytest

from airflow_provider_ktexport.drain import DrainConfig
from airflow_provider_ktexport.exceptions import (
    KtExportConfigError,
)


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
            {"max_in_flight": 0},
            {"partition_by": ("record_type", "hour")},
            {"partition_by": ()},
        ],
    )
    def test_bad_values_name_the_setting(self, kwargs):
        with pytest.raises(KtExportConfigError, match=next(iter(kwargs))):
            DrainConfig(**kwargs)
