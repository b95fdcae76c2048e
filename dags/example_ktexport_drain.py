"""Scheduled drain: every 15 minutes, land whatever the export queue holds as Parquet.

Run it offline against the bundled emulator with ``bash scripts/demo``. The lake URL comes from
the Airflow Variable ``ktexport_lake`` (e.g. ``s3://aws_default@my-bucket/ktexport`` or
``file:///data/lake/ktexport``); the connection ``ktexport_default`` holds the export API's base
URL and key.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator

MAX_RUNTIME = timedelta(minutes=10)


@dag(
    dag_id="ktexport_drain",
    schedule=timedelta(minutes=15),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ktexport", "example"],
    default_args={
        # Transient trouble (server 5xx after the client's own retries, storage hiccups) heals on
        # a retry; nothing is lost meanwhile since unacknowledged batches are redelivered.
        "retries": 2,
        "retry_delay": timedelta(minutes=1),
    },
)
def ktexport_drain():
    KtExportToParquetOperator(
        task_id="drain_to_lake",
        destination="{{ var.value.get('ktexport_lake', 'file:///tmp/ktexport/lake') }}",
        max_runtime=MAX_RUNTIME,
        # Leave time after max_runtime for the last flush and its acknowledgements.
        execution_timeout=MAX_RUNTIME + timedelta(minutes=3),
    )


ktexport_drain()
