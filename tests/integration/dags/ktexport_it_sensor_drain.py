"""Sensor -> drain, tuned by the integration tests through KTEXPORT_IT_OPTIONS (read at parse time)."""

from __future__ import annotations

import json
import os

import pendulum
from airflow.sdk import dag

from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator
from airflow_provider_ktexport.sensors.ktexport import KtExportSensor

OPTIONS = json.loads(os.environ.get("KTEXPORT_IT_OPTIONS", "{}"))
LEASE = OPTIONS.get("lease_seconds", 120)


@dag(
    dag_id="ktexport_it_sensor_drain",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
)
def ktexport_it_sensor_drain():
    wait = KtExportSensor(
        task_id="wait_for_data",
        lease_seconds=LEASE,
        deferrable=OPTIONS.get("deferrable", False),
        poke_interval=1,
        timeout=60,
    )
    drain = KtExportToParquetOperator(
        task_id="drain",
        destination="{{ var.value.ktexport_lake }}",
        drain_until="{{ ti.xcom_pull(task_ids='wait_for_data')['lease_ends_at'] }}",
        lease_seconds=LEASE,
        flush_seconds=OPTIONS.get("flush_seconds", 60),
        max_runtime=60,
    )
    wait >> drain


ktexport_it_sensor_drain()
