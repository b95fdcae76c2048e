"""KtExportToIcebergOperator through real parts: `airflow dags test`, the emulator, pyiceberg's SQL catalog."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("pyiceberg")

from airflow_provider_ktexport.lake.iceberg import load_catalog  # noqa: E402
from airflow_provider_ktexport.testing.emulator import Emulator  # noqa: E402
from tests.integration.conftest import ktexport_conn  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def catalog_props(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    return {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path}/catalog.db",
        "warehouse": (tmp_path / "warehouse").as_uri(),
    }


def table_seqs(props: dict[str, str]) -> dict[str, list[int]]:
    """emulator_seq of every row, per table of the namespace."""
    catalog = load_catalog("ktexport", props)
    out = {}
    for _ns, name in catalog.list_tables("ktexport"):
        if name.startswith("_"):
            continue
        rows = catalog.load_table(f"ktexport.{name}").scan(selected_fields=("emulator_seq",)).to_arrow()
        out[name] = rows.column("emulator_seq").to_pylist()
    return out


def test_example_iceberg_dag_commits_every_record_once_before_any_ack(run_dag, tmp_path):
    props = catalog_props(tmp_path)
    violations: list[str] = []
    checked: list[str] = []
    with Emulator(
        api_key="iceberg-test-key", lease_seconds=120, long_poll_seconds=1, batch_size=200, seed=5
    ) as emu:
        emu.generate(1200)  # the generator drifts after record 200: new fields appear

        def on_ack(batch_id: str, records: list[dict]) -> None:
            # Runs in the emulator before the DELETE is applied: the commit must be visible already.
            landed = {s for seqs in table_seqs(props).values() for s in seqs}
            checked.append(batch_id)
            missing = [r["emulator_seq"] for r in records if r["emulator_seq"] not in landed]
            if missing:
                violations.append(f"{batch_id}: {len(missing)} records not committed at DELETE time")

        emu.on_ack = on_ack
        result = run_dag(
            "ktexport_iceberg",
            connections={"ktexport_default": ktexport_conn(emu)},
            variables={
                "ktexport_iceberg_catalog_uri": props["uri"],
                "ktexport_iceberg_warehouse": props["warehouse"],
            },
            dags_folder=REPO / "dags",
        )
        stats = emu.stats()
    assert result.returncode == 0, result.output[-6000:]
    assert violations == []
    assert stats["queued"] == 0 and stats["leased"] == 0, (stats, result.output[-6000:])
    assert len(checked) == stats["acked"] > 0
    per_table = table_seqs(props)
    everything = sorted(s for seqs in per_table.values() for s in seqs)
    assert everything == list(range(1, 1201))  # every record once, across the record-type tables
    assert len(per_table) >= 3
    summary = result.xcom("drain_to_iceberg")
    assert summary["records"] == 1200 and summary["destination"] == "iceberg://ktexport/ktexport"
    assert {c["table"] for c in summary["landed"]} == {f"ktexport.{t}" for t in per_table}
    # The Asset event names the tables and snapshots the run committed.
    (event,) = result.asset_events("iceberg://ktexport/ktexport")
    assert event["commit_count"] == len(summary["landed"]) and sum(event["record_types"].values()) == 1200
    assert "AssetModel" not in result.output  # the namespace is literal: the Asset is declared at parse time
    assert {(c["table"], c["snapshot_id"]) for c in event["commits"]} == {
        (c["table"], c["snapshot_id"]) for c in summary["landed"]
    }
    # The table history names the batches each commit holds.
    catalog = load_catalog("ktexport", props)
    committed = set()
    for name in per_table:
        for snap in catalog.load_table(f"ktexport.{name}").snapshots():
            committed.update(snap.summary.additional_properties.get("ktexport.batch-ids", "").split(","))
    assert stats["acked"] == len(committed - {""})


KILL_BEFORE_COMMIT = textwrap.dedent(
    """
    import os, signal, sys
    from airflow_provider_ktexport.transport.sync_client import KtExportClient
    from airflow_provider_ktexport.drain import Drain, DrainConfig
    from airflow_provider_ktexport.lake.iceberg import IcebergSink, load_catalog

    url, key, uri, warehouse = sys.argv[1:5]
    catalog = load_catalog("ktexport", {"type": "sql", "uri": uri, "warehouse": warehouse})
    real_commit = catalog.commit_table
    commits = {"n": 0}

    def commit_table(table, requirements, updates):
        # Data files of the append are written by now; die before the catalog records them.
        if any(type(u).__name__ == "AddSnapshotUpdate" for u in updates):
            print("KILL before_commit", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_commit(table, requirements, updates)

    catalog.commit_table = commit_table
    with KtExportClient(url, key, long_poll_seconds=1.0) as client:
        Drain(client, IcebergSink(catalog), DrainConfig(max_runtime=30, lease_seconds=4, flush_seconds=2)).run()
    """
)


def test_a_kill_between_writing_and_committing_loses_nothing_and_shows_nothing(tmp_path):
    props = catalog_props(tmp_path)
    with Emulator(
        api_key="iceberg-test-key", lease_seconds=4, long_poll_seconds=1, batch_size=50, seed=9
    ) as emu:
        emu.generate(300)
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                KILL_BEFORE_COMMIT,
                emu.url,
                emu.api_key,
                props["uri"],
                props["warehouse"],
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == -9 and "KILL before_commit" in proc.stdout, proc.stderr[-3000:]
        assert emu.stats()["acked"] == 0
        # The data files were written, but no snapshot holds them: readers see nothing half-done.
        orphans = list((tmp_path / "warehouse").rglob("*.parquet"))
        assert orphans, "the kill was meant to come after the data files were written"
        assert sum(len(v) for v in table_seqs(props).values()) == 0
        # The leases run out; a run to the end lands every record once.
        from airflow_provider_ktexport.drain import Drain, DrainConfig
        from airflow_provider_ktexport.lake.iceberg import IcebergSink
        from tests.emulators import client_for

        time.sleep(4.5)
        with client_for(emu, long_poll_seconds=1.0) as client:
            config = DrainConfig(
                max_runtime=60, lease_seconds=4, flush_seconds=2, drain_until=time.time() + 5
            )
            Drain(client, IcebergSink(load_catalog("ktexport", props)), config).run()
        stats = emu.stats()
    assert stats["queued"] == 0 and stats["leased"] == 0
    everything = sorted(s for seqs in table_seqs(props).values() for s in seqs)
    assert everything == list(range(1, 301))


def test_an_s3_warehouse_on_the_s3_server(s3_endpoint, s3_bucket, tmp_path):
    """The warehouse on object storage (moto's S3 server over HTTP), the catalog on SQLite."""
    from airflow_provider_ktexport.drain import Drain, DrainConfig
    from airflow_provider_ktexport.lake.iceberg import IcebergSink
    from tests.emulators import client_for
    from tests.integration.conftest import S3_KEY, s3_client

    props = {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path}/catalog.db",
        "warehouse": f"s3://{s3_bucket}/warehouse",
        "s3.endpoint": s3_endpoint,
        "s3.access-key-id": S3_KEY,
        "s3.secret-access-key": S3_KEY,
        "s3.region": "us-east-1",
    }
    with Emulator(
        api_key="iceberg-test-key", lease_seconds=30, long_poll_seconds=1, batch_size=100, seed=2
    ) as emu:
        emu.generate(400)
        with client_for(emu, long_poll_seconds=1.0) as client:
            result = Drain(
                client, IcebergSink(load_catalog("ktexport", props)), DrainConfig(max_runtime=60)
            ).run()
        stats = emu.stats()
    assert result.acked == stats["acked"] == 4 and stats["queued"] == 0
    everything = sorted(s for seqs in table_seqs(props).values() for s in seqs)
    assert everything == list(range(1, 401))
    keys = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert any(k.endswith(".parquet") for k in keys) and any(k.endswith(".metadata.json") for k in keys)


@pytest.mark.parametrize(
    "bad, says",
    [
        # The case: a mistyped key and so no warehouse. It used to lease batches and then
        # fail with NoSuchTableError, the real cause swallowed.
        (
            {"type": "sql", "uri": "sqlite:///{tmp}/catalog.db", "warehuose": "file://{tmp}/wh"},
            "'warehuose' is not a catalog property; did you mean 'warehouse'?",
        ),
        (
            {
                "type": "sql",
                "uri": "sqlite:////nonexistent-ktexport/catalog.db",
                "warehouse": "file://{tmp}/wh",
            },
            "Could not open the Iceberg catalog 'ktexport' at uri 'sqlite:////nonexistent-ktexport/catalog.db'",
        ),
    ],
    ids=["mistyped-key", "unreachable-uri"],
)
def test_bad_catalog_properties_fail_before_any_lease_naming_the_cause(run_dag, tmp_path, bad, says):
    props = {k: v.format(tmp=tmp_path) for k, v in bad.items()}
    with Emulator(
        api_key="iceberg-test-key", lease_seconds=120, long_poll_seconds=1, batch_size=50, seed=3
    ) as emu:
        emu.generate(100)
        result = run_dag(
            "ktexport_it_iceberg",
            connections={"ktexport_default": ktexport_conn(emu)},
            options={"catalog_properties": props},
        )
        stats = emu.stats()
        delivered = emu.delivered_seqs()
    assert result.returncode != 0
    assert says in result.output, result.output[-6000:]
    assert "AirflowFailException" in result.output  # no Airflow retry of a setting that is wrong
    # The library's own traceback stays out of it: the message carries the cause.
    assert "sqlalchemy.exc" not in result.output and "NoSuchTableError" not in result.output
    assert stats["served"] == 0 and stats["leased"] == 0 and delivered == []


TWO_AT_ONCE = textwrap.dedent(
    """
    import sys, time
    from airflow_provider_ktexport.transport.sync_client import KtExportClient
    from airflow_provider_ktexport.drain import Drain, DrainConfig
    from airflow_provider_ktexport.lake.iceberg import IcebergSink, load_catalog

    url, key, uri, warehouse, start = sys.argv[1:6]
    while time.time() < float(start):  # both processes open the fresh catalog at the same instant
        pass
    catalog = load_catalog("ktexport", {"type": "sql", "uri": uri, "warehouse": warehouse})
    with KtExportClient(url, key, long_poll_seconds=1.0) as client:
        result = Drain(client, IcebergSink(catalog), DrainConfig(max_runtime=60, flush_records=100)).run()
    print("DRAINED", result.acked, flush=True)
    """
)


def test_two_drains_starting_together_on_a_fresh_sqlite_catalog_both_succeed(tmp_path):
    """Both create the catalog's tables on first use; the loser used to crash with 'table
    iceberg_namespace_properties already exists' (unit-tested deterministically in
    tests/unit/lake/test_iceberg_catalog.py; here with real processes)."""
    props = catalog_props(tmp_path)
    with Emulator(
        api_key="iceberg-test-key", lease_seconds=60, long_poll_seconds=1, batch_size=50, seed=6
    ) as emu:
        emu.generate(600)
        start = time.time() + 6  # after both interpreters have imported everything
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    TWO_AT_ONCE,
                    emu.url,
                    emu.api_key,
                    props["uri"],
                    props["warehouse"],
                    str(start),
                ],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        stats = emu.stats()
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and "DRAINED" in output, output[-4000:]
    assert stats["queued"] == 0 and stats["leased"] == 0
    everything = sorted(s for seqs in table_seqs(props).values() for s in seqs)
    assert everything == list(range(1, 601))


def test_example_maintenance_dag_compacts_the_drains_tables(run_dag, tmp_path):
    """The daily example DAG through `airflow dags test`: it compacts what a drain of many small
    flushes left, loses no row, and reports per table in XCom and in its OpenLineage COMPLETE
    event (written by the provider's file transport)."""
    from airflow_provider_ktexport.drain import Drain, DrainConfig
    from airflow_provider_ktexport.lake.iceberg import IcebergSink
    from tests.emulators import client_for

    props = catalog_props(tmp_path)
    with Emulator(
        api_key="iceberg-test-key", lease_seconds=60, long_poll_seconds=1, batch_size=25, seed=7
    ) as emu:
        emu.generate(300)
        with client_for(emu, long_poll_seconds=1.0) as client:
            Drain(client, IcebergSink(load_catalog("ktexport", props)), DrainConfig(flush_records=25)).run()
    before = table_seqs(props)
    events = tmp_path / "ol"
    events.mkdir()
    result = run_dag(
        "ktexport_iceberg_maintenance",
        connections={},
        variables={
            "ktexport_iceberg_catalog_uri": props["uri"],
            "ktexport_iceberg_warehouse": props["warehouse"],
        },
        dags_folder=REPO / "dags",
        env={
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(events / "event"), "append": False}
            ),
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "ktexport_it",
            "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",  # no fork: see test_observability_dags
        },
    )
    assert result.returncode == 0, result.output[-6000:]
    summary = result.xcom("maintain_iceberg_tables")
    assert summary["namespace"] == "iceberg://ktexport/ktexport"
    assert {t["table"] for t in summary["tables"]} >= {f"ktexport.{name}" for name in before}
    assert summary["files_after"] < summary["files_before"]
    assert sum(t["partitions_compacted"] for t in summary["tables"]) > 0
    assert "Maintained ktexport." in result.output
    after = table_seqs(props)
    assert {k: sorted(v) for k, v in after.items()} == {k: sorted(v) for k, v in before.items()}
    assert_maintenance_lineage(events, props, summary)


def assert_maintenance_lineage(events: Path, props: dict[str, str], summary: dict) -> None:
    """The COMPLETE event of the maintenance task names each table as input and output (by its
    location, with its catalog name), with the rows, bytes and data files the table holds now."""
    from airflow_provider_ktexport.operators._lineage import storage_dataset

    complete = [
        e
        for e in (json.loads(p.read_text()) for p in sorted(events.iterdir()))
        if e.get("eventType") == "COMPLETE" and e["job"]["name"].endswith(".maintain_iceberg_tables")
    ]
    assert len(complete) == 1, [p.name for p in events.iterdir()]
    event = complete[0]
    catalog = load_catalog("ktexport", props)
    outputs = {o["facets"]["symlinks"]["identifiers"][0]["name"]: o for o in event["outputs"]}
    assert set(outputs) == {t["table"] for t in summary["tables"]}
    assert sorted((i["namespace"], i["name"]) for i in event["inputs"]) == sorted(
        (o["namespace"], o["name"]) for o in event["outputs"]
    )
    for name, out in outputs.items():
        table = catalog.load_table(name)
        assert (out["namespace"], out["name"]) == storage_dataset(table.location())
        assert out["facets"]["catalog"]["metadataUri"] == props["uri"]
        live = [task.file for task in table.scan().plan_files()]
        stats = out["outputFacets"]["outputStatistics"]
        assert (stats["rowCount"], stats["size"], stats["fileCount"]) == (
            table.scan().to_arrow().num_rows,
            sum(f.file_size_in_bytes for f in live),
            len(live),
        )
