"""Open a drain's destination from plain settings, the same way wherever the drain runs (no Airflow).

The Parquet and Iceberg operators and the ``ktexport`` command all land through these two
functions, so a drain started from a shell cleans an interrupted run's temporary files, names its
lake by the same URI and opens a catalog with the same checks as one started by Airflow. How the
filesystem is found is the caller's business: an ``ObjectStoragePath`` (its Airflow connection) in
the operator, ``fsspec.core.url_to_fs`` (the environment's credentials) in the command.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_ktexport.lake.writer import LakeWriter

if TYPE_CHECKING:
    import fsspec

    from airflow_provider_ktexport.lake.iceberg import IcebergSink

__all__ = ["iceberg_uri", "lake_uri", "open_iceberg_sink", "open_parquet_lake"]

log = logging.getLogger(__name__)


def lake_uri(protocol: str | Sequence[str] | None, path: str) -> str:
    """The lake root as a URI for logs, results and Asset events: the filesystem's first protocol
    and the path, without credentials (an Airflow ``conn_id@``) or a trailing slash."""
    if protocol is not None and not isinstance(protocol, str):
        protocol = protocol[0] if protocol else None
    if protocol in (None, "", "local"):
        protocol = "file"
    return f"{protocol}://{str(path).rstrip('/') or '/'}"


def open_parquet_lake(
    fs: fsspec.AbstractFileSystem,
    path: str,
    *,
    uri: str | None = None,
    compression: str = "zstd",
    logger: Any = None,
) -> tuple[LakeWriter, str]:
    """A :class:`LakeWriter` on ``path`` of ``fs`` and the lake's URI (``uri`` or :func:`lake_uri`).

    Removes the temporary files an interrupted run left (older than an hour): they are never
    data, and nothing else would ever delete them.
    """
    uri = uri or lake_uri(fs.protocol, path)
    writer = LakeWriter(fs, path, compression=compression, uri_prefix=uri)
    removed = writer.cleanup_temp()
    if removed:
        (logger or log).info("Removed %d temporary files left by an earlier, interrupted run", removed)
    return writer, uri


def iceberg_uri(catalog_name: str, namespace: str) -> str:
    """The URI of a namespace's tables, as the Iceberg drain names its Asset."""
    return f"iceberg://{catalog_name}/{namespace}"


def open_iceberg_sink(
    catalog_name: str,
    properties: Mapping[str, Any],
    namespace: str,
    *,
    table_properties: Mapping[str, Any] | None = None,
) -> tuple[IcebergSink, str]:
    """An :class:`~airflow_provider_ktexport.lake.iceberg.IcebergSink` on the catalog opened from
    ``properties`` (checked for mistyped keys first), and its URI.

    Opening it creates or loads the namespace and proves the warehouse writable, so a wrong
    catalog fails here, before any lease.

    :raises KtExportConfigError: pyiceberg missing, a property wrong, the catalog refusing
    """
    from airflow_provider_ktexport.lake.iceberg import IcebergSink, load_catalog

    sink = IcebergSink(
        load_catalog(catalog_name, properties),
        namespace,
        catalog_name=catalog_name,
        table_properties=table_properties,
    )
    return sink, iceberg_uri(catalog_name, namespace)
