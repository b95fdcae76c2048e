"""An Iceberg drain DAG the integration tests tune through environment variables (read at parse time).

The catalog is pyiceberg's SQL catalog on SQLite, placed by the Variables
``ktexport_iceberg_catalog_uri`` and ``ktexport_iceberg_warehouse``, unless the options give
``catalog_properties`` of their own (a test of bad ones).
"""

from __future__ import annotations

import json
import os

import pendulum
from airflow.sdk import dag

from airflow_provider_ktexport.operators.iceberg import KtExportToIcebergOperator

OPTIONS = json.loads(os.environ.get("KTEXPORT_IT_OPTIONS", "{}"))
CATALOG = OPTIONS.pop(
    "catalog_properties",
    {
        "type": "sql",
        "uri": "{{ var.value.ktexport_iceberg_catalog_uri }}",
        "warehouse": "{{ var.value.ktexport_iceberg_warehouse }}",
    },
)


@dag(
    dag_id="ktexport_it_iceberg",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
)
def ktexport_it_iceberg():
    KtExportToIcebergOperator(
        task_id="drain",
        namespace="ktexport",
        catalog_properties=CATALOG,
        **OPTIONS,
    )


ktexport_it_iceberg()
