"""KtExportToIcebergOperator: drain the export queue into Apache Iceberg tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.hooks.ktexport import _mask_secret
from airflow_provider_ktexport.lake.sinks import Sink
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.operators import _lineage
from airflow_provider_ktexport.operators.assets import is_templated
from airflow_provider_ktexport.operators.ktexport import KtExportDrainOperatorBase

if TYPE_CHECKING:
    from airflow.sdk import Context

#: Connection fields mapped to catalog properties when the extras do not set them.
_SECRET_PROPERTIES = ("token", "credential", "s3.secret-access-key", "password")


def catalog_properties_from_connection(conn_id: str) -> dict[str, Any]:
    """A catalog's properties from an Airflow connection: its extras, plus ``uri`` from the host
    and ``token`` from the password when the extras do not set them."""
    conn = BaseHook.get_connection(conn_id)
    props: dict[str, Any] = dict(conn.extra_dejson)
    if conn.host and "uri" not in props:
        props["uri"] = conn.host
    if conn.password and not any(k in props for k in _SECRET_PROPERTIES):
        props["token"] = conn.password
    return props


class KtExportToIcebergOperator(KtExportDrainOperatorBase):
    """
    Drain a KT HTTP Export Task queue into Apache Iceberg tables, acknowledging only what is committed.

    One table ``<namespace>.<record type>`` per record type, partitioned by ``_event_date``, with
    the Parquet lake's columns; rejected records in ``<namespace>._rejected``; undecodable bodies
    in ``<namespace>._quarantine``. A batch is acknowledged only after the commits holding all its
    records are visible in the catalog. Needs the ``iceberg`` extra. Every argument of
    :class:`~airflow_provider_ktexport.operators.ktexport.KtExportToParquetOperator` but
    ``destination``, ``compression`` and ``partition_by`` applies; see docs/iceberg.md.

    :param namespace: the catalog namespace of the tables (templated)
    :param catalog_properties: the catalog's properties, passed to pyiceberg's ``load_catalog``,
        e.g. ``{"type": "sql", "uri": "sqlite:////data/catalog.db", "warehouse": "file:///data/wh"}``
        or ``{"type": "rest", "uri": "https://polaris.example.com/api/catalog", ...}`` (templated)
    :param catalog_conn_id: an Airflow connection holding them instead: its extras are the
        properties, its host the ``uri`` and its password the ``token`` unless the extras set them
    :param catalog_name: the catalog's name (for pyiceberg and in Asset URIs)
    :param table_properties: Iceberg table properties over the provider's defaults (which delete
        old ``metadata.json`` files and merge manifests, see docs/iceberg.md), set on new tables and
        on existing tables that lack them (templated)
    """

    template_fields: Sequence[str] = (
        "namespace",
        "catalog_properties",
        "table_properties",
        *KtExportDrainOperatorBase.template_fields,
    )

    def __init__(
        self,
        *,
        namespace: str = "ktexport",
        catalog_properties: dict[str, Any] | None = None,
        catalog_conn_id: str | None = None,
        catalog_name: str = "ktexport",
        table_properties: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "partition_by" in kwargs or "destination" in kwargs:
            raise KtExportConfigError(
                "KtExportToIcebergOperator takes no destination or partition_by: tables are "
                "<namespace>.<record type>, partitioned by _event_date"
            )
        if (catalog_properties is None) == (catalog_conn_id is None):
            raise KtExportConfigError(
                "Give the Iceberg catalog as exactly one of catalog_properties (a dict for pyiceberg's "
                "load_catalog) or catalog_conn_id (an Airflow connection holding them)"
            )
        super().__init__(**kwargs)
        self.namespace = namespace
        self.catalog_properties = catalog_properties
        self.catalog_conn_id = catalog_conn_id
        self.catalog_name = catalog_name
        self.table_properties = table_properties
        self._declare_lake(None if is_templated(namespace) else self._uri())

    def open_sink(self, context: Context) -> tuple[LakeWriter | Sink, str]:
        from airflow_provider_ktexport.lake.iceberg import IcebergSink, load_catalog

        props = (
            dict(self.catalog_properties)
            if self.catalog_properties is not None
            else catalog_properties_from_connection(str(self.catalog_conn_id))
        )
        for key, value in props.items():
            if value and any(word in key.lower() for word in ("token", "secret", "password", "credential")):
                _mask_secret(str(value))  # a catalog error or log line must not show it
        self._lineage_catalog = _lineage.catalog_facts(self.catalog_name, props)
        sink = IcebergSink(
            load_catalog(self.catalog_name, props),
            self.namespace,
            catalog_name=self.catalog_name,
            table_properties=self.table_properties,
        )
        return sink, self._uri()

    def _uri(self) -> str:
        return f"iceberg://{self.catalog_name}/{self.namespace}"
