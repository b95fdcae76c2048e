"""Reading the lake: every record type's files fitted to its published columns, one table per type.

Files are read whole with pyarrow through fsspec and fitted by the variant rule
(:func:`.variants.fit_table`), so files of any version read alike: this version's names, each
column at its published type (the store's, else its oldest file's), Null-typed columns dropped.
Engines read the lake on their own too (docs/schema-mapping.md, "Reading the lake").
"""

from __future__ import annotations

import posixpath
from typing import Any

import fsspec
import fsspec.core
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_ktexport.lake.layout import record_type_folder, record_type_of_folder
from airflow_provider_ktexport.lake.variants import (
    FoldMode,
    current_name,
    fit_table,
    fold_variants,
    published_names,
)
from airflow_provider_ktexport.lake.writer import LakeWriter

__all__ = ["published_types", "read_lake", "read_lake_pandas", "read_lake_table"]


def _data_files(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    try:
        found = fs.find(directory)
    except FileNotFoundError:
        return []
    return sorted(p for p in found if p.endswith(".parquet") and not posixpath.basename(p).startswith("."))


def _partition_values(root: str, path: str) -> dict[str, str]:
    rel = path[len(root) :].strip("/").split("/")[:-1]
    return {k: record_type_of_folder(v) for k, _, v in (seg.partition("=") for seg in rel) if _ == "="}


def _type_dirs(fs: fsspec.AbstractFileSystem, writer: LakeWriter, record_type: str | None) -> list[str]:
    if record_type is not None:
        return [writer._join(f"record_type={record_type_folder(record_type)}")]
    try:
        entries = fs.ls(writer.root, detail=False)
    except FileNotFoundError:
        entries = []
    return sorted(p for p in entries if posixpath.basename(p.rstrip("/")).startswith("record_type="))


def published_types(writer: LakeWriter, record_type: str, schemas: list[pa.Schema]) -> dict[str, pa.DataType]:
    """Each base column's type: the store's, else its type in the oldest file that has it.

    ``schemas`` are the record type's file schemas, oldest first (file names start with their
    UTC time). Lakes written before the store fixed types get, per column, the type its first
    file gave it; files that disagree are fitted to it by the variant rule.
    """
    published = writer.load_schema(record_type)
    types: dict[str, pa.DataType] = {}
    if published is not None:
        types.update(zip(published.names, published.types, strict=True))
    names = published_names(types)
    for schema in schemas:
        for f in schema:
            if pa.types.is_null(f.type) or f.name.startswith("_"):
                continue
            types.setdefault(current_name(f, names), f.type)
    return types


def open_lake(fs_or_url: fsspec.AbstractFileSystem | str, root: str | None) -> LakeWriter:
    """A read-only handle on a lake given as a filesystem and root, or as a URL."""
    if isinstance(fs_or_url, str):
        fs, url_root = fsspec.core.url_to_fs(fs_or_url)
        root = url_root if root is None else root
    else:
        fs = fs_or_url
    if root is None:
        raise ValueError("reading a lake needs its root when given a filesystem")
    return LakeWriter(fs, root, writer_id="reader")


def _folder_of(type_dir: str) -> str:
    """The record type folder of a ``record_type=<folder>`` directory."""
    return posixpath.basename(type_dir.rstrip("/")).partition("=")[2]


def _read_type(writer: LakeWriter, type_dir: str) -> pa.Table | None:
    fs, base = writer.fs, writer.root
    # The schema store is keyed by the folder, as the drain and compaction key it.
    rtype = _folder_of(type_dir)
    files = sorted(_data_files(fs, type_dir), key=posixpath.basename)
    if not files:
        return None
    tables = []
    for path in files:
        with fs.open(path, "rb") as fh:
            tables.append((path, pq.read_table(fh)))
    types = published_types(writer, rtype, [t.schema for _, t in tables])
    fitted = []
    for path, t in tables:
        t = fit_table(t, types)
        for key, value in _partition_values(base, path).items():
            t = t.append_column(
                pa.field(key, pa.string()), pa.repeat(pa.scalar(value, pa.string()), t.num_rows)
            )
        fitted.append(t)
    # Every name now has one type in all files: missing columns simply read as nulls.
    return pa.concat_tables(fitted, promote_options="default")


def read_lake(
    fs_or_url: fsspec.AbstractFileSystem | str,
    root: str | None = None,
    *,
    record_type: str | None = None,
    fold: FoldMode | None = None,
) -> dict[str, pa.Table]:
    """Read every data file of the lake (or of one record type): one table per record type.

    Files are fitted to the published columns by the variant rule, so files written by earlier
    versions (types widened in place, old spellings) read too. Partition values come back as
    string columns (``record_type``, ``event_date``...). ``_schema``, ``_quarantine`` and
    temporary files are skipped.

    :param fs_or_url: an fsspec filesystem (then pass ``root``) or a URL such as ``s3://bucket/lake``
    :param root: the lake root on the filesystem
    :param record_type: read only this record type
    :param fold: fold each column's variants back into it: ``"string"`` (every value as its JSON
        text) or ``"widest"`` (the lattice join of its types); by default variants stay apart
    :return: ``{record_type: table}`` for every record type with data
    """
    writer = open_lake(fs_or_url, root)
    out: dict[str, pa.Table] = {}
    for type_dir in _type_dirs(writer.fs, writer, record_type):
        table = _read_type(writer, type_dir)
        if table is None:
            continue
        out[record_type_of_folder(_folder_of(type_dir))] = (
            table if fold is None else fold_variants(table, fold)
        )
    return out


def read_lake_table(
    fs_or_url: fsspec.AbstractFileSystem | str,
    root: str | None = None,
    *,
    record_type: str | None = None,
    fold: FoldMode | None = None,
) -> pa.Table:
    """:func:`read_lake` as one table: the record types' tables stacked (columns by name).

    A name two record types type differently is fitted by the variant rule too (the first
    record type's type stays, the other's values go to a variant column).
    """
    tables = list(read_lake(fs_or_url, root, record_type=record_type, fold=fold).values())
    if not tables:
        return pa.table({})
    types: dict[str, pa.DataType] = {}
    for t in tables:
        for f in t.schema:
            types.setdefault(f.name, f.type)
    return pa.concat_tables([fit_table(t, types) for t in tables], promote_options="default")


def read_lake_pandas(
    fs_or_url: fsspec.AbstractFileSystem | str,
    root: str | None = None,
    *,
    record_type: str | None = None,
    fold: FoldMode | None = None,
) -> Any:
    """:func:`read_lake_table` as a pandas DataFrame."""
    return read_lake_table(fs_or_url, root, record_type=record_type, fold=fold).to_pandas()
