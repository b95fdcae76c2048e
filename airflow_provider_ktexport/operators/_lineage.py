"""OpenLineage for the drain, compaction and Iceberg maintenance operators
(``get_openlineage_facets_on_complete``).

The OpenLineage provider is optional (the ``openlineage`` extra): everything from it is imported
inside the functions the provider itself calls. Datasets follow OpenLineage's naming:

* the export task (input): namespace = the connection's base URL as ``scheme://host[:port]`` (no
  path, query, key or credentials), name = the connection id;
* a record type's folder (output): object-storage naming, ``s3://bucket`` + key, ``gs://bucket`` +
  key, ``abfss://container@account.dfs.core.windows.net`` + path, ``file`` + absolute path;
* an Iceberg table (output): its location by the same rules (as engines that read it report it),
  with a ``symlinks`` facet naming the table in its catalog and a ``catalog`` facet.

Each output carries a ``schema`` facet (the columns that landed) and ``outputStatistics``
(rows, bytes, files) for this run. Compaction and maintenance rewrite in place: each folder or
table is both an input and an output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

#: Object-store schemes OpenLineage spells differently from fsspec.
_SCHEMES = {"gcs": "gs", "s3a": "s3", "s3n": "s3", "abfs": "abfss", "az": "abfss"}


@dataclass
class OutputFacts:
    """One output dataset of a run: where it is and what landed there."""

    location: str
    rows: int
    bytes: int
    files: int
    schema: Any = None  # a pyarrow.Schema
    #: For a table: its name in the catalog (``namespace.table``).
    table: str | None = None


@dataclass
class RunFacts:
    """What ``get_openlineage_facets_on_complete`` reports, kept on the operator after ``execute``
    (never in XCom: schemas can be large)."""

    inputs: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name)
    outputs: list[OutputFacts] = field(default_factory=list)
    #: Iceberg tables read (``namespace.table`` at a location): named and faceted as table outputs
    #: are, so lineage tools see one dataset, without statistics or schema.
    table_inputs: list[OutputFacts] = field(default_factory=list)
    #: For Iceberg outputs: the catalog's name, type, metadata URI and warehouse (no secrets).
    catalog: dict[str, str] | None = None


def source_dataset(base_url: str, conn_id: str) -> tuple[str, str]:
    """The export task as (namespace, name): ``https://export.us1.kt1.io`` and the connection id.

    Only scheme, host and port are kept: the API key travels in a header or the query string,
    and a URL with ``user:password@`` must not leak either.
    """
    parts = urlsplit(base_url if "://" in base_url else f"https://{base_url}")
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme or 'https'}://{netloc}", conn_id


def storage_dataset(uri: str, *, azure_account: str | None = None) -> tuple[str, str]:
    """A folder or table location as (namespace, name) by OpenLineage's object-storage naming.

    ``file:///data/lake`` -> (``file``, ``/data/lake``); ``s3://bucket/a/b`` -> (``s3://bucket``,
    ``a/b``); a ``conn_id@`` part is dropped.
    """
    parts = urlsplit(uri)
    scheme = (parts.scheme or "file").lower()
    if scheme in ("file", "local", ""):
        return "file", parts.path or "/"
    scheme = _SCHEMES.get(scheme, scheme)
    bucket = parts.netloc.rsplit("@", 1)[-1]  # ObjectStoragePath's conn_id@ is no part of the place
    key = parts.path.lstrip("/") or "/"
    if scheme == "abfss" and "." not in bucket and azure_account:
        bucket = f"{bucket}@{azure_account}.dfs.core.windows.net"
    return f"{scheme}://{bucket}", key


def clean_uri(uri: str) -> str:
    """A catalog or warehouse URI without credentials or query string (for lineage facets).

    Put back together by hand: ``urlunsplit`` turns ``sqlite:////data/catalog.db`` (empty host,
    absolute path) into ``sqlite://data/catalog.db``, a host named ``data``.
    """
    parts = urlsplit(uri)
    if not parts.scheme:
        return uri
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if not uri[len(parts.scheme) + 1 :].startswith("//"):
        return f"{parts.scheme}:{parts.path}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def outputs_from(datasets: Mapping[str, Any]) -> list[OutputFacts]:
    """The drain result's per-dataset stats (``DrainResult.datasets``) as outputs."""
    return [
        OutputFacts(s.location, s.rows, s.bytes, s.files, s.schema, table=_table_of(uri))
        for uri, s in datasets.items()
    ]


def _table_of(uri: str) -> str | None:
    # iceberg://<catalog>/<namespace>/<table>  ->  <namespace>.<table>
    if not uri.startswith("iceberg://"):
        return None
    _, _, rest = uri[len("iceberg://") :].partition("/")
    return rest.replace("/", ".") or None


def operator_lineage(facts: RunFacts | None, *, azure_account: str | None = None) -> Any:
    """An ``OperatorLineage`` for ``facts`` (empty when the task did not run to the end)."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    if facts is None:
        return OperatorLineage()
    from airflow.providers.common.compat.openlineage.facet import InputDataset

    return OperatorLineage(
        inputs=[InputDataset(namespace=ns, name=name) for ns, name in facts.inputs]
        + [_table_input(t, facts.catalog, azure_account) for t in facts.table_inputs],
        outputs=[_output(o, facts.catalog, azure_account) for o in facts.outputs],
    )


def _table_input(table: OutputFacts, catalog: Mapping[str, str] | None, azure_account: str | None) -> Any:
    from airflow.providers.common.compat.openlineage.facet import InputDataset

    namespace, name = storage_dataset(table.location, azure_account=azure_account)
    return InputDataset(namespace=namespace, name=name, facets=_table_facets(str(table.table), catalog or {}))


def _output(out: OutputFacts, catalog: Mapping[str, str] | None, azure_account: str | None) -> Any:
    from airflow.providers.common.compat.openlineage.facet import (
        OutputDataset,
        OutputStatisticsOutputDatasetFacet,
    )

    namespace, name = storage_dataset(out.location, azure_account=azure_account)
    facets: dict[str, Any] = {}
    if out.schema is not None:
        facets["schema"] = _schema_facet(out.schema)
    if out.table is not None:
        facets.update(_table_facets(out.table, catalog or {}))
    return OutputDataset(
        namespace=namespace,
        name=name,
        facets=facets,
        outputFacets={
            "outputStatistics": OutputStatisticsOutputDatasetFacet(
                rowCount=out.rows, size=out.bytes, fileCount=out.files
            )
        },
    )


def _schema_facet(schema: Iterable[Any]) -> Any:
    from airflow.providers.common.compat.openlineage.facet import SchemaDatasetFacet, SchemaDatasetFacetFields

    return SchemaDatasetFacet(
        fields=[SchemaDatasetFacetFields(name=f.name, type=str(f.type)) for f in schema]
    )


def _table_facets(table: str, catalog: Mapping[str, str]) -> dict[str, Any]:
    from airflow.providers.common.compat.openlineage.facet import Identifier, SymlinksDatasetFacet

    name = catalog.get("name", "")
    symlink_ns = catalog.get("uri") or f"iceberg://{name}"
    facets: dict[str, Any] = {
        "symlinks": SymlinksDatasetFacet(
            identifiers=[Identifier(namespace=symlink_ns, name=table, type="TABLE")]
        )
    }
    try:  # newer OpenLineage clients only
        from openlineage.client.generated.catalog_dataset import CatalogDatasetFacet
        from openlineage.client.generated.storage_dataset import StorageDatasetFacet
    except ImportError:  # pragma: no cover - older client
        return facets
    facets["catalog"] = CatalogDatasetFacet(
        framework="iceberg",
        type=catalog.get("type", ""),
        name=name,
        metadataUri=catalog.get("uri"),
        warehouseUri=catalog.get("warehouse"),
        source="airflow-provider-ktexport",
    )
    facets["storage"] = StorageDatasetFacet(storageLayer="iceberg", fileFormat="parquet")
    return facets


def catalog_facts(name: str, properties: Mapping[str, Any]) -> dict[str, str]:
    """An Iceberg catalog as the ``catalog`` facet shows it: name, type, URIs without credentials."""
    out = {"name": name, "type": str(properties.get("type", ""))}
    for key in ("uri", "warehouse"):
        if properties.get(key):
            out[key] = clean_uri(str(properties[key]))
    return out


def compaction_facts(
    datasets: Mapping[str, Mapping[str, Any]], *, azure_account: str | None = None
) -> RunFacts:
    """A compaction's lineage: each folder it compacted is its input and its output."""
    facts = RunFacts()
    for uri, d in datasets.items():
        facts.inputs.append(storage_dataset(uri, azure_account=azure_account))
        facts.outputs.append(OutputFacts(uri, d["rows_out"], d["bytes_out"], d["files_out"], d.get("schema")))
    return facts


def maintenance_facts(reports: Iterable[Any], catalog: dict[str, str]) -> RunFacts:
    """An Iceberg maintenance run's lineage: each table maintained (a ``TableMaintenance``) is its
    input and its output; the output's statistics are the table's rows, bytes and data files after."""
    facts = RunFacts(catalog=catalog)
    for r in reports:
        facts.table_inputs.append(OutputFacts(r.location, 0, 0, 0, table=r.table))
        facts.outputs.append(
            OutputFacts(r.location, r.rows_after, r.bytes_after, r.files_after, r.schema, table=r.table)
        )
    return facts
