"""DrainResult: the XCom summary stays small and its counts stay exact."""

from __future__ import annotations

import json

from airflow_provider_ktexport.drain import DrainResult


def test_the_xcom_summary_lists_at_most_500_files_and_counts_them_all():
    result = DrainResult(files=[f"file:///lake/f{i}.parquet" for i in range(510)], rejected_files=["r"])
    summary = result.summary()
    assert summary["files"] == result.files[:500] and summary["file_count"] == 510
    assert summary["rejected_files"] == ["r"] and summary["rejected_file_count"] == 1
    assert summary["files_truncated"] is True
    assert len(json.dumps(summary)) < 40_000
    whole = result.summary(max_files=None)
    assert whole["files"] == result.files and whole["files_truncated"] is False
