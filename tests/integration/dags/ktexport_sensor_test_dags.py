"""DAGs for tests/integration/test_sensor_dags.py: one per sensor mode and failure case.

Connections come from the environment the test sets: ``ktexport_sensor_feed`` (an
emulator that gets data a few seconds in), ``ktexport_sensor_empty`` (one that
stays empty) and ``ktexport_sensor_badkey`` (a wrong key). Short leases and
timeouts keep the runs quick.
"""

from __future__ import annotations

import datetime

from airflow.sdk import DAG

from airflow_provider_ktexport.sensors.ktexport import KtExportSensor

LEASE_SECONDS = 6
START = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def _dag(dag_id: str, **sensor_kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False, tags=["ktexport-test"]) as dag:
        KtExportSensor(task_id="wait_for_data", lease_seconds=LEASE_SECONDS, **sensor_kwargs)
    return dag


FEED = {"ktexport_conn_id": "ktexport_sensor_feed", "poke_interval": 1, "timeout": 25}
EMPTY = {"ktexport_conn_id": "ktexport_sensor_empty", "poke_interval": 1, "timeout": 3}

poke = _dag("ktexport_sensor_poke", mode="poke", deferrable=False, **FEED)
reschedule = _dag("ktexport_sensor_reschedule", mode="reschedule", deferrable=False, **FEED)
deferrable = _dag("ktexport_sensor_deferrable", deferrable=True, **FEED)

timeout = _dag("ktexport_sensor_timeout", deferrable=False, **EMPTY)
soft_fail = _dag("ktexport_sensor_soft_fail", deferrable=False, soft_fail=True, **EMPTY)
deferrable_soft_fail = _dag("ktexport_sensor_deferrable_soft_fail", deferrable=True, soft_fail=True, **EMPTY)
bad_key = _dag(
    "ktexport_sensor_bad_key",
    ktexport_conn_id="ktexport_sensor_badkey",
    deferrable=False,
    soft_fail=True,
    poke_interval=1,
    timeout=25,
)
