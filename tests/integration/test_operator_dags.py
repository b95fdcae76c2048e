"""KtExportToParquetOperator through real parts: `airflow dags test`, the emulator, Parquet, moto S3."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.lake.writer import read_lake_table
from airflow_provider_ktexport.testing.emulator import Emulator
from tests.integration.conftest import aws_conn, ktexport_conn, s3_filesystem

pytestmark = [
    pytest.mark.integration,
    pytest.mark.emulator(
        api_key="it-key-5ecret", lease_seconds=120, long_poll_seconds=1, batch_size=250, seed=3
    ),
]

REPO = Path(__file__).resolve().parents[2]
_duck_lock = threading.Lock()


def lake_seqs(lake: Path) -> list[int]:
    """Every emulator_seq in the lake, one per row (duplicates kept)."""
    files = list(lake.rglob("*.parquet"))
    if not files:
        return []
    with _duck_lock, duckdb.connect() as con:  # called from the emulator's threads too
        rows = con.sql(
            f"SELECT emulator_seq FROM read_parquet('{lake}/record_type=*/**/*.parquet', hive_partitioning=true, "
            "union_by_name=true)"
        ).fetchall()
    return [r[0] for r in rows]


def test_example_dag_lands_every_record_once_and_acks_only_after_the_write(emulator, run_dag, tmp_path):
    lake = tmp_path / "lake"
    emulator.generate(3000)
    checked: list[str] = []
    violations: list[str] = []

    def on_ack(batch_id: str, records: list[dict]) -> None:
        # Runs in the emulator, before the ack is applied: the batch must already be in the lake.
        landed = set(lake_seqs(lake))
        missing = [r["emulator_seq"] for r in records if r["emulator_seq"] not in landed]
        checked.append(batch_id)
        if missing:
            violations.append(f"{batch_id}: {len(missing)} records not in the lake at ack time")

    emulator.on_ack = on_ack
    result = run_dag(
        "ktexport_drain",
        connections={"ktexport_default": ktexport_conn(emulator)},
        variables={"ktexport_lake": lake.as_uri()},
        dags_folder=REPO / "dags",
    )
    assert result.returncode == 0, result.output[-5000:]
    assert violations == []
    stats = emulator.stats()
    assert stats["queued"] == 0 and stats["leased"] == 0, (stats, result.output[-8000:])
    assert len(checked) == stats["acked"] > 0
    seqs = lake_seqs(lake)
    assert sorted(seqs) == list(range(1, 3001))  # every record, exactly once

    summary = result.xcom("drain_to_lake")
    assert summary["records"] == 3000
    assert summary["batches"] == stats["acked"] == summary["acked"]
    assert summary["ack_failed"] == 0 and summary["quarantined"] == 0
    assert summary["stopped"] == "empty"
    assert summary["destination"] == lake.as_uri()
    assert summary["oldest_record_age_s"] > 0
    assert all(f.startswith("file://") and f.endswith(".parquet") for f in summary["files"])
    assert sum(pq.read_metadata(f.removeprefix("file://")).num_rows for f in summary["files"]) == 3000
    # Downstream DAGs hear of the new files: an Asset event on the lake URI, through the alias.
    (event,) = result.asset_events(lake.as_uri())
    assert event["records"] == 3000 and event["file_count"] == len(summary["files"])
    assert sorted(f"{lake.as_uri()}/{f}" for f in event["files"]) == sorted(summary["files"])
    assert sum(event["record_types"].values()) == 3000
    # The key never reaches Airflow's logs or XCom.
    assert emulator.api_key not in result.output
    assert emulator.api_key not in str(summary)


def test_drain_to_s3_over_http(emulator, run_dag, s3_endpoint, s3_bucket):
    emulator.generate(1200)
    result = run_dag(
        "ktexport_it_drain",
        connections={"ktexport_default": ktexport_conn(emulator), "aws_default": aws_conn(s3_endpoint)},
        variables={"ktexport_lake": f"s3://aws_default@{s3_bucket}/ktexport"},
    )
    assert result.returncode == 0, result.output[-5000:]
    fs = s3_filesystem(s3_endpoint)
    table = read_lake_table(fs, f"{s3_bucket}/ktexport")
    assert sorted(table.column("emulator_seq").to_pylist()) == list(range(1, 1201))
    summary = result.xcom("drain")
    assert summary["destination"] == f"s3://{s3_bucket}/ktexport"  # no conn_id@ in the Asset URI
    assert all(f.startswith(f"s3://{s3_bucket}/ktexport/record_type=") for f in summary["files"])
    assert not [p for p in fs.find(s3_bucket) if ".tmp" in p]


def test_short_leases_are_respected_while_data_trickles_in(run_dag, tmp_path):
    """Records keep arriving for longer than a lease; every batch is acked inside its 8 s lease."""
    lake = tmp_path / "lake"
    with Emulator(api_key="ops-test-key", lease_seconds=8, long_poll_seconds=1, batch_size=50, seed=5) as emu:
        emu.generate(100)
        stop = threading.Event()

        def trickle() -> None:
            # Start when the drain does (its first GET), and end well before its max_runtime.
            while emu.stats()["requests"] == 0 and not stop.wait(0.05):
                pass
            for _ in range(10):
                if stop.wait(1.0):
                    return
                emu.generate(60)

        feeder = threading.Thread(target=trickle, daemon=True)
        feeder.start()
        result = run_dag(
            "ktexport_it_drain",
            connections={"ktexport_default": ktexport_conn(emu)},
            variables={"ktexport_lake": lake.as_uri()},
            options={
                "lease_seconds": 8,
                "flush_seconds": 3,
                "flush_records": 100_000,
                "stop_when_empty": False,
                "max_runtime": 14,
            },
        )
        stop.set()
        feeder.join()
        stats = emu.stats()
    assert result.returncode == 0, result.output[-5000:]
    assert stats["expired"] == 0 and stats["redelivered"] == 0, stats
    assert stats["ack_unknown"] == 0
    emitted = stats["emitted"]
    assert sorted(lake_seqs(lake)) == list(range(1, emitted + 1))
    summary = result.xcom("drain")
    assert summary["stopped"] == "max_runtime"
    assert summary["flushes"] >= 3  # flushed on lease age, not only at the end
    assert summary["max_ack_lease_age_s"] < 8


def test_undecodable_body_is_quarantined_not_acked_and_lands_after_redelivery(run_dag, tmp_path):
    lake = tmp_path / "lake"
    with Emulator(
        api_key="ops-test-key", lease_seconds=3, long_poll_seconds=1, batch_size=100, seed=9
    ) as emu:
        emu.generate(300)
        # The first GET leases a batch but its body is cut short.
        emu.script(200, b'{"id": "$ID", "items": [{"type": "telemetry", "da', lease=True)
        result = run_dag(
            "ktexport_it_drain",
            connections={"ktexport_default": ktexport_conn(emu)},
            variables={"ktexport_lake": lake.as_uri()},
            options={"lease_seconds": 3, "flush_seconds": 1, "stop_when_empty": False, "max_runtime": 8},
        )
        stats = emu.stats()
    assert result.returncode == 0, result.output[-5000:]
    summary = result.xcom("drain")
    assert summary["quarantined"] == 1
    bodies = [p.read_bytes() for p in (lake / "_quarantine").glob("*.body")]
    assert len(bodies) == 1 and bodies[0].startswith(b'{"id": "'), "the raw body must be kept"
    # The truncated batch was not acknowledged: it came back and every record landed.
    assert stats["redelivered"] >= 1
    assert set(lake_seqs(lake)) == set(range(1, 301))


def test_bad_drain_until_fails_with_a_clear_message(emulator, run_dag, tmp_path):
    result = run_dag(
        "ktexport_it_drain",
        connections={"ktexport_default": ktexport_conn(emulator)},
        variables={"ktexport_lake": (tmp_path / "lake").as_uri()},
        options={"drain_until": "next tuesday"},
    )
    assert result.returncode != 0
    assert "drain_until='next tuesday' is neither ISO-8601 nor epoch seconds" in result.output
    assert emulator.stats()["served"] == 0  # nothing leased before the error


def test_execution_timeout_stops_the_drain_without_loss_and_a_rerun_lands_the_rest(run_dag, tmp_path):
    """execution_timeout strikes mid-run while data keeps arriving: nothing acked before it landed."""
    lake = tmp_path / "lake"
    early: list[str] = []

    with Emulator(
        api_key="k-timeout", lease_seconds=8, long_poll_seconds=1, batch_size=50, rate=150, seed=8
    ) as emu:

        def on_ack(batch_id: str, records: list[dict]) -> None:
            landed = set(lake_seqs(lake))
            if any(r["emulator_seq"] not in landed for r in records):
                early.append(batch_id)

        emu.on_ack = on_ack
        common = {"ktexport_default": ktexport_conn(emu)}
        timed_out = run_dag(
            "ktexport_it_drain",
            connections=common,
            variables={"ktexport_lake": lake.as_uri()},
            options={
                "lease_seconds": 8,
                "flush_seconds": 3,
                "stop_when_empty": False,
                "max_runtime": 120,
                "execution_timeout": 6,
            },
        )
        assert timed_out.returncode != 0, timed_out.output[-3000:]
        assert "AirflowTaskTimeout" in timed_out.output, timed_out.output[-3000:]
        # What it held then was landed if its leases allowed (usually: "Flush (end of run)"), else
        # left to be redelivered; which one depends on when the timeout struck, so the test checks
        # the outcome both must give: no early ack (on_ack) and nothing lost after the rerun.
        emu.rate = 0  # the producer stops; the reruns drain what is left, redeliveries included
        # On a loaded machine a rerun can land batches after their 8 s lease (not acknowledged,
        # by design: the server delivers them again), so the next rerun lands those. Reruns go on
        # until the queue is empty, each for that reason only, within a generous deadline.
        stop = time.monotonic() + 600
        while True:
            rerun = run_dag(
                "ktexport_it_drain",
                connections=common,
                variables={"ktexport_lake": lake.as_uri()},
                options={"lease_seconds": 8, "flush_seconds": 3, "drain_until": time.time() + 9},
            )
            assert rerun.returncode == 0, rerun.output[-5000:]
            stats = emu.stats()
            if stats["queued"] == 0 and stats["leased"] == 0:
                break
            summary = rerun.xcom("drain")
            assert summary["lease_expired"] + summary["ack_failed"] > 0, (stats, summary)
            assert time.monotonic() < stop, f"records still queued after 600 s of reruns: {stats}"
    assert early == []
    assert stats["emitted"] > 0 and stats["queued"] == 0 and stats["leased"] == 0, stats
    assert set(lake_seqs(lake)) == set(range(1, stats["emitted"] + 1))


ASSET_WARNINGS = (
    "AssetModel",
    "inactive asset",
)  # Airflow's "AssetModel ... not found", "... inactive AssetModel"


def test_asset_events_only_for_runs_that_landed_and_no_asset_warnings(emulator, run_dag, tmp_path):
    """A literal destination with the default declaration: no Airflow asset warnings; an empty run
    records no event, neither on the lake (alias) nor on an explicit ``asset=``."""
    lake = tmp_path / "lake"
    announce = f"file://{tmp_path}/announce"
    options = {"destination": lake.as_uri(), "asset": announce}
    connections = {"ktexport_default": ktexport_conn(emulator)}
    emulator.generate(300)

    landed = run_dag("ktexport_it_drain", connections=connections, options=options)
    assert landed.returncode == 0, landed.output[-5000:]
    assert [line for line in landed.output.splitlines() if any(w in line for w in ASSET_WARNINGS)] == []
    (event,) = landed.asset_events(lake.as_uri())
    assert landed.asset_events(announce) == [event]
    assert event["records"] == 300 and event["file_count"] == len(landed.xcom("drain")["files"])
    assert sum(event["record_types"].values()) == 300 and not event["files_truncated"]
    assert all((lake / f).is_file() for f in event["files"])

    empty = run_dag("ktexport_it_drain", connections=connections, options=options)
    assert empty.returncode == 0, empty.output[-5000:]
    assert empty.xcom("drain")["records"] == 0
    assert empty.asset_events(lake.as_uri()) == [event]  # no new event on either asset
    assert empty.asset_events(announce) == [event]
    assert [line for line in empty.output.splitlines() if any(w in line for w in ASSET_WARNINGS)] == []
