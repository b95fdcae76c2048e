"""Daily compaction: merge the lake's small files, drop duplicate rows, fit old files to fixed column types.

Partitions changed in the last ``min_age_minutes`` are left for the next run, so compaction
never races a drain. New files are written before old ones are removed: readers never miss a
row (they may briefly see duplicates, removable by ``_record_key``). See docs/compaction.md.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag

from airflow_provider_ktexport.operators.ktexport import KtExportCompactOperator


@dag(
    dag_id="ktexport_compact",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ktexport", "example"],
)
def ktexport_compact():
    KtExportCompactOperator(
        task_id="compact_lake",
        source="{{ var.value.get('ktexport_lake', 'file:///tmp/ktexport/lake') }}",
        target_file_mb=128,
        min_age_minutes=10,
        execution_timeout=timedelta(hours=2),
    )


ktexport_compact()
