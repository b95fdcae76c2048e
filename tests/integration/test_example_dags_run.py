"""The example DAGs in dags/ run end to end (`airflow dags test`) against the emulator.

The sensor example runs with a 5 s lease given in the run's conf (its param ``lease_seconds``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import duckdb
import fsspec
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.lake.schema import build_tables
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from airflow_provider_ktexport.operators.ktexport import parse_drain_until
from airflow_provider_ktexport.testing.emulator import Emulator
from airflow_provider_ktexport.triggers.ktexport import KtExportEventTrigger
from tests.integration.conftest import DagRunResult, aws_conn, ktexport_conn, s3_filesystem

pytestmark = [
    pytest.mark.integration,
    pytest.mark.emulator(
        api_key="ex-key-5ecret", lease_seconds=30, long_poll_seconds=1, batch_size=200, seed=21
    ),
]

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data_files(lake: Path) -> list[Path]:
    return sorted(p for p in lake.rglob("*.parquet") if not p.name.startswith("."))


def test_event_driven_dag_watches_the_queue_with_the_event_trigger():
    module = load_module("example_ktexport_event")
    dag = module.ktexport_drain_on_data()
    (watcher,) = module.queue.watchers
    assert isinstance(watcher.trigger, KtExportEventTrigger)
    path, kwargs = watcher.trigger.serialize()
    assert path == "airflow_provider_ktexport.triggers.ktexport.KtExportEventTrigger"
    assert kwargs == {"ktexport_conn_id": "ktexport_default", "lease_seconds": 120.0}
    assert list(dag.timetable.asset_condition.objects) == [module.queue]
    # drain_until renders from a triggering event's payload into a time the drain accepts.
    drain = dag.get_task("drain_to_lake")
    event = SimpleNamespace(
        extra={"from_trigger": True, "payload": {"lease_ends_at": "2026-05-01T12:02:00+00:00"}}
    )
    rendered = (
        dag.get_template_env()
        .from_string(drain.drain_until)
        .render(triggering_asset_events={module.queue.uri: [event]})
    )
    assert parse_drain_until(rendered) == parse_drain_until("2026-05-01T12:02:00Z")


def airflow(
    args: list[str], *, variables: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in the tests' Airflow home, with the example DAGs and these Variables."""
    env = dict(os.environ, AIRFLOW__CORE__DAGS_FOLDER=str(DAGS))
    env.update({f"AIRFLOW_VAR_{k.upper()}": v for k, v in variables.items()})
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def trigger_warehouse(variables: dict[str, str]) -> dict:
    """The asset-triggered run of ktexport_to_duckdb the scheduler would start now (tests/integration/asset_trigger.py)."""
    proc = airflow(
        ["-m", "tests.integration.asset_trigger", "trigger", "ktexport_to_duckdb"], variables=variables
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_warehouse(run_id: str, variables: dict[str, str], home: Path) -> dict:
    """Run the warehouse task in that asset-triggered run (it reads the run's events); its XCom."""
    proc = airflow(
        ["-m", "airflow", "tasks", "test", "ktexport_to_duckdb", "load_into_duckdb", run_id],
        variables=variables,
    )
    assert proc.returncode == 0 and "Task instance in failure state" not in proc.stdout, (
        proc.stdout[-5000:] + proc.stderr[-5000:]
    )
    con = sqlite3.connect(home / "airflow.db")
    try:
        (value,) = con.execute(
            "SELECT value FROM xcom WHERE dag_id = 'ktexport_to_duckdb' AND run_id = ? AND key = 'return_value'",
            (run_id,),
        ).fetchone()
    finally:
        con.close()
    return json.loads(value) if isinstance(value, str | bytes) else value


def test_warehouse_dag_loads_the_files_its_asset_events_name_once(emulator, run_dag, airflow_home, tmp_path):
    """The warehouse DAG's asset-triggered runs, as Airflow's scheduler makes them, load the files
    their events name and nothing else, each record once, a run with two events included; a
    rerun loads nothing; an empty drain records no event and triggers no run."""
    lake, warehouse = tmp_path / "lake", tmp_path / "wh" / "warehouse.duckdb"
    variables = {"ktexport_lake": lake.as_uri(), "ktexport_warehouse": str(warehouse)}
    connections = {"ktexport_default": ktexport_conn(emulator)}
    unpaused = airflow(
        ["-m", "tests.integration.asset_trigger", "unpause", "ktexport_to_duckdb"], variables=variables
    )
    assert unpaused.returncode == 0, unpaused.stderr[-5000:]
    # A file already in the lake that no event names: a run started by events does not read it.
    stray = lake / "record_type=telemetry" / "event_date=2020-01-01" / "part-stray.parquet"
    stray.parent.mkdir(parents=True)
    (part,) = build_tables(
        [json.dumps({"type": "telemetry", "date": "2020-01-01T00:00:00Z", "n": 1}).encode()],
        ["b0"],
        source="elsewhere",
        ingested_at=datetime.now(UTC),
    )
    pq.write_table(part.table, stray)

    def drain() -> DagRunResult:
        result = run_dag("ktexport_drain", connections=connections, variables=variables, dags_folder=DAGS)
        assert result.returncode == 0, result.output[-5000:]
        return result

    def loaded_files() -> set[str]:
        with duckdb.connect(str(warehouse), read_only=True) as con:
            return {r[0] for r in con.sql("SELECT file FROM ktexport_loaded_files").fetchall()}

    records = emulator.generate(400)
    drain()
    records += emulator.generate(100)
    emulator.enqueue(records[:50])  # delivered again: copies in the second drain's files
    e1, e2 = drain().asset_events(lake.as_uri())
    assert (e1["records"], e2["records"]) == (400, 150)

    # Airflow's scheduler starts a run with the events up to the moment the first was queued: e1.
    run = trigger_warehouse(variables)
    assert run["run_id"] and run["events"] == 1
    assert run_warehouse(run["run_id"], variables, airflow_home) == {
        "events": 1,
        "files": e1["file_count"],
        "loaded": 400,
        "records": 400,
    }
    assert loaded_files() == set(e1["files"])  # not the stray file
    # The same run again (a retry): nothing loads twice.
    assert run_warehouse(run["run_id"], variables, airflow_home)["loaded"] == 0

    # A drain that lands nothing records no event and triggers no run.
    empty = drain()
    assert empty.xcom("drain_to_lake")["records"] == 0
    assert empty.asset_events(lake.as_uri()) == [e1, e2]
    assert trigger_warehouse(variables) == {"run_id": None, "events": 0}

    # The next landing drain starts a run holding both e2 (left over) and its own event.
    records += emulator.generate(50)
    e3 = drain().asset_events(lake.as_uri())[-1]
    run = trigger_warehouse(variables)
    assert run["run_id"] and run["events"] == 2
    assert run_warehouse(run["run_id"], variables, airflow_home) == {
        "events": 2,
        "files": e2["file_count"] + e3["file_count"],
        "loaded": 150,
        "records": 550,
    }
    assert loaded_files() == set(e1["files"]) | set(e2["files"]) | set(e3["files"])
    with duckdb.connect(str(warehouse), read_only=True) as con:
        seqs = con.sql(
            "SELECT count(DISTINCT record->>'emulator_seq'), count(*) FROM ktexport_records"
        ).fetchall()
        by_type = dict(
            con.sql("SELECT record_type, sum(records) FROM ktexport_daily_summary GROUP BY 1").fetchall()
        )
        no_asset = con.sql(
            "SELECT count(*) FROM ktexport_records WHERE record_type = 'telemetry' AND asset_id IS NULL"
        ).fetchall()[0][0]
    assert seqs == [(550, 550)]
    assert by_type == dict(Counter(r["type"] for r in records))
    assert no_asset == 0


def test_mapped_dag_drains_two_export_tasks_side_by_side(run_dag, tmp_path):
    lake = tmp_path / "lake"
    with (
        Emulator(api_key="us1-test-key", lease_seconds=30, long_poll_seconds=1, batch_size=100, seed=1) as us,
        Emulator(api_key="eu1-test-key", lease_seconds=30, long_poll_seconds=1, batch_size=100, seed=2) as eu,
    ):
        us.generate(300)
        eu.generate(200)
        result = run_dag(
            "ktexport_drain_many",
            connections={"ktexport_us1": ktexport_conn(us), "ktexport_eu1": ktexport_conn(eu)},
            variables={
                "ktexport_lake": lake.as_uri(),
                "ktexport_conn_ids": json.dumps(["ktexport_us1", "ktexport_eu1"]),
            },
            dags_folder=DAGS,
        )
        stats = us.stats(), eu.stats()
    assert result.returncode == 0, result.output[-5000:]
    assert [s["acked_records"] for s in stats] == [300, 200]
    table = read_lake_table(lake.as_uri())
    by_source: dict[str, list[int]] = {}
    for source, seq in zip(
        table.column("_source").to_pylist(), table.column("emulator_seq").to_pylist(), strict=True
    ):
        by_source.setdefault(source, []).append(seq)
    assert {k: sorted(v) for k, v in by_source.items()} == {
        "ktexport_us1": list(range(1, 301)),
        "ktexport_eu1": list(range(1, 201)),
    }
    # Two writers share one schema store: one file per column, whichever writer published it, and
    # the published schema covers every column either of them wrote.
    for store in (lake / "_schema").iterdir():
        published = LakeWriter(fsspec.filesystem("file"), str(lake)).load_schema(store.name)
        assert len(list((store / "columns").glob("*.json"))) == len(published.names), store
        for data in (lake / f"record_type={store.name}").rglob("*.parquet"):
            assert set(pq.read_schema(data).names) <= set(published.names), data
    assert "us1-test-key" not in result.output and "eu1-test-key" not in result.output


def test_compaction_dag_merges_files_and_removes_duplicates(emulator, run_dag, tmp_path):
    lake = tmp_path / "lake"
    variables = {"ktexport_lake": lake.as_uri()}
    connections = {"ktexport_default": ktexport_conn(emulator)}
    records = emulator.generate(400)
    assert (
        run_dag("ktexport_drain", connections=connections, variables=variables, dags_folder=DAGS).returncode
        == 0
    )
    emulator.generate(100)
    emulator.enqueue(records[:50])
    assert (
        run_dag("ktexport_drain", connections=connections, variables=variables, dags_folder=DAGS).returncode
        == 0
    )
    before = data_files(lake)
    assert read_lake_table(lake.as_uri()).num_rows == 550
    partitions = {p.parent for p in before}
    assert len(before) > len(partitions)  # several files in some partitions
    # The files must be older than min_age_minutes (10) to be compacted.
    old = time.time() - 3600
    for path in lake.rglob("*"):
        os.utime(path, (old, old))

    result = run_dag("ktexport_compact", connections={}, variables=variables, dags_folder=DAGS)

    assert result.returncode == 0, result.output[-5000:]
    after = data_files(lake)
    assert {p.parent for p in after} == partitions and len(after) == len(partitions)
    table = read_lake_table(lake.as_uri())
    assert sorted(table.column("emulator_seq").to_pylist()) == list(range(1, 501))
    summary = result.xcom("compact_lake")
    assert summary["duplicates_removed"] == 50
    assert summary["rows_in"] - summary["rows_out"] == 50
    assert summary["files_out"] < summary["files_in"] and summary["source"] == lake.as_uri()


def test_downstream_duckdb_dag_reads_a_lake_on_s3(run_dag, s3_endpoint, s3_bucket, tmp_path):
    fs = s3_filesystem(s3_endpoint)
    writer = LakeWriter(fs, f"{s3_bucket}/lake", writer_id="drain")
    records = [
        {"type": "telemetry", "date": "2026-11-25T10:00:00Z", "asset": {"id": f"a{i % 4}"}, "n": i}
        for i in range(40)
    ]
    for part in build_tables(
        [json.dumps(r).encode() for r in records + records[:5]],  # 5 duplicates
        ["b"] * 45,
        source="ktexport_default",
        ingested_at=datetime.now(UTC),
    ):
        writer.write(part.table, part.partition)
    warehouse = tmp_path / "warehouse.duckdb"
    result = run_dag(
        "ktexport_to_duckdb",
        connections={"aws_default": aws_conn(s3_endpoint)},
        variables={
            "ktexport_lake": f"s3://aws_default@{s3_bucket}/lake",
            "ktexport_warehouse": str(warehouse),
        },
        dags_folder=DAGS,
    )
    assert result.returncode == 0, result.output[-5000:]
    assert result.xcom("load_into_duckdb") == {"events": 0, "files": 1, "loaded": 40, "records": 40}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.sql("SELECT asset_id, records FROM ktexport_daily_summary ORDER BY 1").fetchall()
    assert rows == [("a0", 10), ("a1", 10), ("a2", 10), ("a3", 10)]


def test_sensor_example_lands_the_probed_batch_in_the_same_run(run_dag, tmp_path):
    """The shipped sensor -> drain DAG, its lease given in the run's conf: a 5 s lease, waited out."""
    lake = tmp_path / "lake"
    with Emulator(api_key="ex-sensor", lease_seconds=5, long_poll_seconds=1, batch_size=500, seed=4) as emu:
        emu.generate(30)  # one batch: the probe leases all of it
        result = run_dag(
            "ktexport_sensor_then_drain",
            connections={"ktexport_default": ktexport_conn(emu)},
            variables={"ktexport_lake": lake.as_uri()},
            dags_folder=DAGS,
            conf={"lease_seconds": 5},
        )
        stats = emu.stats()
    assert result.returncode == 0, result.output[-5000:]
    # Leased by the probe, redelivered when its 5 s lease ended, landed and acked once in this run.
    assert stats["redelivered"] == 30 and stats["acked_records"] == 30 and stats["queued"] == 0
    assert sorted(read_lake_table(lake.as_uri()).column("emulator_seq").to_pylist()) == list(range(1, 31))
    probe = result.xcom("wait_for_data")
    assert probe["record_count"] == 30
    drained = result.xcom("drain_to_lake")
    assert drained["records"] == 30 and drained["max_ack_lease_age_s"] < 5
    # The drain polled until the 5 s lease ended (plus a long poll), not a default 120 s one.
    assert drained["duration_s"] < 60
