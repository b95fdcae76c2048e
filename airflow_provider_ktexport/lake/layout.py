"""The lake's layout, in one place: its paths, the folders it reserves, its meta columns, the event
day, and how a record type becomes a folder and a table (docs/architecture.md, "The lake's layout").

Every writer, reader, sink, compaction and the Iceberg sink asks this module where things are and
what they are called, never re-derives it: a hive partition path is built by :func:`hive_path`
and parsed by :func:`parse_hive_path`; the event day is :func:`event_date` (the UTC day, for
Parquet folders and Iceberg's ``_event_date`` alike); the meta columns are the ``*_COLUMN``
constants; :class:`LakeRoot` joins paths under a root and spells their URIs.

A record's ``type`` is free text from the server, yet it names a hive partition folder
(``record_type=<folder>``, ``_rejected/record_type=<folder>``, the schema store's
:func:`schema_folder`) and an Iceberg table. :func:`record_type_folder` is the one rule for that, used by every writer, reader,
sink and compaction, so they all agree on where a type lives:

- valid UTF-8 whatever the text (a lone surrogate is percent-encoded, never written raw);
- at most :data:`MAX_NAME_BYTES` UTF-8 bytes (file systems refuse names past 255 bytes): a longer
  name is cut and gets a stable hash of the whole type, so two long types never share a folder;
- never a name the lake reserves: nothing starts with :data:`RESERVED_PREFIX` (``_rejected``,
  ``_quarantine``, ``_schema`` and the Iceberg tables of the same names);
- an ordinary type is its own folder and table (``telemetry``, ``trip``, ``event``...), and any
  name that is not cut decodes back to its type (percent escapes, as readers decode them).

The engine keys everything by the folder (a record type's schema, tables and counts), so the
folder, not the raw text, is what reaches a sink.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import unquote

import fsspec
import fsspec.core
import pyarrow as pa

from airflow_provider_ktexport.lake.folder_names import (
    MAX_NAME_BYTES,
    RESERVED_PREFIX,
    cut,
    escape,
    is_safe_folder_name,
    too_long,
)

__all__ = [
    "BATCH_ID_COLUMN",
    "EVENT_DATE_COLUMN",
    "EVENT_DATE_KEY",
    "EVENT_TIME_FIELDS",
    "FLUSH_DIR",
    "INGESTED_AT_COLUMN",
    "INGEST_DATE_KEY",
    "PARTITION_KEYS",
    "RAW_COLUMN",
    "RECORD_KEY_COLUMN",
    "RECORD_TYPE_KEY",
    "SOURCE_COLUMN",
    "TIMESTAMP",
    "UNKNOWN_DAY",
    "LakeRoot",
    "UnsafePartitionError",
    "dataset_dir",
    "event_date",
    "first_day",
    "event_day_value",
    "hive_path",
    "is_partition_segment",
    "parse_hive_path",
    "type_dir",
    "type_dir_folder",
    "utc_day",
    "MAX_NAME_BYTES",
    "PROBE_DIR",
    "QUARANTINE_DIR",
    "REJECTED_DIR",
    "RESERVED_PREFIX",
    "SCHEMA_DIR",
    "UNKNOWN_TYPE",
    "folder_table",
    "is_safe_folder_name",
    "record_type_folder",
    "record_type_of_folder",
    "record_type_table",
    "safe_folder_name",
    "schema_folder",
]

#: The schema store: ``_schema/<name>/<writer id>.json`` (see :func:`schema_folder`).
SCHEMA_DIR = "_schema"
#: The rejects table: ``_rejected/record_type=<folder>/ingest_date=<day>/`` (an Iceberg table too).
REJECTED_DIR = "_rejected"
#: Undecodable bodies (an Iceberg table too).
QUARANTINE_DIR = "_quarantine"
#: The flush ledger: ``_flushes/<source>/<flush id>.json``, one per flush still in doubt (:mod:`.ledger`).
FLUSH_DIR = "_flushes"
#: Where a drain writes, reads back and deletes a small probe file before its first lease.
PROBE_DIR = "_probe"
#: The folder of records without a usable ``type``.
UNKNOWN_TYPE = "unknown"

_PLAIN_TABLE = re.compile(r"^[a-z0-9][a-z0-9_]{0,99}$")


def safe_folder_name(value: object) -> str:
    """Any value as a folder name by the record type rule (used for writer ids too); ``None``
    and empty text become ``unknown``."""
    text = "" if value is None else str(value)
    if not text:
        return UNKNOWN_TYPE
    safe = escape(text)
    return cut(safe, text) if too_long(safe) else safe


def record_type_folder(record_type: object) -> str:
    """The folder name (the ``record_type=`` value) of a record type; see the module docstring.

    Unsafe characters (``/ \\ = % : * ? " < > | #``, control characters, lone surrogates, a
    leading ``.`` or ``_`` and a ``.`` after a ``.``) become ``%XX`` escapes of their UTF-8
    bytes, which DuckDB, pyarrow and Spark decode back; a non-string or empty type is
    ``unknown``; past 100 characters or :data:`MAX_NAME_BYTES` bytes the name is cut and ends in
    ``~`` plus 16 hex digits of the type's hash.
    """
    if type(record_type) is not str:
        return UNKNOWN_TYPE
    return _type_folder(record_type)


@functools.lru_cache(maxsize=4096)
def _type_folder(record_type: str) -> str:
    """:func:`safe_folder_name` of a type text, remembered: the buffer asks it of every record it
    holds and the escape loop runs in Python (a batch has a few types; the bound keeps a hostile
    spread of types from growing the cache)."""
    return safe_folder_name(record_type)


def schema_folder(folder: str) -> str:
    """The schema store's folder of a record type folder, relative to the lake root.

    ``_schema/`` plus the folder escaped once more by the same rule: every version has written it
    so (an ordinary type's folder escapes to itself), and keeping it keeps existing stores found.
    """
    return posixpath.join(SCHEMA_DIR, safe_folder_name(folder))


def record_type_of_folder(folder: str) -> str:
    """The record type a folder holds, as readers see it (escapes decoded; a cut name stays cut).

    A lone surrogate cannot be Arrow text: it reads back as U+FFFD, as DuckDB and pyarrow show it.
    """
    return unquote(folder)


def folder_table(folder: str) -> str:
    """The Iceberg table of a record type's folder: the folder itself when it is a plain lowercase
    name, else a lowercase spelling plus a short hash of the folder (two types never share one)."""
    if _PLAIN_TABLE.match(folder):
        return folder
    plain = re.sub(r"[^a-z0-9_]+", "_", folder.lower()).strip("_")[:60] or "type"
    return f"{plain}_{hashlib.blake2b(folder.encode('utf-8'), digest_size=4).hexdigest()}"


def record_type_table(record_type: object) -> str:
    """The Iceberg table of a record type (the table of its :func:`record_type_folder`)."""
    return folder_table(record_type_folder(record_type))


# -- partitions ------------------------------------------------------------------------------------

#: The hive partition keys (``<key>=<value>`` folders); a data column never takes one of these names.
RECORD_TYPE_KEY = "record_type"
EVENT_DATE_KEY = "event_date"
INGEST_DATE_KEY = "ingest_date"
PARTITION_KEYS = (RECORD_TYPE_KEY, EVENT_DATE_KEY, INGEST_DATE_KEY)


def is_partition_segment(segment: str) -> bool:
    """True for one ``<key>=<value>`` folder of this lake: a known key and a safe value."""
    key, sep, value = segment.partition("=")
    return bool(sep) and key in PARTITION_KEYS and is_safe_folder_name(value)


class UnsafePartitionError(ValueError):
    """A partition key or value that is no safe folder name (it could point outside the lake)."""

    def __init__(self, key: str, value: str) -> None:
        self.key = key
        self.value = value
        super().__init__(
            f"partition {key}={value!r}: the value is not sanitised (it could point outside the lake)"
        )


def hive_path(partition: Mapping[str, str], area: str = "") -> str:
    """``[<area>/]k=v/...`` relative to the lake root: where the files of ``partition`` live.

    :raises UnsafePartitionError: a key or value is not a safe folder name
    """
    parts = [area] if area else []
    for key, value in partition.items():
        if not (is_safe_folder_name(key) and is_safe_folder_name(value)):
            raise UnsafePartitionError(key, value)
        parts.append(f"{key}={value}")
    return posixpath.join(*parts) if parts else ""


def parse_hive_path(rel_dir: str) -> dict[str, str]:
    """The partition of a folder relative to the root (or to an area), values as stored (escaped).

    Segments without ``=`` (an area such as ``_rejected``) are skipped.
    """
    segments = rel_dir.strip("/").split("/")
    return {k: v for k, sep, v in (s.partition("=") for s in segments) if sep}


def type_dir(folder: str) -> str:
    """The folder of a record type's data, relative to the root: ``record_type=<folder>``."""
    return f"{RECORD_TYPE_KEY}={folder}"


def type_dir_folder(path: str) -> str | None:
    """The record type folder of a ``.../record_type=<folder>`` directory, None for any other."""
    key, sep, value = posixpath.basename(path.rstrip("/")).partition("=")
    return value if sep and key == RECORD_TYPE_KEY else None


def dataset_dir(partition: Mapping[str, str], area: str = "") -> str:
    """The folder a partition's files belong to as a dataset (lineage), relative to the root: its
    record type's folder when the record type is the first partition key, else the root (or the
    area's folder, e.g. ``_rejected``)."""
    first = next(iter(partition.items()), None)
    if area:
        return area
    if first is not None and first[0] == RECORD_TYPE_KEY:
        return type_dir(first[1])
    return ""


# -- meta columns ----------------------------------------------------------------------------------

#: The UTC timestamp type of every time column the lake writes (microseconds, zone UTC).
TIMESTAMP = pa.timestamp("us", tz="UTC")
RECORD_KEY_COLUMN = "_record_key"
BATCH_ID_COLUMN = "_batch_id"
INGESTED_AT_COLUMN = "_ingested_at"
SOURCE_COLUMN = "_source"
RAW_COLUMN = "_raw"
#: Iceberg tables keep the event day as this column (the Parquet lake keeps it in its path).
EVENT_DATE_COLUMN = "_event_date"


# -- the event day ---------------------------------------------------------------------------------

#: The fields whose first parsable value gives a record's event day, in order.
EVENT_TIME_FIELDS = ("date", "eventDate", "dateEnd", "received")
#: The event day of a record without a parsable time.
UNKNOWN_DAY = "unknown"
# event_date is a partition choice, not a stored value: it also takes a bare date, or a time
# without zone (read as UTC).
_ISO_LOOSE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$"
)


def parse_time(value: object) -> datetime | None:
    """A time text as an aware UTC datetime (no zone: read as UTC), None when it does not parse."""
    if type(value) is not str or not _ISO_LOOSE.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: the UTC instant is outside years 1-9999
        return None


#: A UTC time text whose day is its first ten characters once they are a real date: the shape the
#: API sends (``2026-11-25T10:00:00Z``, ``.123Z``). Every text it matches passes ``_ISO_LOOSE`` and
#: ``fromisoformat`` when its date is real (the time's fields are in range here), and a ``Z``
#: needs no conversion, so :func:`utc_day` takes the day without building a datetime.
_UTC_Z = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?Z"
)


@functools.lru_cache(maxsize=4096)
def _real_day(text: str) -> bool:
    """Whether ``YYYY-MM-DD`` is a real date from year 1000 on (remembered: a flush has a few days;
    the bound keeps a hostile spread of dates from growing the cache)."""
    try:
        return date.fromisoformat(text).year >= 1000
    except ValueError:
        return False


def utc_day(value: object) -> str | None:
    """The UTC day ``YYYY-MM-DD`` of a time text (its offset applied), None when it does not parse."""
    if type(value) is str and (m := _UTC_Z.fullmatch(value)) is not None and _real_day(day := m[1]):
        return day  # the buffer asks this of every record it holds: 0.3 us instead of 2 us
    parsed = parse_time(value)
    if parsed is None:
        return None
    # isoformat costs a seventh of strftime and writes the same day from year 1000 on; strftime,
    # the rule since the first version, writes earlier years without zero padding.
    return parsed.date().isoformat() if parsed.year >= 1000 else parsed.strftime("%Y-%m-%d")


def event_date(record: Mapping[str, Any]) -> str:
    """UTC day ``YYYY-MM-DD`` of the first of date, eventDate, dateEnd, received that parses; else
    ``unknown``.

    Never the ingestion day: a redelivered copy lands in the same partition as the first. The one
    rule for the ``event_date`` folder, the buffer's file count and Iceberg's ``_event_date``.
    """
    return first_day(record.get(name) for name in EVENT_TIME_FIELDS)


def first_day(times: Iterable[object]) -> str:
    """:func:`utc_day` of the first of ``times`` that parses (the values of :data:`EVENT_TIME_FIELDS`,
    in that order), else ``unknown``: :func:`event_date` of a record read field by field."""
    for value in times:
        day = utc_day(value)
        if day is not None:
            return day
    return UNKNOWN_DAY


def event_day_value(day: str | None) -> date | None:
    """An ``event_date`` partition value as a date (Iceberg's ``_event_date``); None for ``unknown``."""
    if not day or day == UNKNOWN_DAY or len(day) != 10:
        return None
    try:
        return date.fromisoformat(day)
    except ValueError:
        return None


# -- a lake root -----------------------------------------------------------------------------------


class LakeRoot:
    """A lake's root on a filesystem: joins paths under it and spells their user-facing URIs.

    What writers, readers and compaction share of a lake; it holds no state beyond its names.

    :param fs: the filesystem (``ObjectStoragePath.fs``, ``s3fs.S3FileSystem``, local, ...)
    :param root: the lake root on ``fs`` (protocol optional)
    :param uri_prefix: user-facing URL of ``root``; URIs are this plus the relative path
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, uri_prefix: str | None = None) -> None:
        self.fs = fs
        self.root = fs._strip_protocol(root).rstrip("/") or "/"
        self.uri_prefix = uri_prefix

    def __repr__(self) -> str:
        return f"LakeRoot({self.root!r})"

    @classmethod
    def open(cls, fs_or_url: fsspec.AbstractFileSystem | str, root: str | None = None) -> LakeRoot:
        """A lake given as a filesystem and root, or as a URL (``s3://bucket/lake``)."""
        if isinstance(fs_or_url, str):
            fs, url_root = fsspec.core.url_to_fs(fs_or_url)
            root = url_root if root is None else root
        else:
            fs = fs_or_url
        if root is None:
            raise ValueError("reading a lake needs its root when given a filesystem")
        return cls(fs, root)

    def join(self, *parts: str) -> str:
        """A path under the root."""
        return posixpath.join(self.root, *[p for p in parts if p])

    def relative(self, path: str) -> str:
        """``path`` relative to the root."""
        return path[len(self.root) :].strip("/")

    def uri_of(self, path: str) -> str:
        """The user-facing URI of a path under the root."""
        if self.uri_prefix is not None:
            return self.uri_prefix.rstrip("/") + "/" + path[len(self.root) :].lstrip("/")
        return self.fs.unstrip_protocol(path)

    def schema_dir(self, folder: str) -> str:
        """The schema store folder of a record type folder (:func:`schema_folder`)."""
        return self.join(schema_folder(folder))

    def quarantine_file(self, digest: str, suffix: str) -> str:
        """``_quarantine/<digest><suffix>``: a quarantined body (``.body``), its sidecar or counter."""
        return self.join(QUARANTINE_DIR, f"{digest}{suffix}")
