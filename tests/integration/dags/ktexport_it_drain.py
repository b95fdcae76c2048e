"""A drain DAG the integration tests tune through environment variables (read at parse time)."""

from __future__ import annotations

import json
import os
from datetime import timedelta

import pendulum
from airflow.sdk import Asset, dag

from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator

OPTIONS = json.loads(os.environ.get("KTEXPORT_IT_OPTIONS", "{}"))
if "execution_timeout" in OPTIONS:  # JSON has no timedelta: seconds
    OPTIONS["execution_timeout"] = timedelta(seconds=OPTIONS["execution_timeout"])
if "asset" in OPTIONS:  # JSON has no Asset: its URI
    OPTIONS["asset"] = Asset(OPTIONS["asset"])


@dag(
    dag_id="ktexport_it_drain",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
)
def ktexport_it_drain():
    KtExportToParquetOperator(
        task_id="drain",
        **{"destination": "{{ var.value.ktexport_lake }}", **OPTIONS},
    )


ktexport_it_drain()
