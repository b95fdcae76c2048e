"""KtExportToIcebergOperator: drain the export queue into Apache Iceberg tables;
KtExportIcebergMaintenanceOperator: keep those tables small and fast."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator

from airflow_provider_ktexport.destinations import iceberg_uri, open_iceberg_sink
from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.hooks.ktexport import _mask_secret
from airflow_provider_ktexport.lake.iceberg_maintenance import (
    DEFAULT_EXPIRE_OLDER_THAN,
    DEFAULT_ORPHANS_OLDER_THAN,
    DEFAULT_TARGET_FILE_BYTES,
)
from airflow_provider_ktexport.lake.sinks import Sink
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.operators import _lineage
from airflow_provider_ktexport.operators.assets import is_templated
from airflow_provider_ktexport.operators.compact import check_target_file_mb
from airflow_provider_ktexport.operators.ktexport import AirflowFailException, KtExportDrainOperatorBase

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_ktexport.lake.iceberg_maintenance import TableMaintenance

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


def catalog_properties_of(properties: dict[str, Any] | None, conn_id: str | None) -> dict[str, Any]:
    """The catalog's properties as an operator was given them: the dict, or the connection's."""
    return dict(properties) if properties is not None else catalog_properties_from_connection(str(conn_id))


def mask_catalog_secrets(props: dict[str, Any]) -> None:
    """Register the secret-looking values with Airflow's masker: a catalog error or log line must
    not show them."""
    for key, value in props.items():
        if value and any(word in key.lower() for word in ("token", "secret", "password", "credential")):
            _mask_secret(str(value))


def _check_catalog_choice(catalog_properties: Any, catalog_conn_id: Any) -> None:
    if (catalog_properties is None) == (catalog_conn_id is None):
        raise KtExportConfigError(
            "Give the Iceberg catalog as exactly one of catalog_properties (a dict for pyiceberg's "
            "load_catalog) or catalog_conn_id (an Airflow connection holding them)"
        )


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
        _check_catalog_choice(catalog_properties, catalog_conn_id)
        super().__init__(**kwargs)
        self.namespace = namespace
        self.catalog_properties = catalog_properties
        self.catalog_conn_id = catalog_conn_id
        self.catalog_name = catalog_name
        self.table_properties = table_properties
        self._declare_lake(None if is_templated(namespace) else self._uri())

    def open_sink(self, context: Context) -> tuple[LakeWriter | Sink, str]:
        props = catalog_properties_of(self.catalog_properties, self.catalog_conn_id)
        mask_catalog_secrets(props)
        self._lineage_catalog = _lineage.catalog_facts(self.catalog_name, props)
        return open_iceberg_sink(
            self.catalog_name, props, self.namespace, table_properties=self.table_properties
        )

    def _uri(self) -> str:
        return iceberg_uri(self.catalog_name, self.namespace)


class KtExportIcebergMaintenanceOperator(BaseOperator):
    """
    Keep the drain's Iceberg tables fast: compact small files, expire old snapshots (and delete
    the files only they read), remove orphan files. Run it daily beside the drains.

    Every table of ``namespace`` is maintained in turn; see docs/iceberg.md for what each step
    deletes and what it never touches. Safe while drains append: a compaction that meets a
    drain's commit to the same partition is refused by Iceberg, retried, then left for the next
    run. Returns, per table, data files and bytes before and after, rows after, partitions
    compacted and skipped, snapshots expired, files of expired snapshots deleted and orphans
    removed; OpenLineage names each table as input and output (docs/monitoring.md).

    :param namespace: the catalog namespace of the tables (templated)
    :param catalog_properties: the catalog's properties, as for
        :class:`KtExportToIcebergOperator` (templated)
    :param catalog_conn_id: an Airflow connection holding them instead
    :param catalog_name: the catalog's name (the drain's)
    :param expire_snapshots_older_than: expire snapshots older than this (time travel reaches back
        this far); never the current one
    :param target_file_mb: compacted files' size on disk, roughly
    :param remove_orphans_older_than: delete unreferenced files older than this; keep it well above
        the longest drain run, or a file of a commit in flight could go
    """

    template_fields: Sequence[str] = ("namespace", "catalog_properties")
    ui_color = "#d4ecf7"

    def __init__(
        self,
        *,
        namespace: str = "ktexport",
        catalog_properties: dict[str, Any] | None = None,
        catalog_conn_id: str | None = None,
        catalog_name: str = "ktexport",
        expire_snapshots_older_than: timedelta = DEFAULT_EXPIRE_OLDER_THAN,
        target_file_mb: float = DEFAULT_TARGET_FILE_BYTES / 2**20,
        remove_orphans_older_than: timedelta = DEFAULT_ORPHANS_OLDER_THAN,
        **kwargs: Any,
    ) -> None:
        _check_catalog_choice(catalog_properties, catalog_conn_id)
        for name, age in (
            ("expire_snapshots_older_than", expire_snapshots_older_than),
            ("remove_orphans_older_than", remove_orphans_older_than),
        ):
            if not isinstance(age, timedelta) or age < timedelta(0):
                raise KtExportConfigError(f"{name} must be a timedelta of zero or more, got {age!r}")
        check_target_file_mb(target_file_mb)
        super().__init__(**kwargs)
        self.namespace = namespace
        self.catalog_properties = catalog_properties
        self.catalog_conn_id = catalog_conn_id
        self.catalog_name = catalog_name
        self.expire_snapshots_older_than = expire_snapshots_older_than
        self.target_file_mb = target_file_mb
        self.remove_orphans_older_than = remove_orphans_older_than
        # What get_openlineage_facets_on_complete reports, set by execute (never XCom): the
        # catalog, and each table's report as soon as that table is done.
        self._lineage_catalog: dict[str, str] = {}
        self._maintained: list[TableMaintenance] = []

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_ktexport.lake.iceberg import load_catalog
        from airflow_provider_ktexport.lake.iceberg_maintenance import maintain_namespace

        props = catalog_properties_of(self.catalog_properties, self.catalog_conn_id)
        mask_catalog_secrets(props)
        try:
            catalog = load_catalog(self.catalog_name, props)
        except KtExportConfigError as exc:
            raise AirflowFailException(str(exc)) from None
        self._lineage_catalog = _lineage.catalog_facts(self.catalog_name, props)
        self._maintained = []
        reports = maintain_namespace(
            catalog,
            self.namespace,
            expire_older_than=self.expire_snapshots_older_than,
            target_file_bytes=int(self.target_file_mb * 2**20),
            orphans_older_than=self.remove_orphans_older_than,
            on_table=self._maintained.append,
        )
        tables = [r.as_dict() for r in reports]
        totals = {
            key: sum(t[key] for t in tables)
            for key in (
                "files_before",
                "files_after",
                "bytes_before",
                "bytes_after",
                "rows_after",
                "snapshots_expired",
                "expired_files_deleted",
                "orphans_removed",
                "orphan_bytes",
            )
        }
        self.log.info("Maintained %d tables of %s: %s", len(tables), self._uri(), totals)
        return {"namespace": self._uri(), "tables": tables, **totals}

    def _uri(self) -> str:
        return iceberg_uri(self.catalog_name, self.namespace)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Lineage of the run (OpenLineage provider): each table maintained, as input and output, named
        by its location with its catalog name, and its rows, bytes and data files after the run."""
        if not self._maintained:
            return _lineage.operator_lineage(None)
        return _lineage.operator_lineage(_lineage.maintenance_facts(self._maintained, self._lineage_catalog))

    def get_openlineage_facets_on_start(self) -> Any:
        """The START event names no dataset: which tables the namespace holds is known only by asking
        the catalog, and the listener must not make a second catalog connection (or its error)."""
        return _lineage.operator_lineage(None)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        """The FAIL event names the tables maintained before the failure (a catalog that went away,
        a table that could not be read), so what did change shows on the lineage graph."""
        return self.get_openlineage_facets_on_complete(task_instance)
