"""Wait for data with a deferrable sensor, then drain it - the probed batch lands in the same run.

The sensor's GET leases a batch it cannot acknowledge (a sensor must not write), so that batch
returns to the queue only when its lease ends. The sensor returns that time (``lease_ends_at``)
and the drain keeps polling through empty answers until then plus one long poll, so the probed
batch is not left for the next run. See docs/sensor.md.

The lease is the DAG param ``lease_seconds`` (120 s, the real API's): a run against an export task
with another lease, such as the emulator started with ``--lease-seconds 5``, passes it in the run's
conf (``airflow dags test ktexport_sensor_then_drain -c '{"lease_seconds": 5}'``).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag

from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator
from airflow_provider_ktexport.sensors.ktexport import KtExportSensor


@dag(
    dag_id="ktexport_sensor_then_drain",
    schedule=timedelta(hours=1),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ktexport", "example"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    params={
        "lease_seconds": Param(
            120, type="number", exclusiveMinimum=0, description="The export task's lease, in seconds"
        )
    },
)
def ktexport_sensor_then_drain():
    wait = KtExportSensor(
        task_id="wait_for_data",
        deferrable=True,  # waits in the triggerer: no worker slot held while the queue is quiet
        timeout=timedelta(minutes=55),
        soft_fail=True,  # a quiet hour skips the run; a wrong API key still fails it
        lease_seconds="{{ params.lease_seconds }}",
    )
    drain = KtExportToParquetOperator(
        task_id="drain_to_lake",
        destination="{{ var.value.get('ktexport_lake', 'file:///tmp/ktexport/lake') }}",
        drain_until="{{ ti.xcom_pull(task_ids='wait_for_data')['lease_ends_at'] }}",
        lease_seconds="{{ params.lease_seconds }}",
        flush_seconds="{{ params.lease_seconds / 2 }}",  # flush, then ack, halfway through a lease
        max_runtime=timedelta(minutes=10),
        execution_timeout=timedelta(minutes=13),
    )
    wait >> drain


ktexport_sensor_then_drain()
