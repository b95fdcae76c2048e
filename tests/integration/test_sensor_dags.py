"""KtExportSensor in real Airflow runs: ``dag.test()`` against the emulator.

Each scenario runs ``dag.test()`` in a fresh Python process: Airflow reads
``AIRFLOW_HOME`` (and the SQLite URL) once, at its first import, so a process
of our own is the only way to be sure it uses the temporary home whatever the
test session imported before. The DAGs live in ``tests/integration/dags/``
(on Airflow 3.3 ``dag.test()`` needs the DAG's file in the configured DAGs
folder: it syncs that bundle to the database before creating the run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from airflow_provider_ktexport.testing.emulator import Emulator

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DAGS = Path(__file__).resolve().parent / "dags"
DAG_FILE = DAGS / "ktexport_sensor_test_dags.py"
LEASE_SECONDS = 6  # as in the DAG file

# Runs one DAG with dag.test() and prints a JSON line: run state, task states, the sensor's XCom.
RUNNER = r"""
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("ktexport_sensor_test_dags", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
dag = getattr(module, sys.argv[2])
started = time.monotonic()
dr = dag.test()
elapsed = time.monotonic() - started
from sqlalchemy import select
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
with create_session() as session:
    tis = {ti.task_id: getattr(ti.state, "value", ti.state) for ti in dr.get_task_instances(session=session)}
    values = session.scalars(
        select(XComModel.value).where(
            XComModel.dag_id == dr.dag_id, XComModel.run_id == dr.run_id,
            XComModel.task_id == "wait_for_data", XComModel.key == "return_value",
        )
    ).all()
xcom = values[0] if values else None
if isinstance(xcom, str):
    xcom = json.loads(xcom)
print("KTEXPORT_RESULT " + json.dumps({"state": getattr(dr.state, "value", dr.state), "tis": tis, "xcom": xcom, "elapsed": elapsed}))
"""


def conn_json(url: str, key: str) -> str:
    return json.dumps(
        {"conn_type": "ktexport", "host": url, "password": key, "extra": {"long_poll_seconds": 1}}
    )


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory) -> dict[str, str]:
    """Environment for an Airflow process with its own home and a migrated SQLite database.

    Replace with the project's conftest fixture when there is one: the scenarios only
    need this mapping (plus the AIRFLOW_CONN_* variables they add).
    """
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)  # the default: sqlite in AIRFLOW_HOME
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return env


@pytest.fixture(scope="module")
def empty_emulator():
    with Emulator(lease_seconds=LEASE_SECONDS, long_poll_seconds=1) as emu:
        yield emu


@pytest.fixture
def feed_emulator(emulator_factory):
    return emulator_factory(lease_seconds=LEASE_SECONDS, long_poll_seconds=1)


@pytest.fixture
def run_dag(airflow_env, empty_emulator, feed_emulator):
    def run(dag_var: str, timeout: float = 600) -> dict:
        env = {
            **airflow_env,
            "AIRFLOW_CONN_KTEXPORT_SENSOR_FEED": conn_json(feed_emulator.url, feed_emulator.api_key),
            "AIRFLOW_CONN_KTEXPORT_SENSOR_EMPTY": conn_json(empty_emulator.url, empty_emulator.api_key),
            "AIRFLOW_CONN_KTEXPORT_SENSOR_BADKEY": conn_json(empty_emulator.url, "not-the-key"),
        }
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, str(DAG_FILE), dag_var],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("KTEXPORT_RESULT ")]
        assert lines, (
            f"dag.test() did not finish (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
        result = json.loads(lines[-1].removeprefix("KTEXPORT_RESULT "))
        result["log"] = proc.stdout + proc.stderr
        return result

    return run


def feed_after_first_empty_poll(emu: Emulator, n: int = 5, delay: float = 2.0) -> threading.Thread:
    """Add records once the sensor has met an empty queue (the emulator starts empty)."""

    def feed() -> None:
        deadline = time.monotonic() + 90
        while emu.stats()["empty_polls"] < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(delay)
        emu.generate(n)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def assert_probed_batch_left_for_the_drain(result: dict, emu: Emulator, n: int) -> None:
    xcom = result["xcom"]
    assert set(xcom) == {"lease_ends_at", "record_count"}  # metadata only, never records
    assert xcom["record_count"] == n
    lease_end = datetime.fromisoformat(xcom["lease_ends_at"])
    assert lease_end.utcoffset().total_seconds() == 0
    stats = emu.stats()
    assert stats["empty_polls"] >= 1  # it did wait through an empty queue first
    assert stats["acked"] == 0  # the sensor never acknowledges
    # The probed batch is still leased, or already back in the queue: never lost.
    assert stats["leased_records"] + stats["queued"] == n
    # It returns to the queue when the lease the XCom names ends.
    wait = lease_end.timestamp() - time.time() + 1.5
    if wait > 0:
        time.sleep(wait)
    stats = emu.stats()
    assert stats["leased"] == 0
    assert stats["queued"] == n


@pytest.mark.parametrize(
    "dag_var", ["poke", "reschedule", "deferrable"], ids=["poke", "reschedule", "deferrable"]
)
def test_sensor_waits_for_data_then_returns_the_lease_end(run_dag, feed_emulator, dag_var):
    feeder = feed_after_first_empty_poll(feed_emulator, n=5)
    result = run_dag(dag_var)
    feeder.join(timeout=5)
    assert result["state"] == "success", result["log"][-5000:]
    assert result["tis"] == {"wait_for_data": "success"}
    assert_probed_batch_left_for_the_drain(result, feed_emulator, 5)
    if dag_var == "deferrable":
        assert "running trigger in line" in result["log"]


def test_timeout_fails_the_sensor(run_dag):
    result = run_dag("timeout")
    assert result["tis"] == {"wait_for_data": "failed"}
    assert result["state"] == "failed"
    assert "Sensor has timed out" in result["log"]


@pytest.mark.parametrize("dag_var", ["soft_fail", "deferrable_soft_fail"])
def test_soft_fail_skips_on_timeout(run_dag, dag_var):
    result = run_dag(dag_var)
    assert result["tis"] == {"wait_for_data": "skipped"}, result["log"][-5000:]
    assert "Sensor has timed out" in result["log"]


def test_wrong_key_fails_fast_even_with_soft_fail(run_dag, empty_emulator):
    before = empty_emulator.stats()["unauthorized"]
    result = run_dag("bad_key")
    assert result["tis"] == {"wait_for_data": "failed"}, result["log"][-5000:]
    assert "KtExportAuthError" in result["log"]
    assert "not-the-key" not in result["log"]
    # One refused GET, then the failure: not a wait through the 25 s timeout (a sensor that
    # retried the key would show more refused GETs, and one that waited would fail by timeout;
    # the wall clock proves nothing on a loaded machine).
    assert empty_emulator.stats()["unauthorized"] - before == 1
    assert "AirflowSensorTimeout" not in result["log"]
