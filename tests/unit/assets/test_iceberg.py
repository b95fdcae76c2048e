"""The ``iceberg`` Asset URI scheme: the provider registers it, and Airflow validates with it."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from airflow_provider_ktexport.assets.iceberg import create_asset, sanitize_uri

VALID = [
    "iceberg://ktexport/ktexport",  # what KtExportToIcebergOperator announces (catalog/namespace)
    "iceberg://lake/telematics.raw",  # a nested namespace, dotted as pyiceberg writes it
    "iceberg://lake/ktexport/telemetry",  # one table (IcebergSink.uri)
    "iceberg://Glue_Prod/Raw/Trips",  # names keep their case
]
INVALID = {
    "iceberg:///ktexport": "names no catalog",
    "iceberg://lake": "must name a namespace",
    "iceberg://lake/ns/table/extra": "must name a namespace",
    "iceberg://lake/ns//table": "must name a namespace",
    "iceberg://lake:8181/ns": "must be a catalog name",
    "iceberg://user@lake/ns": "must be a catalog name",
    "iceberg://lake/ns?snapshot=1": "takes no query",
}


@pytest.mark.parametrize("uri", VALID)
def test_valid_uris_pass_unchanged(uri: str) -> None:
    assert sanitize_uri(urlsplit(uri)).geturl() == uri


@pytest.mark.parametrize(("uri", "problem"), INVALID.items())
def test_invalid_uris_name_the_problem_and_the_form(uri: str, problem: str) -> None:
    with pytest.raises(ValueError, match="iceberg://<catalog>/<namespace>") as err:
        sanitize_uri(urlsplit(uri))
    assert problem in str(err.value)


def test_factory_builds_namespace_and_table_assets() -> None:
    assert create_asset(catalog="lake", namespace="raw").uri == "iceberg://lake/raw"
    assert create_asset(catalog="lake", namespace="raw", table="trips").uri == "iceberg://lake/raw/trips"


@pytest.fixture(scope="module")
def providers_manager():
    from airflow.providers_manager import ProvidersManager

    return ProvidersManager()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # 3.3: the task runtime has its own manager (below)
def test_providers_manager_registers_the_scheme(providers_manager) -> None:
    assert providers_manager.asset_uri_handlers.get("iceberg") is sanitize_uri
    assert providers_manager.asset_factories.get("iceberg") is create_asset


def test_airflow_asset_refuses_a_malformed_uri() -> None:
    """Airflow's own ``Asset`` runs the handler: the mistake surfaces when the DAG is parsed."""
    from airflow.sdk import Asset

    with pytest.raises(ValueError, match="must name a namespace"):
        Asset("iceberg://lake")
    # Airflow strips the trailing slash before the handler sees the URI.
    assert Asset("iceberg://lake/raw/").uri == "iceberg://lake/raw"


def test_the_iceberg_operator_declares_a_valid_uri() -> None:
    from airflow_provider_ktexport.operators.iceberg import KtExportToIcebergOperator

    op = KtExportToIcebergOperator(
        task_id="drain",
        catalog_name="lake",
        namespace="telematics.raw",
        catalog_properties={"type": "sql", "uri": "sqlite:///:memory:"},
        asset_alias="ktexport_lake",
    )
    uris = [getattr(outlet, "uri", None) for outlet in op.outlets]
    assert "iceberg://lake/telematics.raw" in uris


def test_task_runtime_registers_the_scheme() -> None:
    """Airflow 3.2+ sanitises Assets in workers and the DAG processor through the task SDK's manager."""
    runtime = pytest.importorskip("airflow.sdk.providers_manager_runtime")
    manager = runtime.ProvidersManagerTaskRuntime()
    assert manager.asset_uri_handlers.get("iceberg") is sanitize_uri
