"""OpenLineage facets of the operators: sources, folders and catalogs named without credentials."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.operators import _lineage
from airflow_provider_ktexport.testing.emulator import Emulator

pytest.importorskip("airflow.providers.openlineage")
pytestmark = pytest.mark.emulator(api_key="unit-key-5ecret", long_poll_seconds=1, batch_size=100, seed=5)


@pytest.mark.parametrize(
    "base_url, namespace",
    [
        ("https://export.us1.kt1.io", "https://export.us1.kt1.io"),
        ("https://user:pa55@export.eu1.kt1.io:8443/v2/?token=s3cret", "https://export.eu1.kt1.io:8443"),
        ("export.uk1.kt1.io", "https://export.uk1.kt1.io"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
    ],
)
def test_the_source_is_the_base_urls_scheme_and_host_and_the_connection_id(base_url, namespace):
    assert _lineage.source_dataset(base_url, "kt_prod") == (namespace, "kt_prod")


@pytest.mark.parametrize(
    "uri, azure, expected",
    [
        ("file:///data/lake/record_type=trip", None, ("file", "/data/lake/record_type=trip")),
        ("s3://bucket/kt/record_type=trip", None, ("s3://bucket", "kt/record_type=trip")),
        ("s3://aws_default@bucket/kt", None, ("s3://bucket", "kt")),
        ("gcs://bucket/kt", None, ("gs://bucket", "kt")),
        ("gs://bucket/kt", None, ("gs://bucket", "kt")),
        ("abfs://lake/kt/x", "acct", ("abfss://lake@acct.dfs.core.windows.net", "kt/x")),
        ("s3://bucket", None, ("s3://bucket", "/")),
    ],
)
def test_folders_follow_openlineage_object_storage_naming(uri, azure, expected):
    assert _lineage.storage_dataset(uri, azure_account=azure) == expected


def test_catalog_facts_keep_no_credentials():
    facts = _lineage.catalog_facts(
        "prod",
        {"type": "sql", "uri": "postgresql://u:pw@db:5432/cat?sslmode=require", "token": "t0k"},
    )
    assert facts == {"name": "prod", "type": "sql", "uri": "postgresql://db:5432/cat"}


@pytest.mark.parametrize(
    "uri",
    ["sqlite:////data/catalog.db", "sqlite:///catalog.db", "file:///data/wh", "s3://bucket/wh", "jdbc:x"],
)
def test_catalog_uris_without_credentials_keep_their_path(uri):
    # sqlite:////data/catalog.db once came out as sqlite://data/catalog.db (a host named "data").
    assert _lineage.clean_uri(uri) == uri


# -- lineage after an execute against the emulator ---------------------------------------------------


@pytest.fixture
def emulator(emulator, monkeypatch):
    """The shared emulator, as the ``ktexport_default`` connection."""
    conn = {
        "conn_type": "ktexport",
        "host": emulator.url,
        "password": emulator.api_key,
        "extra": {"long_poll_seconds": 1},
    }
    monkeypatch.setenv("AIRFLOW_CONN_KTEXPORT_DEFAULT", json.dumps(conn))
    return emulator


def source_of(emu: Emulator) -> tuple[str, str]:
    return (emu.url.rstrip("/"), "ktexport_default")


def test_parquet_drain_reports_each_record_type_folder_with_schema_and_statistics(emulator, tmp_path):
    from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator

    lake = tmp_path / "lake"
    emulator.generate(600)
    op = KtExportToParquetOperator(
        task_id="drain", destination=lake.as_uri(), max_runtime=60, flush_records=250, asset_alias=None
    )
    summary = op.execute({"outlet_events": {}})  # type: ignore[arg-type]
    assert summary["records"] == 600
    json.dumps(summary)
    assert "datasets" not in summary and "schema" not in json.dumps(summary)

    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [source_of(emulator)]
    folders = sorted(p for p in lake.iterdir() if p.name.startswith("record_type="))
    assert len(folders) >= 3
    outputs = {d.name: d for d in lineage.outputs}
    assert sorted(outputs) == [str(f) for f in folders]
    for folder in folders:
        out = outputs[str(folder)]
        assert out.namespace == "file"
        files = list(folder.rglob("*.parquet"))
        stats = out.outputFacets["outputStatistics"]
        assert stats.rowCount == sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        assert stats.fileCount == len(files)
        assert stats.size == sum(f.stat().st_size for f in files)
        columns = {f.name: f.type for f in out.facets["schema"].fields}
        for f in files:
            for col in pq.read_schema(f):
                assert columns[col.name] == str(col.type)
    assert sum(o.outputFacets["outputStatistics"].rowCount for o in lineage.outputs) == 600


def test_iceberg_drain_reports_each_table_by_location_with_its_catalog_name(emulator, tmp_path):
    from airflow_provider_ktexport.operators.iceberg import KtExportToIcebergOperator

    (tmp_path / "wh").mkdir()
    props = {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path}/catalog.db",
        "warehouse": (tmp_path / "wh").as_uri(),
    }
    emulator.generate(300)
    op = KtExportToIcebergOperator(
        task_id="drain", catalog_properties=props, catalog_name="lakecat", max_runtime=60, asset_alias=None
    )
    summary = op.execute({"outlet_events": {}})  # type: ignore[arg-type]
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [source_of(emulator)]
    from airflow_provider_ktexport.lake.iceberg import load_catalog

    catalog = load_catalog("lakecat", props)
    by_table = {o.facets["symlinks"].identifiers[0].name: o for o in lineage.outputs}
    assert set(by_table) == {c["table"] for c in summary["landed"]}
    total = 0
    for name, out in by_table.items():
        table = catalog.load_table(name)
        assert (out.namespace, out.name) == _lineage.storage_dataset(table.location())
        assert out.facets["symlinks"].identifiers[0].type == "TABLE"
        assert out.facets["catalog"].name == "lakecat" and out.facets["catalog"].framework == "iceberg"
        rows = table.scan().to_arrow().num_rows
        assert out.outputFacets["outputStatistics"].rowCount == rows
        columns = {f.name for f in out.facets["schema"].fields}
        assert columns == set(table.schema().column_names)
        total += rows
    assert total == 300


def drained_iceberg_catalog(emulator: Emulator, tmp_path: Path) -> dict[str, str]:
    """A SQL catalog on SQLite whose tables hold 300 records of many small flushes."""
    from airflow_provider_ktexport.operators.iceberg import KtExportToIcebergOperator

    (tmp_path / "wh").mkdir()
    props = {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path}/catalog.db",
        "warehouse": (tmp_path / "wh").as_uri(),
        "token": "catalog-t0ken-5ecret",  # a secret the facets must not carry
    }
    emulator.generate(300)
    KtExportToIcebergOperator(
        task_id="drain",
        catalog_properties=props,
        catalog_name="lakecat",
        max_runtime=60,
        flush_records=50,  # many small files for the maintenance to compact
        asset_alias=None,
    ).execute({"outlet_events": {}})  # type: ignore[arg-type]
    return props


def maintenance_of(props: dict[str, str]) -> Any:
    from airflow_provider_ktexport.operators.iceberg import KtExportIcebergMaintenanceOperator

    return KtExportIcebergMaintenanceOperator(
        task_id="maintain",
        catalog_properties=props,
        catalog_name="lakecat",
        expire_snapshots_older_than=timedelta(0),
        remove_orphans_older_than=timedelta(0),
    )


def test_iceberg_maintenance_reports_each_table_as_input_and_output_with_what_it_left(emulator, tmp_path):
    from airflow_provider_ktexport.lake.iceberg import load_catalog

    props = drained_iceberg_catalog(emulator, tmp_path)
    op = maintenance_of(props)
    assert op.get_openlineage_facets_on_start().inputs == []
    summary = op.execute({})  # type: ignore[arg-type]
    assert summary["files_after"] < summary["files_before"]
    lineage = op.get_openlineage_facets_on_complete(None)

    catalog = load_catalog("lakecat", props)
    tables = {".".join(t) for t in catalog.list_tables("ktexport")}
    assert {t["table"] for t in summary["tables"]} == tables
    inputs = {d.facets["symlinks"].identifiers[0].name: d for d in lineage.inputs}
    outputs = {d.facets["symlinks"].identifiers[0].name: d for d in lineage.outputs}
    assert set(inputs) == set(outputs) == tables
    total = 0
    for name in tables:
        table = catalog.load_table(name)
        where = _lineage.storage_dataset(table.location())
        inp, out = inputs[name], outputs[name]
        assert (inp.namespace, inp.name) == (out.namespace, out.name) == where
        for d in (inp, out):
            assert d.facets["symlinks"].identifiers[0].type == "TABLE"
            assert d.facets["catalog"].name == "lakecat" and d.facets["catalog"].framework == "iceberg"
            assert d.facets["catalog"].metadataUri == props["uri"]
        live = [task.file for task in table.scan().plan_files()]
        stats = out.outputFacets["outputStatistics"]
        rows = table.scan().to_arrow().num_rows
        assert (stats.rowCount, stats.size, stats.fileCount) == (
            rows,
            sum(f.file_size_in_bytes for f in live),
            len(live),
        )
        assert {f.name for f in out.facets["schema"].fields} == set(table.schema().column_names)
        total += rows
    assert total == 300
    assert "catalog-t0ken-5ecret" not in repr(lineage)
    # The FAIL event after the tables were maintained names them too; XCom carries no schema.
    assert len(op.get_openlineage_facets_on_failure(None).outputs) == len(tables)
    assert "schema" not in json.dumps(summary) and summary["rows_after"] == 300


def test_a_failed_iceberg_maintenance_names_the_tables_it_maintained_before_the_failure(emulator, tmp_path):
    from airflow_provider_ktexport.lake.iceberg import load_catalog

    props = drained_iceberg_catalog(emulator, tmp_path)
    catalog = load_catalog("lakecat", props)
    tables = sorted(".".join(t) for t in catalog.list_tables("ktexport"))
    # The last table (they are maintained in name order) cannot be read: its metadata file is gone.
    Path(urlsplit(catalog.load_table(tables[-1]).metadata_location).path).unlink()
    op = maintenance_of(props)
    with pytest.raises(FileNotFoundError):
        op.execute({})  # type: ignore[arg-type]
    failed = op.get_openlineage_facets_on_failure(None)
    named = sorted(d.facets["symlinks"].identifiers[0].name for d in failed.outputs)
    assert named == sorted(d.facets["symlinks"].identifiers[0].name for d in failed.inputs) == tables[:-1]


def test_compaction_reports_each_folder_it_compacted_as_input_and_output(tmp_path):
    from airflow_provider_ktexport.operators.compact import KtExportCompactOperator
    from tests.lake_support import land, trips

    root = tmp_path / "lake"
    writer = LakeWriter(LocalFileSystem(), str(root), writer_id="drain")
    land(writer, trips(range(10)))
    land(writer, trips(range(5, 20)))
    op = KtExportCompactOperator(task_id="compact", source=root.as_uri(), min_age_minutes=0)
    op.execute({})  # type: ignore[arg-type]
    lineage = op.get_openlineage_facets_on_complete(None)
    folder = ("file", str(root / "record_type=trip"))
    assert [(d.namespace, d.name) for d in lineage.inputs] == [folder]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [folder]
    stats = lineage.outputs[0].outputFacets["outputStatistics"]
    files = list((root / "record_type=trip").rglob("*.parquet"))
    assert (stats.rowCount, stats.fileCount) == (20, len(files))
    assert "seq" in {f.name for f in lineage.outputs[0].facets["schema"].fields}


def test_no_lineage_before_execute():
    from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator

    op = KtExportToParquetOperator(task_id="d", destination="file:///tmp/x")
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == [] and lineage.outputs == []


def test_start_and_fail_events_name_the_export_task_they_read(emulator, monkeypatch, tmp_path):
    from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator

    op = KtExportToParquetOperator(task_id="d", destination=(tmp_path / "lake").as_uri(), asset_alias=None)
    start = op.get_openlineage_facets_on_start()
    assert [(d.namespace, d.name) for d in start.inputs] == [source_of(emulator)] and start.outputs == []
    failed = op.get_openlineage_facets_on_failure(None)
    assert [(d.namespace, d.name) for d in failed.inputs] == [source_of(emulator)] and failed.outputs == []
    assert emulator.api_key not in repr(start) + repr(failed)
    # A connection that cannot be read gives no lineage, never a second error.
    monkeypatch.delenv("AIRFLOW_CONN_KTEXPORT_DEFAULT")
    assert op.get_openlineage_facets_on_start().inputs == []
