"""Asset events of the drain operators, as Airflow's task runner reports them at success.

``_build_asset_profiles`` (the task's outlets) and ``_serialize_outlet_events`` are what the Task
SDK sends the API server in ``SucceedTask``; the API server records one event per outlet Asset and
one per alias event (tests/integration/test_operator_dags.py runs it for real).
"""

from __future__ import annotations

import json

import pytest
from airflow.sdk import Asset, AssetAlias
from airflow.sdk.execution_time.context import OutletEventAccessors
from airflow.sdk.execution_time.task_runner import _build_asset_profiles, _serialize_outlet_events

from airflow_provider_ktexport.operators.assets import event_extra, is_templated
from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator

LAKE = "file:///data/lake"


def summary(files: int = 2, rejected_files: int = 0, **kw) -> dict:
    base = {
        "records": 10 * files,
        "rejected": rejected_files,
        "bytes": 1000 * files,
        "stopped": "empty",
        "files": [
            f"{LAKE}/record_type=telemetry/event_date=2026-11-25/part-{i}.parquet" for i in range(files)
        ],
        "rejected_files": [f"{LAKE}/_rejected/record_type=x/part-{i}.parquet" for i in range(rejected_files)],
        "rows_by_type": {"trip": 5, "telemetry": 10 * files - 5} if files else {},
        "landed": [],
    }
    return {**base, **kw}


def sent_at_success(op: KtExportToParquetOperator, run_summary: dict) -> tuple[list, list]:
    """Run the operator's event step; return (outlet profiles, outlet events) as sent at success."""
    context = {"outlet_events": OutletEventAccessors()}
    task = op.prepare_for_execution()  # what the task runner executes: a copy of the DAG's task
    task._emit_asset_events(context, LAKE, run_summary)
    profiles = [(p.type, p.uri or p.name) for p in _build_asset_profiles(task.outlets)]
    return profiles, list(_serialize_outlet_events(context["outlet_events"]))


def make(**kw) -> KtExportToParquetOperator:
    kw.setdefault("destination", "file:///data/lake/")
    return KtExportToParquetOperator(task_id="drain", **kw)


def test_extra_names_files_relative_to_the_lake_with_rows_per_record_type():
    extra = event_extra(summary(files=2, rejected_files=1), LAKE)
    assert extra["destination"] == LAKE
    assert extra["files"] == [
        "record_type=telemetry/event_date=2026-11-25/part-0.parquet",
        "record_type=telemetry/event_date=2026-11-25/part-1.parquet",
    ]
    assert extra["rejected_files"] == ["_rejected/record_type=x/part-0.parquet"]
    assert extra["record_types"] == {"telemetry": 15, "trip": 5}
    assert (extra["file_count"], extra["rejected_file_count"], extra["files_truncated"]) == (2, 1, False)
    assert extra["records"] == 20 and extra["rejected"] == 1
    assert json.loads(json.dumps(extra)) == extra


def test_extra_caps_the_file_list_and_says_so():
    extra = event_extra(summary(files=12), LAKE, max_files=5)
    assert len(extra["files"]) == 5 and extra["file_count"] == 12 and extra["files_truncated"] is True
    assert len(json.dumps(event_extra(summary(files=5000), LAKE))) < 100_000


def test_iceberg_extra_names_commits_not_files():
    commits = [{"table": "ns.telemetry", "snapshot_id": i, "rows": 3, "other": "x"} for i in range(3)]
    run = summary(files=0, landed=commits, rows_by_type={"telemetry": 9})
    run["files"] = [f"iceberg://cat/ns/telemetry@{i}" for i in range(3)]
    extra = event_extra(run, "iceberg://cat/ns", max_files=2)
    assert extra["commits"] == [{"table": "ns.telemetry", "snapshot_id": i, "rows": 3} for i in range(2)]
    assert extra["commit_count"] == 3 and extra["files_truncated"] is True
    assert extra["tables"] == ["ns.telemetry"] and "files" not in extra


def test_templated_values_are_told_apart():
    assert is_templated("{{ var.value.lake }}") and is_templated("s3://b/{% if x %}a{% endif %}")
    assert not is_templated("s3://aws_default@bucket/lake") and not is_templated(None)


def test_literal_destination_declares_the_lake_asset_at_parse_time():
    assert make().outlets == [AssetAlias("ktexport_lake"), Asset(LAKE)]
    assert make(destination="{{ var.value.lake }}").outlets == [AssetAlias("ktexport_lake")]
    assert make(asset_alias=None).outlets == []
    assert make(destination="s3://aws_default@bucket/lake/").outlets[-1] == Asset("s3://bucket/lake")


def test_a_run_that_landed_nothing_emits_no_event_on_any_asset():
    other = Asset("s3://bucket/announce")
    op = make(asset=other)
    assert op.outlets == [other, AssetAlias("ktexport_lake"), Asset(LAKE)]
    profiles, events = sent_at_success(op, summary(files=0))
    assert events == []
    assert profiles == [("AssetAlias", "ktexport_lake")]  # no Asset left to record an event on
    assert op.outlets == [other, AssetAlias("ktexport_lake"), Asset(LAKE)]  # the DAG's copy untouched


def test_a_run_that_landed_files_emits_one_event_per_asset_with_the_extra():
    other = Asset("s3://bucket/announce")
    profiles, events = sent_at_success(make(asset=other), summary(files=2))
    # The lake once, through the alias (alias-scheduled DAGs run on it); the declared copy is dropped.
    assert profiles == [("Asset", other.uri), ("AssetAlias", "ktexport_lake")]
    by_dest = {e["dest_asset_key"]["uri"]: e for e in events}
    assert set(by_dest) == {LAKE, other.uri}
    assert by_dest[LAKE]["source_alias_name"] == "ktexport_lake"
    assert by_dest[LAKE]["extra"] == by_dest[other.uri]["extra"] == event_extra(summary(files=2), LAKE)


@pytest.mark.parametrize("alias", ["ktexport_lake", None])
def test_the_lake_given_as_asset_gets_one_event(alias):
    profiles, events = sent_at_success(make(asset=Asset(LAKE), asset_alias=alias), summary(files=1))
    assert len([e for e in events if e["dest_asset_key"]["uri"] == LAKE]) + profiles.count(
        ("Asset", LAKE)
    ) == (2 if alias is None else 1)
    if alias is None:  # the declared Asset, with the extra: Airflow records it once
        assert profiles == [("Asset", LAKE)] and events[0]["extra"]["file_count"] == 1
    profiles, events = sent_at_success(make(asset=Asset(LAKE), asset_alias=alias), summary(files=0))
    assert events == [] and ("Asset", LAKE) not in profiles
