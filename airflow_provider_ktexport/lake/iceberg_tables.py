"""An Iceberg namespace's tables as the lake keeps them: created with their partition spec and
properties, adopted when made before, loaded by name (docs/iceberg.md).

:class:`IcebergTables` is what :class:`~airflow_provider_ktexport.lake.iceberg.IcebergSink` lands
into; it knows tables, not flushes. :data:`DEFAULT_TABLE_PROPERTIES` bound what each commit
leaves behind (old ``metadata.json`` files deleted, manifests merged).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pyarrow as pa

from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportWriteError
from airflow_provider_ktexport.lake.iceberg_catalog import (
    check_warehouse_writable,
    pyiceberg_modules,
    wants_version_hint,
)
from airflow_provider_ktexport.lake.layout import EVENT_DATE_COLUMN
from airflow_provider_ktexport.lake.naming import legacy_renames

__all__ = ["DEFAULT_TABLE_PROPERTIES", "IcebergTables", "plain_arrow", "table_properties_with_defaults"]

log = logging.getLogger(__name__)

#: Table properties every table gets unless the user overrides them (``table_properties``). Without
#: them each commit rewrites a ``metadata.json`` that is never deleted and adds a manifest that is
#: never merged: commit cost and metadata grow with every flush, for ever.
DEFAULT_TABLE_PROPERTIES: Mapping[str, str] = {
    # Keep the last 20 metadata.json files and delete older ones at each commit.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    # Merge manifests at append time once 8 small ones pile up (pyiceberg's default waits for 100).
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "8",
}


def plain_arrow(schema: pa.Schema) -> pa.Schema:
    """An Iceberg table's Arrow schema as the lake builds tables: string (not large_string), no ids."""
    fields = []
    for f in schema:
        if f.name == EVENT_DATE_COLUMN:
            continue
        t = pa.string() if pa.types.is_large_string(f.type) else f.type
        t = pa.binary() if pa.types.is_large_binary(t) else t
        fields.append(pa.field(f.name, t))
    return pa.schema(fields)


def table_properties_with_defaults(overrides: Mapping[str, Any] | None) -> dict[str, str]:
    """:data:`DEFAULT_TABLE_PROPERTIES` with the user's ``table_properties`` over them (as text)."""
    merged = dict(DEFAULT_TABLE_PROPERTIES)
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or value is None:
            raise KtExportConfigError(
                f"table_properties must map property names to values, got {key!r}: {value!r}; e.g. "
                "{'write.metadata.previous-versions-max': '50'}"
            )
        merged[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return merged


def _iceberg_schema(schema: pa.Schema) -> Any:
    """An Arrow schema as an Iceberg schema with field ids, so a partition spec can name its source."""
    from pyiceberg.catalog import Catalog
    from pyiceberg.schema import assign_fresh_schema_ids

    return assign_fresh_schema_ids(Catalog._convert_schema_if_needed(schema))


def _identity_spec(schema: Any, column: str | None) -> Any:
    """An identity partition on ``column`` (unpartitioned when ``None``)."""
    from pyiceberg.partitioning import PARTITION_FIELD_ID_START, PartitionField, PartitionSpec
    from pyiceberg.transforms import IdentityTransform

    if column is None:
        return PartitionSpec()
    source = schema.find_field(column)
    return PartitionSpec(
        PartitionField(
            source_id=source.field_id,
            field_id=PARTITION_FIELD_ID_START,
            transform=IdentityTransform(),
            name=column,
        )
    )


class IcebergTables:
    """The tables of ``namespace`` in ``catalog``, opened: the namespace created if missing and the
    warehouse proved to take files (:func:`.iceberg_catalog.check_warehouse_writable`).

    :param catalog: a pyiceberg catalog (see :func:`.iceberg_catalog.load_catalog`)
    :param namespace: where the tables live
    :param catalog_name: the catalog's name, for URIs in results and Asset events
    :param table_properties: table properties over :data:`DEFAULT_TABLE_PROPERTIES`, given to new
        tables and to existing ones that lack them
    """

    def __init__(
        self,
        catalog: Any,
        namespace: str = "ktexport",
        *,
        catalog_name: str = "ktexport",
        table_properties: Mapping[str, Any] | None = None,
    ) -> None:
        self._ice = pyiceberg_modules()
        self.catalog = catalog
        self.namespace = namespace
        self.catalog_name = catalog_name
        self.table_properties = table_properties_with_defaults(table_properties)
        self._version_hints = wants_version_hint(catalog)
        #: Tables whose properties this sink has checked (once per table per run).
        self._adopted: set[str] = set()
        self._open_namespace()
        # Before the drain's first lease: a warehouse that takes no files fails the run now.
        check_warehouse_writable(catalog)

    def _open_namespace(self) -> None:
        try:
            self.catalog.create_namespace_if_not_exists(self.namespace)
        except Exception as exc:  # noqa: BLE001 - any catalog failure here is a destination problem
            if self._namespace_exists():
                return  # another writer created it at the same moment (SQL catalogs say IntegrityError)
            raise KtExportWriteError(
                f"Could not open namespace {self.namespace!r} in Iceberg catalog {self.catalog_name!r}: "
                f"{type(exc).__name__}: {exc}",
                destination=f"iceberg://{self.catalog_name}/{self.namespace}",
            ) from exc

    # -- tables ------------------------------------------------------------------------------------

    def _namespace_exists(self) -> bool:
        try:
            self.catalog.load_namespace_properties(self.namespace)
        except Exception:  # noqa: BLE001 - any failure means we cannot use it
            return False
        return True

    def identifier(self, table: str) -> str:
        return f"{self.namespace}.{table}"

    def uri(self, table: str) -> str:
        return f"iceberg://{self.catalog_name}/{self.namespace}/{table}"

    def _load(self, table: str) -> Any | None:
        try:
            return self.catalog.load_table(self.identifier(table))
        except self._ice.exceptions.NoSuchTableError:
            return None

    def _open(self, table: str, schema: pa.Schema, *, partition_by: str | None) -> Any:
        """The table, created with ``schema``, its partition spec and properties if it does not exist."""
        found = self._load(table)
        if found is None:
            found = self._create(table, schema, partition_by=partition_by)
        if table not in self._adopted:
            found = self._adopt(table, found, partition_by=partition_by)
        return found

    def _create(self, table: str, schema: pa.Schema, *, partition_by: str | None) -> Any:
        """Create the table in one step with its spec (not unpartitioned, then evolved: that leaves
        two specs in every table); a writer that loses the race to create it loads the winner's."""
        iceberg_schema = _iceberg_schema(schema)
        try:
            created = self.catalog.create_table(
                self.identifier(table),
                schema=iceberg_schema,
                partition_spec=_identity_spec(iceberg_schema, partition_by),
                properties=dict(self.table_properties),
            )
        except self._ice.exceptions.TableAlreadyExistsError:
            return self.catalog.load_table(self.identifier(table))
        log.info("Created Iceberg table %s", self.identifier(table))
        return created

    def _adopt(self, table: str, handle: Any, *, partition_by: str | None) -> Any:
        """Give a table made before (by an older version, or by hand) the properties it lacks, and
        its partition spec if it has none; properties it already has are the owner's choice."""
        missing = {k: v for k, v in self.table_properties.items() if k not in handle.properties}
        renames = legacy_renames([f.name for f in handle.schema().fields])
        try:
            if renames:
                # Tables of the version that tagged names with capitals: renamed in place (Iceberg
                # tracks columns by id, so no data file changes).
                with handle.update_schema() as update:
                    for old, new in renames.items():
                        update.rename_column(old, new)
                log.info("Renamed columns of %s to this version's names: %s", self.identifier(table), renames)
            if missing:
                with handle.transaction() as tx:
                    tx.set_properties(missing)
                log.info("Set %s on Iceberg table %s", ", ".join(sorted(missing)), self.identifier(table))
            if partition_by and not handle.spec().fields:
                with handle.update_spec() as spec:
                    spec.add_identity(partition_by)
        except self._ice.exceptions.CommitFailedException:
            handle = self.catalog.load_table(self.identifier(table))  # another writer did it first
        self._adopted.add(table)
        return handle
