"""KtExportToIcebergOperator and KtExportIcebergMaintenanceOperator without running Airflow:
construction, the catalog's properties from a dict or a connection, opening the sink."""

from __future__ import annotations

import copy
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.operators import iceberg as iceberg_operators
from airflow_provider_ktexport.operators.iceberg import (
    KtExportIcebergMaintenanceOperator,
    KtExportToIcebergOperator,
    catalog_properties_from_connection,
)

pytest.importorskip("pyiceberg")


def sql_catalog(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    return {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path}/catalog.db",
        "warehouse": (tmp_path / "warehouse").as_uri(),
    }


def drain(**kw: Any) -> KtExportToIcebergOperator:
    return KtExportToIcebergOperator(task_id="drain", **kw)


@pytest.mark.parametrize("extra", [{"destination": "file:///tmp/lake"}, {"partition_by": ["record_type"]}])
def test_a_drain_takes_no_destination_or_partitioning(extra: dict[str, Any]) -> None:
    with pytest.raises(KtExportConfigError, match="no destination or partition_by"):
        drain(catalog_properties={"type": "sql"}, **extra)


@pytest.mark.parametrize("choice", [{}, {"catalog_properties": {"type": "sql"}, "catalog_conn_id": "ice"}])
def test_the_catalog_is_given_exactly_once(choice: dict[str, Any]) -> None:
    for make in (drain, lambda **kw: KtExportIcebergMaintenanceOperator(task_id="m", **kw)):
        with pytest.raises(
            KtExportConfigError, match="exactly one of catalog_properties .* or catalog_conn_id"
        ):
            make(**choice)


def test_the_drain_survives_deepcopy_and_templates_its_catalog() -> None:
    op = drain(namespace="{{ params.ns }}", catalog_properties={"type": "sql"}, table_properties={"a": 1})
    clone = copy.deepcopy(op)
    assert clone.namespace == "{{ params.ns }}" and clone.table_properties == {"a": 1}
    assert {"namespace", "catalog_properties", "table_properties"} <= set(op.template_fields)


def test_a_connection_gives_the_catalog_its_uri_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {
        "conn_type": "generic",
        "host": "https://polaris.example.com/api/catalog",
        "password": "s3cret-token",
    }
    monkeypatch.setenv("AIRFLOW_CONN_ICE", json.dumps({**conn, "extra": {"type": "rest", "warehouse": "w"}}))
    assert catalog_properties_from_connection("ice") == {
        "type": "rest",
        "warehouse": "w",
        "uri": "https://polaris.example.com/api/catalog",
        "token": "s3cret-token",
    }
    # Properties the extras set win over the connection's fields.
    extra = {"type": "rest", "uri": "https://other", "credential": "id:secret"}
    monkeypatch.setenv("AIRFLOW_CONN_ICE", json.dumps({**conn, "extra": extra}))
    assert catalog_properties_from_connection("ice") == extra


def test_opening_the_sink_masks_secrets_and_creates_the_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    masked: list[str] = []
    monkeypatch.setattr(iceberg_operators, "_mask_secret", masked.append)
    props = {**sql_catalog(tmp_path), "s3.secret-access-key": "very-secret"}
    op = drain(namespace="lake", catalog_properties=props, catalog_name="cat")
    sink, uri = op.open_sink({})  # type: ignore[arg-type]
    try:
        assert uri == "iceberg://cat/lake" and sink.namespace == "lake"
        assert ("lake",) in sink.catalog.list_namespaces()
    finally:
        sink.close()
    assert masked == ["very-secret"]


@pytest.mark.parametrize(
    ("kw", "setting"),
    [
        ({"expire_snapshots_older_than": timedelta(days=-1)}, "expire_snapshots_older_than"),
        ({"remove_orphans_older_than": 3600}, "remove_orphans_older_than"),
        ({"target_file_mb": 0}, "target_file_mb"),
        ({"target_file_mb": True}, "target_file_mb"),
    ],
)
def test_bad_maintenance_settings_fail_at_parse_time_naming_the_setting(
    kw: dict[str, Any], setting: str
) -> None:
    with pytest.raises(KtExportConfigError, match=setting):
        KtExportIcebergMaintenanceOperator(task_id="m", catalog_properties={"type": "sql"}, **kw)


def test_maintaining_an_empty_namespace_reports_zeros(tmp_path: Path) -> None:
    op = KtExportIcebergMaintenanceOperator(
        task_id="m", namespace="lake", catalog_properties=sql_catalog(tmp_path)
    )
    drain(namespace="lake", catalog_properties=sql_catalog(tmp_path)).open_sink({})[0].close()  # type: ignore[arg-type]
    report = op.execute({})  # type: ignore[arg-type]
    assert report["namespace"] == "iceberg://ktexport/lake" and report["tables"] == []
    assert report["files_before"] == report["orphans_removed"] == 0
