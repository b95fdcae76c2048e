"""Drain the export queue into Apache Iceberg tables (one per record type) every 15 minutes.

Needs ``pip install 'airflow-provider-ktexport[iceberg]'``. Out of the box the catalog is
pyiceberg's SQL catalog on SQLite with a local warehouse folder (set the Variables
``ktexport_iceberg_catalog_uri`` and ``ktexport_iceberg_warehouse`` to move them); for a REST
catalog (Polaris, Nessie, Glue's Iceberg REST endpoint...) pass ``catalog_conn_id`` instead.
See docs/iceberg.md.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from airflow_provider_ktexport.operators.iceberg import KtExportToIcebergOperator


@dag(
    schedule=timedelta(minutes=15),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ktexport", "iceberg"],
)
def ktexport_iceberg():
    KtExportToIcebergOperator(
        task_id="drain_to_iceberg",
        namespace="ktexport",
        catalog_properties={
            "type": "sql",
            "uri": "{{ var.value.get('ktexport_iceberg_catalog_uri', 'sqlite:////tmp/ktexport-iceberg/catalog.db') }}",
            "warehouse": "{{ var.value.get('ktexport_iceberg_warehouse', 'file:///tmp/ktexport-iceberg/warehouse') }}",
        },
        max_runtime=timedelta(minutes=10),
        execution_timeout=timedelta(minutes=13),
        asset_alias="ktexport_iceberg",
    )


ktexport_iceberg()
