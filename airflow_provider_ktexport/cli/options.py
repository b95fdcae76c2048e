"""The ``ktexport`` command's arguments, and what they build: client settings and a drain config.

Defaults are not repeated here: an option left out is left out of :func:`build_client_settings`
and :class:`DrainConfig` too, so the command drains exactly as the operator does by default.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import MISSING, fields
from typing import Any

from airflow_provider_ktexport.api.settings import ClientSettings, build_client_settings, option_defaults
from airflow_provider_ktexport.drain import PARTITION_KEYS, DrainConfig, connections_needed
from airflow_provider_ktexport.exceptions import KtExportConfigError

__all__ = ["build_parser", "client_settings", "drain_config", "key_from_env", "pairs"]

#: Levels of ``--log-level``: the drain's progress lines are INFO.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Where the API key is read from unless ``--key-env`` names another variable.
DEFAULT_KEY_ENV = "KTEXPORT_KEY"

#: Client options: (flag, build_client_settings argument, type, help).
_CLIENT_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--long-poll-seconds", "long_poll_seconds", float, "how long the server holds an empty GET"),
    ("--connect-timeout", "connect_timeout", float, "seconds to open a connection"),
    ("--read-timeout", "read_timeout", float, "seconds between bytes (default: long poll + 30)"),
    ("--max-retries", "max_retries", int, "retries of a transient failure: 429, 5xx, reset"),
    ("--max-body-bytes", "max_body_bytes", int, "largest body once gzip is undone"),
)

#: Drain options: (flag, DrainConfig field, type, help). Defaults are DrainConfig's.
_DRAIN_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("--max-runtime", "max_runtime", float, "stop leasing after this many seconds, then land what is held"),
    ("--flush-records", "flush_records", int, "flush when this many records are held"),
    ("--flush-seconds", "flush_seconds", float, "flush when the oldest lease is this old"),
    ("--lease-seconds", "lease_seconds", float, "the server's lease (120 s on the real API)"),
    ("--max-in-flight", "max_in_flight", int, "GETs kept outstanding while earlier batches are written"),
    ("--write-concurrency", "write_concurrency", int, "files written at once (64 object store, 8 disk)"),
    (
        "--max-flush-partitions",
        "max_flush_partitions",
        int,
        "flush early once this many files would be written",
    ),
    ("--max-reject-share", "max_reject_share", float, "fail when a flush rejects more than this share"),
    (
        "--ack-quarantined-after",
        "ack_quarantined_after",
        int,
        "sightings before --ack-quarantined acks a body",
    ),
    (
        "--redelivery-window",
        "redelivery_window",
        float,
        "seconds a flush not all acknowledged is remembered, so its redelivery lands once",
    ),
    ("--source", "source", str, "the rows' _source (the operator writes its connection id)"),
)


def _default(name: str) -> Any:
    """DrainConfig's default of ``name``, for help texts (the one home of the defaults)."""
    for f in fields(DrainConfig):
        if f.name == name:
            return None if f.default is MISSING else f.default
    raise KeyError(name)


def _metavar(dest: str, kind: Any) -> str:
    if dest.endswith(("seconds", "timeout", "runtime")):
        return "SECONDS"
    return {int: "N", float: "SHARE"}.get(kind, "NAME")


def build_parser() -> argparse.ArgumentParser:
    """``ktexport drain`` and ``ktexport probe``; see docs/cli.md."""
    parser = argparse.ArgumentParser(
        prog="ktexport",
        description="Drain a Key Telematics HTTP Export Task queue into a lake, or check a connection, "
        "without Airflow. The API key is read from an environment variable, never from an argument.",
    )
    parser.add_argument(
        "--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO", help="progress on stderr (INFO)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{drain,probe}")
    drain = commands.add_parser(
        "drain",
        help="lease batches, land them, acknowledge what landed; prints the summary as JSON",
        description="Lease batches, land them in the lake (verified Parquet files or Iceberg commits), "
        "and acknowledge only what landed. Progress goes to stderr, the summary (JSON) to stdout.",
    )
    probe = commands.add_parser(
        "probe",
        help="check the URL and key without leasing (and a destination, when given)",
        description="Check that the export API answers and accepts the key, without leasing anything "
        "(a DELETE of a random id). With a destination, also prove it takes files.",
    )
    for sub in (drain, probe):
        # Also after the command (ktexport drain --log-level DEBUG); the top level's default stands.
        sub.add_argument(
            "--log-level",
            type=str.upper,
            choices=LOG_LEVELS,
            default=argparse.SUPPRESS,
            help="progress on stderr",
        )
        _add_connection(sub)
        _add_destination(sub)
    _add_drain(drain)
    return parser


def _add_connection(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("export API")
    group.add_argument("--url", required=True, help="base URL, e.g. https://export.us1.kt1.io")
    group.add_argument(
        "--key-env",
        default=DEFAULT_KEY_ENV,
        metavar="NAME",
        help=f"environment variable holding the API key (default {DEFAULT_KEY_ENV})",
    )
    group.add_argument("--auth-location", choices=("header", "query"), help="send the key as (header)")
    group.add_argument("--ca-bundle", metavar="PATH", help="PEM file of CA certificates to trust")
    group.add_argument("--insecure", action="store_true", help="do not verify TLS (a test server only)")
    defaults = option_defaults()
    for flag, dest, kind, text in _CLIENT_OPTIONS:
        default = defaults[dest]
        text += f" (default {default})" if default is not None else ""
        group.add_argument(flag, dest=dest, type=kind, metavar=_metavar(dest, kind), help=text)


def _add_destination(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("destination (one of --dest or --iceberg-catalog)")
    group.add_argument(
        "--dest",
        metavar="URL",
        help="lake root: a path, file:///..., s3://bucket/path, gs://bucket/path, abfs://container@account/path",
    )
    _add_pairs(
        group,
        "--storage-option",
        "fsspec option of the filesystem, e.g. endpoint_url=http://localhost:9000 (V read as JSON if it "
        "parses); credentials belong in the environment (AWS_ACCESS_KEY_ID, ...)",
    )
    group.add_argument("--iceberg-catalog", metavar="NAME", help="land in Iceberg tables of this catalog")
    _add_pairs(
        group,
        "--iceberg-property",
        "catalog property, e.g. type=sql, uri=sqlite:////data/catalog.db, warehouse=file:///data/wh; "
        "secrets belong in PYICEBERG_CATALOG__<NAME>__<KEY> variables",
    )
    group.add_argument("--namespace", default="ktexport", help="the tables' namespace (default ktexport)")
    _add_pairs(group, "--table-property", "Iceberg table property, over the provider's defaults")


def _add_pairs(group: Any, flag: str, text: str) -> None:
    """A repeatable ``K=V`` option (read with :func:`pairs`)."""
    group.add_argument(flag, action="append", default=[], metavar="K=V", help=text)


def _add_drain(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("drain (defaults as the operator's)")
    for flag, dest, kind, text in _DRAIN_OPTIONS:
        group.add_argument(
            flag,
            dest=dest,
            type=kind,
            metavar=_metavar(dest, kind),
            help=f"{text} (default {_default(dest)})",
        )
    group.add_argument(
        "--keep-polling",
        action="store_true",
        help="poll on through empty answers until --max-runtime (default: stop at the first empty answer)",
    )
    group.add_argument(
        "--partition-by",
        help=f"comma-separated keys from {','.join(PARTITION_KEYS)} (default "
        f"{','.join(_default('partition_by'))}; Parquet only)",
    )
    group.add_argument("--compression", help="Parquet compression codec (default zstd; Parquet only)")
    group.add_argument("--include-raw", action="store_true", help="add a _raw column with each record's JSON")
    group.add_argument(
        "--ack-quarantined",
        action="store_true",
        help="acknowledge an undecodable body once stored and seen --ack-quarantined-after times",
    )


def pairs(values: list[str], flag: str, *, as_json: bool = False) -> dict[str, Any]:
    """``K=V`` arguments as a dict; with ``as_json`` a value that parses as JSON is taken as such
    (``anon=true``, ``client_kwargs={"region_name": "eu-west-1"}``), any other is text."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise KtExportConfigError(
                f"{flag} {item!r} is not KEY=VALUE: write it e.g. {flag} region=eu-west-1"
            )
        out[key.strip()] = _json_or_text(value) if as_json else value
    return out


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def key_from_env(name: str) -> str:
    """The API key from environment variable ``name`` (never from an argument: ``ps`` shows those)."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        raise KtExportConfigError(
            f"environment variable {name} holds no API key: set it (export {name}=<the export task's key>) "
            "or name the variable that does with --key-env"
        )
    return value


def client_settings(args: argparse.Namespace, *, max_in_flight: int | None = None) -> ClientSettings:
    """The client's validated settings from the options; the key from the environment.

    The pool holds one keep-alive connection per outstanding GET and concurrent ack, as the
    operator's does: a smaller one makes urllib3 discard connections ("Connection pool is full").
    """
    options: dict[str, Any] = {dest: getattr(args, dest) for _, dest, _, _ in _CLIENT_OPTIONS}
    options = {k: v for k, v in options.items() if v is not None}
    if args.auth_location:
        options["auth_location"] = args.auth_location
    if args.insecure and args.ca_bundle:
        raise KtExportConfigError("--insecure and --ca-bundle contradict each other: keep one")
    if args.insecure or args.ca_bundle:
        options["verify"] = False if args.insecure else args.ca_bundle
    in_flight = max_in_flight if max_in_flight is not None else _default("max_in_flight")
    return build_client_settings(
        args.url,
        key_from_env(args.key_env),
        conn_label=f"the export API at {args.url} (key from ${args.key_env})",
        pool_size=connections_needed(in_flight),
        **options,
    )


def drain_config(args: argparse.Namespace) -> DrainConfig:
    """The drain's validated settings; an option left out keeps DrainConfig's default."""
    given: dict[str, Any] = {dest: getattr(args, dest) for _, dest, _, _ in _DRAIN_OPTIONS}
    given = {k: v for k, v in given.items() if v is not None}
    if args.keep_polling:
        given["stop_when_empty"] = False
    if args.include_raw:
        given["include_raw"] = True
    if args.ack_quarantined:
        given["ack_quarantined"] = True
    if args.partition_by:
        given["partition_by"] = tuple(k.strip() for k in args.partition_by.split(",") if k.strip())
    return DrainConfig(**given)
