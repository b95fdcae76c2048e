"""Event-driven drain: an AssetWatcher runs the drain when the export queue holds data.

``KtExportEventTrigger`` long-polls the queue from the triggerer. Its probe leases the batch it
finds, so after each event it stays quiet for at least one lease, and the event carries the
lease end: the drain polls until then (``drain_until``) and lands the probed batch in the same
run. See docs/sensor.md. (``airflow dags test`` does not run watchers: trigger the DAG from a
running scheduler and triggerer.)
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, AssetWatcher, dag

from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator
from airflow_provider_ktexport.triggers.ktexport import KtExportEventTrigger

queue = Asset(
    name="ktexport_queue",
    watchers=[
        AssetWatcher(
            name="ktexport_queue_has_data",
            trigger=KtExportEventTrigger(ktexport_conn_id="ktexport_default", lease_seconds=120),
        )
    ],
)


@dag(
    dag_id="ktexport_drain_on_data",
    schedule=[queue],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ktexport", "example"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
)
def ktexport_drain_on_data():
    KtExportToParquetOperator(
        task_id="drain_to_lake",
        destination="{{ var.value.get('ktexport_lake', 'file:///tmp/ktexport/lake') }}",
        # The triggering event's payload holds the probed batch's lease end.
        drain_until="{{ (triggering_asset_events.values() | first | first).extra['payload']['lease_ends_at'] }}",
        max_runtime=timedelta(minutes=10),
        execution_timeout=timedelta(minutes=13),
    )


ktexport_drain_on_data()
