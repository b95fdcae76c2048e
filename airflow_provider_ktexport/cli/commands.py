"""``ktexport drain`` and ``ktexport probe``: the operator's engine, driven from a shell.

The drain is built as the operators build it (:mod:`airflow_provider_ktexport.destinations`, the
pool sized by ``connections_needed``), so the same guarantees hold: the destination is proven
before the first lease, every file is verified, and a batch is acknowledged only once its records
have landed. Without Airflow, the lake's filesystem comes from fsspec and the environment's
credentials instead of an Airflow connection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_ktexport.cli import EXIT_INTERRUPTED
from airflow_provider_ktexport.cli.options import client_settings, drain_config, pairs
from airflow_provider_ktexport.destinations import open_iceberg_sink, open_parquet_lake
from airflow_provider_ktexport.drain import Drain
from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.lake.sinks import Sink
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.transport.sync_client import KtExportClient

__all__ = ["open_destination", "run_drain", "run_probe", "stop_on_signals"]

log = logging.getLogger("airflow_provider_ktexport.cli")

#: Object stores whose URL's user part is an Airflow connection id in ``ObjectStoragePath`` (for
#: Azure, ``container@account`` is the store's own syntax).
_CONN_ID_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs"})


def run_drain(args: argparse.Namespace) -> int:
    """Drain into the destination until the queue is empty or ``--max-runtime``; print the summary."""
    config = drain_config(args)
    settings = client_settings(args, max_in_flight=config.max_in_flight)
    _refuse_parquet_options(args)
    sink, uri = open_destination(args)
    stop = threading.Event()
    log.info("Draining %s into %s", settings.base_url, uri)
    with KtExportClient.from_settings(settings) as client, stop_on_signals(stop):
        result = Drain(client, sink, config, should_stop=stop.is_set).run()
    _print_json({**result.summary(), "destination": uri})
    return EXIT_INTERRUPTED if stop.is_set() else 0


def run_probe(args: argparse.Namespace) -> int:
    """Check the URL and key without leasing (and prove the destination, when one is given)."""
    settings = client_settings(args)
    report: dict[str, Any] = {"ok": True, "url": settings.base_url, "auth_location": settings.auth_location}
    with KtExportClient.from_settings(settings) as client:
        client.check()
    if args.dest or args.iceberg_catalog:
        sink, uri = open_destination(args)
        try:
            sink.prove_writable()
        finally:
            if not isinstance(sink, LakeWriter):  # a bare writer holds nothing to close
                sink.close()
        report["destination"] = uri
    _print_json(report)
    return 0


def open_destination(args: argparse.Namespace) -> tuple[LakeWriter | Sink, str]:
    """The sink of ``--dest`` (a Parquet lake) or ``--iceberg-catalog`` (tables), and its URI."""
    if bool(args.dest) == bool(args.iceberg_catalog):
        raise KtExportConfigError(
            "give the destination as exactly one of --dest URL (a Parquet lake) or --iceberg-catalog NAME "
            "(Iceberg tables, with --iceberg-property KEY=VALUE)"
        )
    if args.iceberg_catalog:
        return open_iceberg_sink(
            args.iceberg_catalog,
            pairs(args.iceberg_property, "--iceberg-property"),
            args.namespace,
            table_properties=pairs(args.table_property, "--table-property") or None,
        )
    return parquet_lake(
        args.dest,
        pairs(args.storage_option, "--storage-option", as_json=True),
        compression=getattr(args, "compression", None),
    )


def parquet_lake(
    url: str, storage_options: dict[str, Any], *, compression: str | None
) -> tuple[LakeWriter, str]:
    """A lake writer on ``url`` through fsspec, its credentials from the environment or the options."""
    import fsspec.core

    scheme, _, rest = url.partition("://")
    if rest and scheme.lower() in _CONN_ID_SCHEMES and "@" in urlsplit(url).netloc:
        raise KtExportConfigError(
            f"--dest {url} names an Airflow connection (the part before '@'), which the ktexport command "
            f"does not read: write {scheme}://<bucket>/<path> and give credentials through the environment "
            "(AWS_ACCESS_KEY_ID/AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) or --storage-option"
        )
    try:
        fs, path = fsspec.core.url_to_fs(url, **storage_options)
    except ImportError as exc:
        raise KtExportConfigError(
            f"--dest {url} needs a filesystem package that is not installed ({exc}): install it "
            "(s3fs, gcsfs or adlfs)"
        ) from None
    except (ValueError, TypeError) as exc:
        raise KtExportConfigError(
            f"--dest {url} cannot be opened ({type(exc).__name__}: {exc}): check the URL and --storage-option"
        ) from None
    return open_parquet_lake(fs, path, **({"compression": compression} if compression else {}))


def _refuse_parquet_options(args: argparse.Namespace) -> None:
    if args.iceberg_catalog and (args.partition_by or args.compression):
        raise KtExportConfigError(
            "--partition-by and --compression are for a Parquet lake (--dest): Iceberg tables are "
            "<namespace>.<record type>, partitioned by _event_date"
        )


def _print_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C (or SIGTERM) stops leasing and lands what is held while its leases leave
    time, as the operator's ``on_kill`` does; a second one abandons the held batches at once
    (unacknowledged: the server delivers them again)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning(
            "%s: no new leases; landing and acknowledging what is held (again to abandon it: the server "
            "delivers unacknowledged batches again)",
            signal.Signals(signum).name,
        )

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
