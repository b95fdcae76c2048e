"""Maintain the Iceberg tables of ``example_ktexport_iceberg`` once a day.

Compacts each partition's small files (one per 15-minute flush) into files near 128 MB, expires
snapshots older than a day together with the files only they read, and removes files no snapshot
references that are older than three days (data files of commits that never happened). Safe while
the drain runs: a compaction that meets a drain's commit to the same partition is retried, then
left for the next day. Same catalog as the drain (the Variables ``ktexport_iceberg_catalog_uri``
and ``ktexport_iceberg_warehouse``). See docs/iceberg.md, "Maintenance".
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from airflow_provider_ktexport.operators.iceberg import KtExportIcebergMaintenanceOperator


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ktexport", "iceberg", "maintenance"],
)
def ktexport_iceberg_maintenance():
    KtExportIcebergMaintenanceOperator(
        task_id="maintain_iceberg_tables",
        namespace="ktexport",
        catalog_properties={
            "type": "sql",
            "uri": "{{ var.value.get('ktexport_iceberg_catalog_uri', 'sqlite:////tmp/ktexport-iceberg/catalog.db') }}",
            "warehouse": "{{ var.value.get('ktexport_iceberg_warehouse', 'file:///tmp/ktexport-iceberg/warehouse') }}",
        },
        expire_snapshots_older_than=timedelta(days=1),
        target_file_mb=128,
        remove_orphans_older_than=timedelta(days=3),
        execution_timeout=timedelta(hours=2),
    )


ktexport_iceberg_maintenance()
