"""Every example DAG in dags/ loads in a DagBag without import errors (the way Airflow parses them)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"


def test_example_dags_load_without_errors():
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.1
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))  # examples are off: AIRFLOW__CORE__LOAD_EXAMPLES=False (conftest)
    assert bag.import_errors == {}
    assert {
        "ktexport_drain",
        "ktexport_sensor_then_drain",
        "ktexport_drain_on_data",
        "ktexport_to_duckdb",
        "ktexport_drain_many",
        "ktexport_compact",
        "ktexport_iceberg",
        "ktexport_iceberg_maintenance",
    } <= set(bag.dag_ids)
    for dag_id in bag.dag_ids:
        dag = bag.dags[dag_id]
        assert dag.tags and "ktexport" in dag.tags, dag_id
        assert dag.catchup is False, dag_id
