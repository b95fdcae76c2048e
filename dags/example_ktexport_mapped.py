"""Many export tasks at once: one mapped drain per connection, all into one lake.

Each connection id (one per export task or region) gets its own mapped task instance. They write
side by side without collisions: file names carry a UUID, each writer keeps its own schema file,
and every row's ``_source`` column names its connection. The list comes from the Variable
``ktexport_conn_ids`` (JSON), read at run time; ``max_active_runs=1`` keeps one drain per
export task at a time. See docs/scaling-out.md.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Variable, dag, task

from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator

MAX_RUNTIME = timedelta(minutes=10)


@dag(
    dag_id="ktexport_drain_many",
    schedule=timedelta(minutes=15),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ktexport", "example"],
    default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
)
def ktexport_drain_many():
    @task
    def connection_ids() -> list[str]:
        return Variable.get(
            "ktexport_conn_ids", default=["ktexport_us1", "ktexport_eu1"], deserialize_json=True
        )

    KtExportToParquetOperator.partial(
        task_id="drain_to_lake",
        destination="{{ var.value.get('ktexport_lake', 'file:///tmp/ktexport/lake') }}",
        max_runtime=MAX_RUNTIME,
        execution_timeout=MAX_RUNTIME + timedelta(minutes=3),
    ).expand(ktexport_conn_id=connection_ids())


ktexport_drain_many()
