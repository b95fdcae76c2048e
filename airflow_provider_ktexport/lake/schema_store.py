"""The schema store: each record type's published columns, fixed once published (docs/schema-mapping.md).

``_schema/<type>/columns/<digest of the lower-cased name>.json`` publishes each column's name, key
path and type the first time any writer writes it; from then on they are fixed. A column file is
only ever created if absent (exclusive link locally, a conditional PUT on object stores:
:meth:`.atomic.AtomicStore.create`), so of writers adding one column at once exactly one decides
it, and the others fit their rows to it before they write a data file. Readers and compaction
read the store through the same class, without a writer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import posixpath
import time
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec
import pyarrow as pa

from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.atomic import AtomicStore
from airflow_provider_ktexport.lake.layout import LakeRoot
from airflow_provider_ktexport.lake.naming import (
    TAG_SEP,
    NameAssigner,
    assign_name,
    case_tagged,
    field_path,
    variant_tag,
)
from airflow_provider_ktexport.lake.variants import fit_table, is_meta_column, needs_fit

__all__ = ["COLUMNS_DIR", "SchemaStore", "column_file"]

log = logging.getLogger(__name__)

#: Store format 3: one immutable file per column, created only if absent. Files of formats 1 and
#: 2 (earlier versions: one file per writer) still count, after every format-3 entry.
_STORE_FORMAT = 3
#: Where format-3 column files live, under ``_schema/<type>/``.
COLUMNS_DIR = "columns"
#: Rounds of publishing before a write gives up (each round only adds twins or variants).
_SETTLE_ROUNDS = 6


@dataclass(frozen=True)
class _Entry:
    """One published column: its field (this version's name) and when, by whom, in which format."""

    field: pa.Field
    first_seen: float
    writer_id: str
    format: int

    def rank(self) -> tuple[int, float, str]:
        return (-self.format, self.first_seen, self.writer_id)


def column_file(name: str) -> str:
    """The store file of a column: a digest of its lower-cased name.

    Two names that differ by case alone share one file, so of two case twins published at once
    exactly one can take a name; the other takes the next twin name (``naming.assign_name``).
    """
    return hashlib.sha256(name.lower().encode("utf-8", "surrogatepass")).hexdigest()[:40] + ".json"


def _column_to_json(entry: _Entry) -> bytes:
    f = entry.field
    doc = {
        "format": entry.format,
        "name": f.name,
        # Readable summary for humans; the serialized field (with its key path) is authoritative.
        "type": str(f.type),
        "writer_id": entry.writer_id,
        "published": entry.first_seen,
        "arrow_schema": base64.b64encode(pa.schema([f]).serialize().to_pybytes()).decode("ascii"),
    }
    # The bytes json.dumps(doc, indent=1, ensure_ascii=False) gives, from C: json's indenting
    # encoder runs in Python (0.2 ms a column, 40 columns per new record type).
    return msgspec.json.format(msgspec.json.encode(doc), indent=1)


def _column_from_json(data: bytes) -> _Entry:
    doc = json.loads(data)
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["arrow_schema"])))
    return _Entry(schema.field(0), float(doc["published"]), str(doc["writer_id"]), int(doc["format"]))


def _legacy_entries(data: bytes, default_writer: str) -> list[_Entry]:
    """The columns of a per-writer schema file of an earlier version (formats 1 and 2)."""
    doc = json.loads(data)
    schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(doc["arrow_schema"])))
    fmt = int(doc.get("format", 1))
    first_seen = doc.get("first_seen") or {}
    writer_id = str(doc.get("writer_id") or default_writer)
    out = []
    for f in schema:
        if pa.types.is_null(f.type):  # earlier versions published Null-typed columns: no type yet
            continue
        seen = float(first_seen.get(f.name, float("inf")))
        out.append(_Entry(f, seen, writer_id, fmt))
    return out


def _name_legacy(columns: dict[str, _Entry], legacy: list[_Entry]) -> None:
    """Add the legacy entries no column file publishes, named by this version's rule, to ``columns``.

    As :func:`.naming.legacy_renames` does for a table: names without a case tag first, then
    best-ranked first; a name whose plain spelling is taken ignoring case gets a twin name. Every
    writer reading the same files names them alike.
    """
    by_path: dict[tuple[tuple[str, ...], str | None], _Entry] = {}
    for e in sorted(legacy, key=lambda e: (case_tagged(e.field.name), e.rank())):
        key = (field_path(e.field), variant_tag(e.field.name))
        if is_meta_column(e.field.name):
            key = ((e.field.name,), None)
        by_path.setdefault(key, e)
    # Base columns first (a variant's name follows its column's).
    order = {key: i for i, key in enumerate(by_path)}
    for (path, tag), e in sorted(by_path.items(), key=lambda kv: (kv[0][1] is not None, order[kv[0]])):
        if is_meta_column(e.field.name):
            name = e.field.name
        else:
            base = assign_name(path, columns)
            name = base if tag is None else f"{base}{TAG_SEP}{tag}"
        if name not in columns:
            columns[name] = _Entry(e.field.with_name(name), e.first_seen, e.writer_id, e.format)


def _best_by_name(entries: list[_Entry]) -> dict[str, _Entry]:
    """The best-ranked entry of each column name."""
    columns: dict[str, _Entry] = {}
    for entry in entries:
        have = columns.get(entry.field.name)
        if have is None or entry.rank() < have.rank():
            columns[entry.field.name] = entry
    return columns


class SchemaStore:
    """A lake's schema store: reads each record type's published schema, and publishes new columns.

    :param lake: the lake's root
    :param atomic: how files are created (None for a reader, which never publishes)
    :param writer_id: recorded in the column files this store publishes
    """

    def __init__(self, lake: LakeRoot, atomic: AtomicStore | None = None, writer_id: str = "reader") -> None:
        self.lake = lake
        self.fs = lake.fs
        self.atomic = atomic
        self.writer_id = writer_id
        # Column files already read (path -> entry): they are created once and never rewritten.
        self._column_cache: dict[str, _Entry] = {}
        # The lake's published schema per record type as last read (it only ever gains columns).
        self.published: dict[str, pa.Schema] = {}
        # Per record type, a table schema already found settled against the published schema
        # object it was checked with: see _already_settled.
        self._settled: dict[str, tuple[pa.Schema, pa.Schema]] = {}

    # -- reading -----------------------------------------------------------------------------------

    def _failed_read(self, directory: str, exc: Exception) -> KtExportWriteError:
        uri = self.lake.uri_of(directory)
        return KtExportWriteError(
            f"Reading the schema store {uri} failed: {type(exc).__name__}: {exc}", destination=uri
        )

    def _store_files(self, directory: str) -> list[str]:
        self.fs.invalidate_cache(directory)
        try:
            return sorted(p for p in self.fs.ls(directory, detail=False) if p.endswith(".json"))
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._failed_read(directory, exc) from exc

    def _columns_dir(self, record_type: str) -> str:
        return posixpath.join(self.lake.schema_dir(record_type), COLUMNS_DIR)

    def _read_unread(self, record_type: str, unread: list[str]) -> None:
        """Fetch column files not read yet in one ``cat`` call, which s3fs, gcsfs and adlfs run
        concurrently: a new drain meeting a lake of hundreds of columns pays one round trip."""
        try:
            fetched = self.fs.cat(unread, on_error="omit")
        except Exception as exc:
            raise self._failed_read(self.lake.schema_dir(record_type), exc) from exc
        for p, data in (fetched if isinstance(fetched, dict) else {unread[0]: fetched}).items():
            try:
                self._column_cache[self.fs._strip_protocol(p)] = _column_from_json(data)
            except (ValueError, KeyError, TypeError, IndexError, pa.ArrowException) as exc:
                log.warning("Ignoring unreadable schema file %s: %s", self.lake.uri_of(p), exc)

    def _column_entries(self, record_type: str) -> dict[str, _Entry]:
        """The format-3 column files of a record type by column name; each file is read once ever."""
        paths = self._store_files(self._columns_dir(record_type))
        unread = [p for p in paths if p not in self._column_cache]
        if unread:
            self._read_unread(record_type, unread)
        # Created once, never rewritten: cached entries are safe to keep.
        return _best_by_name([self._column_cache[p] for p in paths if p in self._column_cache])

    def _legacy_files(self, record_type: str) -> list[_Entry]:
        out: list[_Entry] = []
        for p in self._store_files(self.lake.schema_dir(record_type)):
            name = posixpath.basename(p)
            if name.startswith("."):
                continue
            try:
                data = self.fs.cat_file(p)
            except FileNotFoundError:
                continue
            try:
                out.extend(_legacy_entries(data, name[: -len(".json")]))
            except (ValueError, KeyError, TypeError, pa.ArrowException) as exc:
                log.warning("Ignoring unreadable schema file %s: %s", self.lake.uri_of(p), exc)
        return out

    def load(self, record_type: str) -> pa.Schema | None:
        """The published schema of a record type: one column per store file, in publication order.

        Schema files of earlier versions (one per writer) count after every column file, named by
        this version's rule (:func:`_name_legacy`).
        """
        columns = self._column_entries(record_type)
        legacy = self._legacy_files(record_type)
        if legacy:
            _name_legacy(columns, legacy)
        if not columns:
            return None
        ordered = sorted(columns.values(), key=lambda e: (e.first_seen, e.field.name))
        merged = pa.schema([e.field for e in ordered])
        self.published[record_type] = merged
        return merged

    # -- publishing --------------------------------------------------------------------------------

    def save(self, record_type: str, schema: pa.Schema) -> None:
        """Publish the columns of ``schema`` the lake does not publish yet (published ones never change)."""
        published = self.load(record_type)
        types = {} if published is None else dict(zip(published.names, published.types, strict=True))
        new = [f for f in schema if f.name not in types and not pa.types.is_null(f.type)]
        if new:
            self.publish(record_type, new, types)

    def publish(self, record_type: str, fields: list[pa.Field], published: Mapping[str, pa.DataType]) -> None:
        """Offer each of ``fields`` to the store under the name :func:`assign_name` gives it.

        A column file is created only if absent: of writers offering one name at once exactly one
        wins, and the others read its entry back (:meth:`load`) before they write data. A file this
        store created holds what it wrote, so its entry is remembered, not read back (a new record
        type of 47 columns used to read its 47 new files again at once).
        """
        if self.atomic is None:
            raise TypeError("this schema store reads only; give it an AtomicStore to publish")
        names = NameAssigner(published)
        directory = self._columns_dir(record_type)
        try:
            for f in fields:
                if is_meta_column(f.name) or variant_tag(f.name) is not None:
                    name = f.name  # a variant's name follows its published column's
                else:
                    name = names.assign(field_path(f))
                names.add(name)
                self._create_column(self.atomic, record_type, directory, f.with_name(name))
        finally:
            # One folder fsync for all of them (one per column was a third of a new type's cost).
            self.atomic.sync_folder(directory)

    def _create_column(self, atomic: AtomicStore, record_type: str, directory: str, f: pa.Field) -> None:
        """Create the column file of ``f`` unless another writer did; remember what was written."""
        path = posixpath.join(directory, column_file(f.name))
        entry = _Entry(f, time.time(), self.writer_id, _STORE_FORMAT)
        try:
            atomic.create(path, _column_to_json(entry), sync_folder=False)
        except FileExistsError:
            log.debug("Column %s of %r was published by another writer first", f.name, record_type)
        except Exception as exc:
            uri = self.lake.uri_of(path)
            raise KtExportWriteError(f"Writing schema file {uri} failed: {exc}", destination=uri) from exc
        else:
            self._column_cache[self.fs._strip_protocol(path)] = entry

    def _already_settled(self, record_type: str, schema: pa.Schema) -> bool:
        """Whether a table of ``schema`` needs nothing from the store: the last table of this record
        type that did had the same schema, and the published schema is still the object it was
        checked against (:meth:`load` makes a new one whenever it reads the store).

        Most flushes of a record type build the same schema, so the store is touched only when a
        schema changes: checking every column's name and type (:func:`needs_fit`) cost about
        0.5 ms of CPU per file, a tenth of a file's cost with 50 record types.
        """
        seen = self._settled.get(record_type)
        return (
            seen is not None
            and self.published.get(record_type) is seen[1]
            and schema.equals(seen[0], check_metadata=True)
        )

    def settle(self, record_type: str, table: pa.Table) -> pa.Table:
        """``table`` at the lake's published names and types, its new columns published before any file has them.

        Fast path without I/O when every column is published at the table's type. Otherwise the
        new columns are offered to the store (:meth:`publish`) and the store is read again: a
        column another writer published first with another type gets this table's misfits as
        variants (:func:`fit_table`), a case twin its twin name, and those are published in turn.
        """
        given = table.schema
        if self._already_settled(record_type, given):
            return table
        published = self.published.get(record_type) or self.load(record_type)
        for _ in range(_SETTLE_ROUNDS):
            types = {} if published is None else dict(zip(published.names, published.types, strict=True))
            if needs_fit(table.schema, types):
                table = fit_table(table, types)
            new = [f for f in table.schema if f.name not in types]
            if not new:
                if published is not None and table.schema.equals(given, check_metadata=True):
                    self._settled[record_type] = (given, published)
                return table
            self.publish(record_type, new, types)
            published = self.load(record_type)
        # Each round only adds twins or variants: what stays unpublished is a name whose column
        # file exists but cannot be read.
        store = self.lake.uri_of(self._columns_dir(record_type))
        raise KtExportWriteError(
            f"Could not publish the columns {[f.name for f in new]} of record type {record_type!r}: "
            f"their column files in {store} exist but cannot be read (see the warnings above). "
            "Remove the damaged files (a writer publishes them again); nothing was written.",
            destination=store,
        )
