"""Opening an Iceberg catalog so that a bad setting fails before any batch is leased.

Plain Python over pyiceberg, no Airflow. A drain leases batches it then has to land: a catalog
that turns out unusable at the first flush leaves them leased until their lease ends, and
pyiceberg's own errors there (a sqlalchemy traceback, ``NoSuchTableError`` when the real cause
is a missing ``warehouse``) do not say what to fix. So :func:`load_catalog` checks the
properties it can check without I/O (a mistyped key, a SQL catalog without ``warehouse``),
opens the catalog (retrying the first-use race of two writers creating a SQL catalog's tables
at once), and :func:`check_warehouse_writable` proves the warehouse takes a file. Every failure
is a :class:`~airflow_provider_ktexport.exceptions.KtExportConfigError` naming the property and
what to do, with the cause's type and message but no traceback of the libraries underneath.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_ktexport.exceptions import KtExportConfigError

__all__ = [
    "check_warehouse_writable",
    "load_catalog",
    "pyiceberg_modules",
    "redact_uri",
    "wants_version_hint",
    "write_version_hint",
]

log = logging.getLogger(__name__)

#: Catalog properties pyiceberg reads, for telling a mistyped key from one we do not know.
_KNOWN_PROPERTIES = frozenset(
    {
        "type",
        "uri",
        "warehouse",
        "credential",
        "token",
        "scope",
        "prefix",
        "audience",
        "resource",
        "oauth2-server-uri",
        "py-io-impl",
        "py-catalog-impl",
        "echo",
        "pool_pre_ping",
        "init_catalog_tables",
        "schema_version",
        "s3.endpoint",
        "s3.access-key-id",
        "s3.secret-access-key",
        "s3.session-token",
        "s3.region",
        "s3.proxy-uri",
        "s3.connect-timeout",
        "s3.force-virtual-addressing",
        "gcs.project-id",
        "gcs.oauth2.token",
        "adls.account-name",
        "adls.account-key",
        "adls.sas-token",
        "adls.connection-string",
        "glue.region",
        "glue.id",
        "glue.profile-name",
        "client.region",
        "client.access-key-id",
        "client.secret-access-key",
    }
)
#: Misspellings too short for a similarity match to catch.
_ALIASES = {"url": "uri", "path": "warehouse", "location": "warehouse", "catalog-type": "type"}
#: Catalog types whose tables go under ``warehouse`` unless each table is given a location.
_NEEDS_WAREHOUSE = frozenset({"sql"})
#: Attempts at opening a catalog while another process creates its tables (first use).
_OPEN_ATTEMPTS = 6
#: One catalog opened at a time in this process: two threads on a fresh SQLite file race too.
_OPEN_LOCK = threading.Lock()
_EXAMPLE = (
    "e.g. {'type': 'sql', 'uri': 'sqlite:////data/iceberg/catalog.db', "
    "'warehouse': 'file:///data/iceberg/warehouse'} or {'type': 'rest', 'uri': 'https://...'}"
)


def pyiceberg_modules() -> Any:
    """The ``pyiceberg`` package with the submodules the provider uses, or a clear error."""
    try:
        import pyiceberg.catalog
        import pyiceberg.exceptions
        import pyiceberg.expressions
    except ImportError as exc:  # pragma: no cover - the dev install has it
        raise KtExportConfigError(
            "Iceberg destinations need pyiceberg: pip install 'airflow-provider-ktexport[iceberg]'"
        ) from exc
    return pyiceberg


def redact_uri(uri: str) -> str:
    """``uri`` without a password (``postgresql://user:***@host/db``), for messages."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparsable uri>"
    if parts.password is None:
        return uri
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _catalog_type(properties: Mapping[str, Any]) -> str:
    """The catalog type as pyiceberg would infer it (``sql`` for a sqlite/postgresql ``uri``)."""
    given = str(properties.get("type") or "").lower()
    if given:
        return given
    uri = str(properties.get("uri") or "")
    if uri.startswith(("sqlite", "postgresql", "mysql")):
        return "sql"
    return "rest" if uri.startswith("http") else ""


def check_properties(name: str, properties: Mapping[str, Any]) -> None:
    """Refuse what is wrong without opening anything: a mistyped key, a SQL catalog without
    ``uri`` or ``warehouse``."""
    for key in properties:
        if key in _KNOWN_PROPERTIES or not isinstance(key, str):
            continue
        guess = _ALIASES.get(key.lower()) or next(
            iter(difflib.get_close_matches(key.lower(), _KNOWN_PROPERTIES, n=1, cutoff=0.8)), None
        )
        if guess is not None and guess not in properties:
            raise KtExportConfigError(
                f"Iceberg catalog {name!r}: {key!r} is not a catalog property; did you mean {guess!r}? "
                "Fix the key in catalog_properties (or in the catalog connection's extras)."
            )
    kind = _catalog_type(properties)
    if kind in _NEEDS_WAREHOUSE:
        for needed, what in (
            ("uri", "the catalog database, e.g. 'sqlite:////data/iceberg/catalog.db'"),
            ("warehouse", "where table files go, e.g. 'file:///data/iceberg/warehouse' or 's3://bucket/wh'"),
        ):
            if not properties.get(needed):
                raise KtExportConfigError(
                    f"Iceberg catalog {name!r} (type {kind!r}) needs the property {needed!r}: {what}. "
                    "Add it to catalog_properties (or to the catalog connection's extras)."
                )


def _open_errors(pyiceberg: Any) -> tuple[type[BaseException], ...]:
    """What opening a catalog raises when its settings or its server are wrong."""
    errors: list[type[BaseException]] = [
        OSError,
        ValueError,
        TypeError,
        ImportError,  # the catalog's driver (psycopg2, boto3...) is not installed
        pyiceberg.exceptions.NotInstalledError,
        pyiceberg.exceptions.NoSuchPropertyException,
        pyiceberg.exceptions.RESTError,
    ]
    try:
        import requests

        errors.append(requests.RequestException)
    except ImportError:  # pragma: no cover - pyiceberg depends on requests
        pass
    return tuple(errors)


def _race_errors() -> tuple[type[BaseException], ...]:
    """What a SQL catalog raises while another process creates its tables on first use."""
    try:
        from sqlalchemy.exc import IntegrityError, OperationalError
    except ImportError:  # a catalog without sqlalchemy has no such race
        return ()
    return (OperationalError, IntegrityError)


def load_catalog(name: str, properties: Mapping[str, Any]) -> Any:
    """A pyiceberg catalog from its properties (``type``/``uri``/``warehouse``...), or a
    :class:`KtExportConfigError` naming the property and what to do.

    Two drains starting together on a fresh SQLite catalog both create its tables; the loser's
    ``table ... already exists`` is retried (the tables are there by then).
    """
    pyiceberg = pyiceberg_modules()
    check_properties(name, properties)
    props = {k: str(v) for k, v in properties.items()}
    race = _race_errors()
    uri = redact_uri(props.get("uri", ""))
    for attempt in range(1, _OPEN_ATTEMPTS + 1):
        try:
            with _OPEN_LOCK:
                return pyiceberg.catalog.load_catalog(name, **props)
        except race as exc:
            if attempt == _OPEN_ATTEMPTS:
                raise _unreachable(name, uri, exc) from None
            log.info("Iceberg catalog %r is being set up by another writer (%s); retrying", name, exc)
            time.sleep(0.2 * attempt)
        except _open_errors(pyiceberg) as exc:
            raise _unreachable(name, uri, exc) from None
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _unreachable(name: str, uri: str, exc: BaseException) -> KtExportConfigError:
    cause = str(exc).splitlines()[0] if str(exc) else ""
    return KtExportConfigError(
        f"Could not open the Iceberg catalog {name!r} at uri {uri!r} ({type(exc).__name__}: {cause}). "
        f"Check 'type', 'uri' and the credentials in catalog_properties, {_EXAMPLE}."
    )


def check_warehouse_writable(catalog: Any, location: str | None = None) -> None:
    """Write and delete a small file in the catalog's ``warehouse`` (or ``location``), so a warehouse
    that cannot take files fails the run before its first lease, not at its first commit.

    A warehouse that is not a path or URL (a REST catalog's warehouse *name*) is the server's
    business and is not probed.
    """
    base = location or str(catalog.properties.get("warehouse") or "")
    if "://" not in base and not base.startswith("/"):
        return
    from pyiceberg.io import load_file_io

    probe = f"{base.rstrip('/')}/.ktexport-probe-{uuid.uuid4().hex}"
    try:
        io = load_file_io(properties=catalog.properties, location=probe)
        with io.new_output(probe).create(overwrite=True) as out:
            out.write(b"ktexport warehouse probe\n")
        io.delete(probe)
    except Exception as exc:  # noqa: BLE001 - every failure here means the same: fix the warehouse
        cause = str(exc).splitlines()[0] if str(exc) else ""
        raise KtExportConfigError(
            f"The Iceberg warehouse {redact_uri(base)!r} of catalog {catalog.name!r} does not take files "
            f"({type(exc).__name__}: {cause}). Check 'warehouse' (a folder or bucket this worker may "
            "write) and the storage credentials (s3.*, gcs.*, adls.*) in catalog_properties."
        ) from None


def wants_version_hint(catalog: Any) -> bool:
    """Whether the catalog's tables need ``version-hint.text`` written for them: a SQL catalog keeps
    the current ``metadata.json`` in its database only, so an engine given a table's folder (DuckDB's
    ``iceberg_scan``) cannot find it. Other catalogs own their tables' folders."""
    from pyiceberg.catalog.sql import SqlCatalog

    return isinstance(catalog, SqlCatalog)


def write_version_hint(table: Any) -> None:
    """Write ``<table>/metadata/version-hint.text`` naming the table's current ``metadata.json``
    (its name without ``.metadata.json``, the form DuckDB and pyiceberg's ``StaticTable`` read).

    A hint, not a commit: a failure is logged, never raised (the commit it follows stands), and
    two writers racing may leave the previous version named until the next commit.
    """
    location = str(table.metadata_location)
    folder, _, name = location.rpartition("/")
    hint = f"{folder}/version-hint.text"
    try:
        with table.io.new_output(hint).create(overwrite=True) as out:
            out.write(name.removesuffix(".metadata.json").encode())
    except Exception as exc:  # noqa: BLE001 - readers fall back to the catalog or an explicit path
        log.warning("Could not write %s (%s: %s)", redact_uri(hint), type(exc).__name__, exc)
