"""The example DAGs in dags/ run end to end (`airflow dags test`) against the emulator.

The sensor example waits out a real 120 s lease (slow); its quick twin with short leases is
``ktexport_it_sensor_drain`` in test_sensor_then_drain.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
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
from tests.integration.conftest import aws_conn, ktexport_conn, s3_filesystem

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags"


def load_module(name: str):
    spec = importlib.util.spec_from_file_location(name, DAGS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def data_files(lake: Path) -> list[Path]:
    return sorted(p for p in lake.rglob("*.parquet") if not p.name.startswith("."))


@pytest.fixture
def emulator():
    with Emulator(
        api_key="ex-key-5ecret", lease_seconds=30, long_poll_seconds=1, batch_size=200, seed=21
    ) as emu:
        yield emu


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


def test_drain_then_downstream_duckdb_dag_loads_each_record_once(emulator, run_dag, tmp_path):
    lake, warehouse = tmp_path / "lake", tmp_path / "wh" / "warehouse.duckdb"
    variables = {"ktexport_lake": lake.as_uri(), "ktexport_warehouse": str(warehouse)}
    connections = {"ktexport_default": ktexport_conn(emulator)}
    records = emulator.generate(600)
    emulator.enqueue(records[:100])  # delivered twice: duplicates in the lake

    drained = run_dag("ktexport_drain", connections=connections, variables=variables, dags_folder=DAGS)
    assert drained.returncode == 0, drained.output[-5000:]
    assert read_lake_table(lake.as_uri()).num_rows == 700
    loaded = run_dag("ktexport_to_duckdb", connections={}, variables=variables, dags_folder=DAGS)
    assert loaded.returncode == 0, loaded.output[-5000:]
    assert loaded.xcom("load_into_duckdb") == {"loaded": 600, "records": 600}

    with duckdb.connect(str(warehouse), read_only=True) as con:
        keys, seqs = con.sql(
            "SELECT count(DISTINCT _record_key), count(DISTINCT record->>'emulator_seq') FROM ktexport_records"
        ).fetchall()[0]
        by_type = dict(
            con.sql("SELECT record_type, sum(records) FROM ktexport_daily_summary GROUP BY 1").fetchall()
        )
        telemetry_assets = con.sql(
            "SELECT count(*) FROM ktexport_records WHERE record_type = 'telemetry' AND asset_id IS NULL"
        ).fetchall()[0][0]
        summary_assets = con.sql("SELECT count(DISTINCT asset_id) FROM ktexport_daily_summary").fetchall()[0][
            0
        ]
    assert keys == seqs == 600
    expected = {}
    for r in records:
        expected[r["type"]] = expected.get(r["type"], 0) + 1
    assert by_type == expected
    assert telemetry_assets == 0 and summary_assets > 1

    # The next drain brings new records and more copies of old ones: only the new ones load.
    emulator.generate(150)
    emulator.enqueue(records[100:130])
    assert (
        run_dag("ktexport_drain", connections=connections, variables=variables, dags_folder=DAGS).returncode
        == 0
    )
    again = run_dag("ktexport_to_duckdb", connections={}, variables=variables, dags_folder=DAGS)
    assert again.returncode == 0, again.output[-5000:]
    assert again.xcom("load_into_duckdb") == {"loaded": 150, "records": 750}


def test_mapped_dag_drains_two_export_tasks_side_by_side(run_dag, tmp_path):
    lake = tmp_path / "lake"
    with (
        Emulator(api_key="us-key", lease_seconds=30, long_poll_seconds=1, batch_size=100, seed=1) as us,
        Emulator(api_key="eu-key", lease_seconds=30, long_poll_seconds=1, batch_size=100, seed=2) as eu,
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
    # Two writers share one schema store: each adds a file only to publish columns it lacks, and the
    # published schema covers every column either of them wrote.
    for store in (lake / "_schema").iterdir():
        assert 1 <= len(list(store.glob("*.json"))) <= 2, store
        published = LakeWriter(fsspec.filesystem("file"), str(lake)).load_schema(store.name)
        for data in (lake / f"record_type={store.name}").rglob("*.parquet"):
            assert set(pq.read_schema(data).names) <= set(published.names), data
    assert "us-key" not in result.output and "eu-key" not in result.output


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
    assert result.xcom("load_into_duckdb") == {"loaded": 40, "records": 40}
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows = con.sql("SELECT asset_id, records FROM ktexport_daily_summary ORDER BY 1").fetchall()
    assert rows == [("a0", 10), ("a1", 10), ("a2", 10), ("a3", 10)]


@pytest.mark.slow
def test_sensor_example_lands_the_probed_batch_in_the_same_run(run_dag, tmp_path):
    """The shipped sensor -> drain DAG as is: it waits out the real 120 s lease of its probe."""
    lake = tmp_path / "lake"
    with Emulator(api_key="ex-sensor", lease_seconds=120, long_poll_seconds=1, batch_size=500, seed=4) as emu:
        emu.generate(30)  # one batch: the probe leases all of it
        result = run_dag(
            "ktexport_sensor_then_drain",
            connections={"ktexport_default": ktexport_conn(emu)},
            variables={"ktexport_lake": lake.as_uri()},
            dags_folder=DAGS,
            timeout=400,
        )
        stats = emu.stats()
    assert result.returncode == 0, result.output[-5000:]
    assert stats["redelivered"] == 30 and stats["acked_records"] == 30 and stats["queued"] == 0
    assert sorted(read_lake_table(lake.as_uri()).column("emulator_seq").to_pylist()) == list(range(1, 31))
