"""Opening an Iceberg catalog: bad settings fail before any lease, naming the property and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("pyiceberg")

from airflow_provider_ktexport.exceptions import KtExportConfigError  # noqa: E402
from airflow_provider_ktexport.lake.iceberg import IcebergSink  # noqa: E402
from airflow_provider_ktexport.lake.iceberg_catalog import load_catalog, redact_uri  # noqa: E402


def sql_props(tmp_path: Path, **overrides: str) -> dict[str, str]:
    props = {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path}/catalog.db",
        "warehouse": (tmp_path / "warehouse").as_uri(),
    }
    props.update(overrides)
    return {k: v for k, v in props.items() if v}


def open_sink(props: dict[str, str]) -> IcebergSink:
    return IcebergSink(load_catalog("ktexport", props), "ktexport")


@pytest.mark.parametrize(
    "change, says",
    [
        (
            {"warehouse": "", "warehuose": "file:///tmp/wh"},
            r"'warehuose' is not a catalog property; did you mean 'warehouse'",
        ),
        ({"uri": "", "url": "sqlite:////tmp/c.db"}, r"'url' is not a catalog property; did you mean 'uri'"),
        ({"warehouse": ""}, r"needs the property 'warehouse': where table files go"),
        (
            {"uri": "sqlite:////nonexistent-dir/catalog.db"},
            r"Could not open the Iceberg catalog 'ktexport' at uri 'sqlite:////nonexistent-dir/catalog.db' \(OperationalError: .*unable to open database file\)",
        ),
        (
            {"type": "rest", "uri": "http://127.0.0.1:9/api"},
            r"at uri 'http://127.0.0.1:9/api' \(ConnectionError: .*Check 'type', 'uri'",
        ),
        ({"type": "sqll"}, r"'sqll' is not a valid CatalogType"),
        (
            {"warehouse": "file:///etc/hostname/warehouse"},
            r"warehouse 'file:///etc/hostname/warehouse' .* does not take files \(NotADirectoryError",
        ),
    ],
)
def test_bad_catalog_properties_name_the_property_and_the_fix(tmp_path, change, says):
    with pytest.raises(KtExportConfigError, match=says) as err:
        open_sink(sql_props(tmp_path, **change))
    # The message carries the cause; no sqlalchemy or requests traceback rides along.
    assert err.value.__cause__ is None
    assert err.value.__context__ is None or err.value.__suppress_context__


def test_a_catalog_uri_password_never_shows_in_an_error(tmp_path):
    assert (
        redact_uri("postgresql+psycopg2://user:s3cret@db:5432/ice")
        == "postgresql+psycopg2://user:***@db:5432/ice"
    )
    with pytest.raises(KtExportConfigError) as err:
        load_catalog("k", {"type": "rest", "uri": "http://user:s3cret@127.0.0.1:9/api"})
    assert "s3cret" not in str(err.value)


def test_the_first_use_race_on_a_fresh_sqlite_catalog_is_retried(tmp_path, monkeypatch):
    """Two processes opening a fresh SQLite catalog both see no tables and both create them: the
    loser's CREATE TABLE fails with 'table iceberg_tables already exists'. Reproduced here by
    letting "the other process" create the tables between this one's check and its create."""
    from pyiceberg.catalog.sql import SqlCatalog, SqlCatalogBaseTable
    from sqlalchemy import create_engine

    props = sql_props(tmp_path)
    (tmp_path / "warehouse").mkdir()
    raced: list[str] = []

    def create_tables_after_the_other_writer(self: SqlCatalog) -> None:
        if not raced:
            raced.append("lost")
            SqlCatalogBaseTable.metadata.create_all(create_engine(props["uri"]))  # the other writer
        SqlCatalogBaseTable.metadata.create_all(self.engine, checkfirst=False)  # this one, unaware

    monkeypatch.setattr(SqlCatalog, "create_tables", create_tables_after_the_other_writer)
    sink = open_sink(props)
    assert raced == ["lost"]
    assert sink.catalog.list_namespaces() == [("ktexport",)]
