"""The ``iceberg`` Asset URI scheme: ``iceberg://<catalog>/<namespace>[/<table>]``.

The Iceberg drain announces what it landed as ``iceberg://<catalog>/<namespace>`` (one event for
the namespace, its tables named in the extra) and names single tables
``iceberg://<catalog>/<namespace>/<table>``. Registered through ``get_provider_info()["asset-uris"]``
as the Amazon provider registers ``s3``, so Airflow checks every ``Asset("iceberg://...")``
when it is made: a URI without a catalog or a namespace, or with a host's port or a user in
place of a catalog, fails at DAG parse time with a message saying the expected form, instead
of an Asset that no drain will ever update.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from urllib.parse import SplitResult

    from airflow.sdk import Asset

SCHEME = "iceberg"
_FORM = "iceberg://<catalog>/<namespace> or iceberg://<catalog>/<namespace>/<table>"


def sanitize_uri(uri: SplitResult) -> SplitResult:
    """Validate an ``iceberg://`` URI that Airflow has already split and normalised.

    Airflow lowercases the scheme, drops a password and the fragment, sorts the query and strips
    trailing slashes before calling this. Catalog, namespace and table names are kept as written
    (pyiceberg's names are case-sensitive).

    :raises ValueError: naming what is wrong and the expected form
    """
    if not uri.netloc:
        raise ValueError(f"Iceberg Asset URI {uri.geturl()!r} names no catalog: expected {_FORM}")
    if "@" in uri.netloc or ":" in uri.netloc:
        raise ValueError(
            f"Iceberg Asset URI {uri.geturl()!r}: {uri.netloc!r} must be a catalog name, "
            f"not a user or host:port; expected {_FORM}"
        )
    if uri.query:
        raise ValueError(f"Iceberg Asset URI {uri.geturl()!r} takes no query (?...): expected {_FORM}")
    parts = uri.path.strip("/").split("/")
    if not parts[0] or len(parts) > 2 or not all(parts):
        raise ValueError(
            f"Iceberg Asset URI {uri.geturl()!r} must name a namespace and at most one table "
            f"(a nested namespace is dotted: a.b): expected {_FORM}"
        )
    return uri


def create_asset(*, catalog: str, namespace: str, table: str | None = None, extra: Any = None) -> Asset:
    """An Asset for a namespace the Iceberg drain lands into, or for one of its tables."""
    from airflow.sdk import Asset

    path = f"{namespace}/{table}" if table else namespace
    return Asset(uri=f"{SCHEME}://{catalog}/{path}", extra=extra)
