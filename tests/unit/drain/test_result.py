"""DrainResult: the XCom summary stays small and its counts stay exact."""

from __future__ import annotations

import json

from airflow_provider_ktexport.drain import DrainResult
from airflow_provider_ktexport.lake.sinks import Landed


def test_the_xcom_summary_lists_at_most_500_files_and_counts_them_all():
    result = DrainResult(files=[f"file:///lake/f{i}.parquet" for i in range(510)], rejected_files=["r"])
    summary = result.summary()
    assert summary["files"] == result.files[:500] and summary["file_count"] == 510
    assert summary["rejected_files"] == ["r"] and summary["rejected_file_count"] == 1
    assert summary["files_truncated"] is True
    assert len(json.dumps(summary)) < 40_000
    whole = result.summary(max_files=None)
    assert whole["files"] == result.files and whole["files_truncated"] is False


def test_landed_pieces_are_counted_as_files_rejects_commits_and_rows_per_type():
    result = DrainResult()
    result.add_pieces(
        [
            Landed("file:///l/a.parquet", rows=3, bytes=10, record_type="trip", dataset="file:///l/trip"),
            Landed("file:///l/b.parquet", rows=2, bytes=5, record_type="trip", dataset="file:///l/trip"),
            Landed("file:///l/_rejected/r.parquet", rows=1, bytes=4, rejected=True, record_type="trip"),
            Landed("iceberg://t", rows=4, bytes=8, record_type="event", extra={"snapshot_id": 7}, files=2),
        ]
    )
    assert result.files == ["file:///l/a.parquet", "file:///l/b.parquet", "iceberg://t"]
    assert result.rejected_files == ["file:///l/_rejected/r.parquet"]
    assert result.landed == [{"snapshot_id": 7}]
    assert result.rows_by_type == {"trip": 5, "event": 4} and result.bytes == 27
    trips = result.datasets["file:///l/trip"]
    assert (trips.rows, trips.bytes, trips.files) == (5, 15, 2)
    assert result.datasets["iceberg://t"].files == 2
