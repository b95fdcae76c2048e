"""The ``ktexport`` command's options (cli/options.py): settings and config built from them."""

from __future__ import annotations

import pytest

from airflow_provider_ktexport.cli.options import build_parser, client_settings, drain_config, pairs
from airflow_provider_ktexport.drain import DrainConfig, connections_needed
from airflow_provider_ktexport.exceptions import KtExportConfigError

#: Nothing listens here: nothing in these tests reaches the network.
DEAD_URL = "http://127.0.0.1:9"


def drain_args(*extra: str):
    return build_parser().parse_args(["drain", "--url", DEAD_URL, "--dest", "/tmp/lake", *extra])


def test_the_pool_holds_every_outstanding_get_and_concurrent_ack():
    settings = client_settings(drain_args(), max_in_flight=7)
    assert settings.pool_size == connections_needed(7) > 7


def test_options_left_out_keep_the_operators_defaults():
    assert drain_config(drain_args()) == DrainConfig()
    config = drain_config(
        drain_args("--max-runtime", "30", "--keep-polling", "--partition-by", "event_date", "--include-raw")
    )
    assert (config.max_runtime, config.stop_when_empty, config.partition_by, config.include_raw) == (
        30.0,
        False,
        ("event_date",),
        True,
    )
    assert drain_config(drain_args("--redelivery-window", "86400")).redelivery_window == 86400.0


def test_storage_options_read_json_values_and_keep_text():
    got = pairs(
        ["anon=false", 'client_kwargs={"region_name": "eu-west-1"}', "endpoint_url=http://x:9000"],
        "-o",
        as_json=True,
    )
    assert got == {
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1"},
        "endpoint_url": "http://x:9000",
    }
    with pytest.raises(KtExportConfigError, match="is not KEY=VALUE"):
        pairs(["region"], "--storage-option")
