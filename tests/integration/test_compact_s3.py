"""Compaction on an S3 server (moto over HTTP): the engine directly, and the example DAG's operator."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.lake.compact import compact_lake
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from tests.integration.conftest import aws_conn, s3_filesystem
from tests.lake_support import land

pytestmark = pytest.mark.integration


def land_seqs(writer: LakeWriter, seqs: range, **extra) -> None:
    land(writer, [{"type": "telemetry", "date": "2026-11-25T10:00:00Z", "seq": i, **extra} for i in seqs])


def data_files(fs, root: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p for p in fs.find(root) if p.endswith(".parquet"))


def test_compaction_on_s3_merges_dedups_and_keeps_types(s3_endpoint, s3_bucket):
    fs = s3_filesystem(s3_endpoint)
    root = f"{s3_bucket}/lake"
    writer = LakeWriter(fs, root, writer_id="drain", uri_prefix=f"s3://{root}")
    land_seqs(writer, range(0, 100), ignition=1)
    land_seqs(writer, range(100, 200), ignition="on")  # "on" goes to the variant ignition___string
    land_seqs(writer, range(150, 200), ignition="on")  # 50 duplicates
    before = data_files(fs, root)
    assert len(before) == 3

    result = compact_lake(fs, root, uri_prefix=f"s3://{root}", now=time.time() + 3600)

    after = data_files(fs, root)
    assert len(after) == 1 and not set(after) & set(before)
    assert (result.files_in, result.files_out, result.duplicates_removed) == (3, 1, 50)
    assert result.files == [f"s3://{after[0]}"]
    with fs.open(after[0], "rb") as fh:
        table = pq.read_table(fh)
    assert table.schema.field("ignition").type == pa.int64()  # the published type stays
    assert sorted(v for v in table.column("ignition___string").to_pylist() if v) == ["on"] * 100
    assert sorted(table.column("seq").to_pylist()) == list(range(200))
    assert sorted(read_lake_table(fs, root).column("seq").to_pylist()) == list(range(200))
    assert not [p for p in fs.find(s3_bucket) if ".tmp" in p]


def test_compact_dag_on_s3_leaves_fresh_partitions_alone(run_dag, s3_endpoint, s3_bucket):
    fs = s3_filesystem(s3_endpoint)
    root = f"{s3_bucket}/lake"
    writer = LakeWriter(fs, root, writer_id="drain")
    land_seqs(writer, range(0, 10))
    land_seqs(writer, range(10, 20))
    before = data_files(fs, root)
    result = run_dag(
        "ktexport_compact",
        connections={"aws_default": aws_conn(s3_endpoint)},
        variables={"ktexport_lake": f"s3://aws_default@{root}"},
        dags_folder=Path(__file__).resolve().parents[2] / "dags",
    )
    assert result.returncode == 0, result.output[-5000:]
    summary = result.xcom("compact_lake")
    # Written seconds ago: inside min_age_minutes, so a drain could still be writing there.
    assert summary["partitions_skipped_recent"] == 1 and summary["partitions"] == 0
    assert summary["source"] == f"s3://{root}"
    assert data_files(fs, root) == before
