"""Iceberg maintenance on pyiceberg's SQL catalog: compaction, expiry with file deletion, orphans."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("pyiceberg")

from airflow_provider_ktexport.exceptions import KtExportConfigError  # noqa: E402
from airflow_provider_ktexport.lake.iceberg import IcebergSink  # noqa: E402
from airflow_provider_ktexport.lake.iceberg_maintenance import maintain_table  # noqa: E402
from airflow_provider_ktexport.operators.iceberg import KtExportIcebergMaintenanceOperator  # noqa: E402
from tests.unit.drain.support import batch_of  # noqa: E402
from tests.unit.lake.test_iceberg import catalog_for, drain_into, records  # noqa: E402


def small_flushes(tmp_path: Path, n: int = 12):
    """``n`` one-record flushes over three event days: n small files in three partitions."""
    catalog = catalog_for(tmp_path)
    batches = [batch_of(f"b{i}", records([i], day=f"2026-11-2{i % 3}")) for i in range(n)]
    # Every lease starts now, as the batches are built: 120 s outlasts n commits on a loaded machine
    # (with 8 s the last batches' leases ran out first, so they were rightly not written).
    drain_into(IcebergSink(catalog), batches, flush_records=1, max_runtime=240, lease_seconds=120)
    return catalog


def files_on_disk(table) -> set[str]:
    root = Path(table.location().removeprefix("file://"))
    return {str(p) for p in (root / "data").rglob("*.parquet")}


def test_maintenance_compacts_each_partition_and_deletes_what_only_expired_snapshots_read(tmp_path):
    catalog = small_flushes(tmp_path)
    table = catalog.load_table("ktexport.telemetry")
    before = files_on_disk(table)
    assert len(before) == 12

    report = maintain_table(catalog, "ktexport.telemetry", expire_older_than=timedelta(0))

    table = catalog.load_table("ktexport.telemetry")
    assert sorted(table.scan().to_arrow().column("seq").to_pylist()) == list(range(12))
    live = {task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()}
    assert len(live) == 3  # one file per event day
    assert files_on_disk(table) == live  # pyiceberg's expiry alone would have left all 15
    assert len(table.snapshots()) == 1
    assert (report.files_before, report.files_after) == (12, 3)
    assert report.partitions_compacted == 3 and report.partitions_skipped == 0
    assert report.snapshots_expired >= 12 and report.expired_files_deleted >= 12
    assert report.bytes_after < report.bytes_before


def test_expiry_keeps_every_file_a_remaining_snapshot_reads(tmp_path):
    catalog = small_flushes(tmp_path, n=6)
    report = maintain_table(catalog, "ktexport.telemetry", expire_older_than=timedelta(days=1))
    assert report.snapshots_expired == 0 and report.expired_files_deleted == 0
    table = catalog.load_table("ktexport.telemetry")
    # Time travel to the first snapshot still reads its file: nothing it reads was deleted.
    first = table.snapshots()[0]
    assert table.scan(snapshot_id=first.snapshot_id).to_arrow().num_rows == 1


def test_orphans_go_only_when_older_than_the_threshold(tmp_path):
    catalog = small_flushes(tmp_path, n=3)
    table = catalog.load_table("ktexport.telemetry")
    data = Path(table.location().removeprefix("file://")) / "data"
    old, young = data / "crashed-commit-old.parquet", data / "in-flight-commit.parquet"
    old.write_bytes(b"x" * 10)
    young.write_bytes(b"y" * 10)
    four_days_ago = time.time() - 4 * 86400
    os.utime(old, (four_days_ago, four_days_ago))

    report = maintain_table(catalog, "ktexport.telemetry", orphans_older_than=timedelta(days=3))

    assert not old.exists() and young.exists()
    assert report.orphans_removed == 1 and report.orphan_bytes == 10
    rows = catalog.load_table("ktexport.telemetry").scan().to_arrow()
    assert sorted(rows.column("seq").to_pylist()) == [0, 1, 2]


def test_the_operator_maintains_every_table_and_reports_it(tmp_path):
    catalog = small_flushes(tmp_path, n=6)
    op = KtExportIcebergMaintenanceOperator(
        task_id="maintain",
        catalog_properties=dict(catalog.properties, type="sql"),
        catalog_name="test",
        expire_snapshots_older_than=timedelta(0),
    )
    result = op.execute({})
    assert result["namespace"] == "iceberg://test/ktexport"
    (tele,) = [t for t in result["tables"] if t["table"] == "ktexport.telemetry"]
    assert (tele["files_before"], tele["files_after"]) == (6, 3)
    assert result["files_after"] == sum(t["files_after"] for t in result["tables"])
    assert result["snapshots_expired"] >= 6


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"expire_snapshots_older_than": timedelta(days=-1)}, "expire_snapshots_older_than"),
        ({"remove_orphans_older_than": 3}, "remove_orphans_older_than must be a timedelta"),
        ({"target_file_mb": 0}, "target_file_mb must be a positive number of MB, got 0"),
        ({"catalog_properties": None}, "exactly one of catalog_properties"),
    ],
)
def test_the_operator_refuses_bad_arguments_at_parse_time(kwargs, says):
    args = {"task_id": "m", "catalog_properties": {"type": "sql"}, **kwargs}
    with pytest.raises(KtExportConfigError, match=says):
        KtExportIcebergMaintenanceOperator(**args)


def test_a_namespace_no_drain_created_yet_has_nothing_to_maintain(tmp_path):
    from airflow_provider_ktexport.lake.iceberg_maintenance import maintain_namespace

    assert maintain_namespace(catalog_for(tmp_path), "ktexport") == []
