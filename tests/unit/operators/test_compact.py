"""KtExportCompactOperator: arguments, templating, and a run on a local lake."""

from __future__ import annotations

import json

import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from airflow_provider_ktexport.operators.compact import AirflowFailException, KtExportCompactOperator
from airflow_provider_ktexport.operators.ktexport import KtExportCompactOperator as ReExported
from tests.lake_support import land, trips


def test_it_is_re_exported_next_to_the_drain_operator():
    assert ReExported is KtExportCompactOperator
    assert KtExportCompactOperator.template_fields == ("source",)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_file_mb": 0}, "target_file_mb must be a positive number of MB, got 0"),
        ({"target_file_mb": True}, "target_file_mb must be a positive number of MB, got True"),
        ({"min_age_minutes": -1}, "min_age_minutes"),
    ],
)
def test_bad_arguments_fail_at_parse_time(kwargs, match):
    with pytest.raises(KtExportConfigError, match=match):
        KtExportCompactOperator(task_id="c", source="file:///tmp/lake", **kwargs)


def test_execute_compacts_a_local_lake_and_returns_the_summary(tmp_path):
    root = tmp_path / "lake"
    writer = LakeWriter(LocalFileSystem(), str(root), writer_id="drain")
    land(writer, trips(range(10)))
    land(writer, trips(range(5, 20)))  # 5 duplicates
    op = KtExportCompactOperator(task_id="compact", source=root.as_uri(), min_age_minutes=0)
    summary = op.execute({})  # type: ignore[arg-type]
    assert {k: summary[k] for k in ("partitions", "files_in", "files_out", "rows_in", "rows_out")} == {
        "partitions": 1,
        "files_in": 2,
        "files_out": 1,
        "rows_in": 25,
        "rows_out": 20,
    }
    assert summary["duplicates_removed"] == 5 and summary["source"] == root.as_uri()
    assert all(f.startswith(root.as_uri() + "/record_type=trip/") for f in summary["files"])
    assert sorted(read_lake_table(root.as_uri()).column("seq").to_pylist()) == list(range(20))
    json.dumps(summary)  # fit for XCom


def test_a_root_that_is_not_a_lake_fails_without_retry(tmp_path):
    lake = tmp_path / "lakes" / "a"
    writer = LakeWriter(LocalFileSystem(), str(lake), writer_id="drain")
    land(writer, trips(range(3)))
    land(writer, trips(range(3, 6)))
    op = KtExportCompactOperator(task_id="compact", source=(tmp_path / "lakes").as_uri(), min_age_minutes=0)
    with pytest.raises(AirflowFailException, match="not a lake root"):
        op.execute({})  # type: ignore[arg-type]
    assert len(list(lake.rglob("*.parquet"))) == 2
