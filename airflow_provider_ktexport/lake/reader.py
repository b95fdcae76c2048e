"""Reading the lake: every record type's files fitted to its published columns, one table per type.

Files are read whole with pyarrow through fsspec and fitted by the variant rule
(:func:`.variants.fit_table`), so files of any version read alike: this version's names, each
column at its published type (the store's, else its oldest file's), Null-typed columns dropped.
Engines read the lake on their own too (docs/schema-mapping.md, "Reading the lake").

Where things are comes from :mod:`.layout` (the record type folders, the hive path of each file)
and the published columns from :class:`.schema_store.SchemaStore`: reading never builds a writer.
"""

from __future__ import annotations

import posixpath
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_ktexport.lake.layout import (
    RESERVED_PREFIX,
    LakeRoot,
    parse_hive_path,
    record_type_folder,
    record_type_of_folder,
    type_dir,
    type_dir_folder,
)
from airflow_provider_ktexport.lake.schema_store import SchemaStore
from airflow_provider_ktexport.lake.variants import (
    FoldMode,
    current_name,
    fit_table,
    fold_variants,
    published_names,
)

__all__ = ["open_lake", "published_types", "read_lake", "read_lake_pandas", "read_lake_table"]


def _data_files(fs: fsspec.AbstractFileSystem, directory: str) -> list[str]:
    try:
        found = fs.find(directory)
    except FileNotFoundError:
        return []
    return sorted(p for p in found if p.endswith(".parquet") and not posixpath.basename(p).startswith("."))


def _partition_values(lake: LakeRoot, path: str) -> dict[str, str]:
    """The partition values of a data file from its path, decoded as readers show them."""
    return {
        k: record_type_of_folder(v)
        for k, v in parse_hive_path(posixpath.dirname(lake.relative(path))).items()
    }


def _type_dirs(lake: LakeRoot, record_type: str | None) -> list[str]:
    if record_type is not None:
        return [lake.join(type_dir(record_type_folder(record_type)))]
    try:
        entries = lake.fs.ls(lake.root, detail=False)
    except FileNotFoundError:
        entries = []
    return sorted(p for p in entries if type_dir_folder(p) is not None)


def published_types(store: SchemaStore, record_type: str, schemas: list[pa.Schema]) -> dict[str, pa.DataType]:
    """Each base column's type: the store's, else its type in the oldest file that has it.

    ``schemas`` are the record type's file schemas, oldest first (file names start with their
    UTC time). Lakes written before the store fixed types get, per column, the type its first
    file gave it; files that disagree are fitted to it by the variant rule.
    """
    published = store.load(record_type)
    types: dict[str, pa.DataType] = {}
    if published is not None:
        types.update(zip(published.names, published.types, strict=True))
    names = published_names(types)
    for schema in schemas:
        for f in schema:
            if pa.types.is_null(f.type) or f.name.startswith(RESERVED_PREFIX):
                continue
            types.setdefault(current_name(f, names), f.type)
    return types


def open_lake(fs_or_url: fsspec.AbstractFileSystem | str, root: str | None) -> LakeRoot:
    """A read-only handle on a lake given as a filesystem and root, or as a URL (:meth:`.LakeRoot.open`)."""
    return LakeRoot.open(fs_or_url, root)


def _read_type(lake: LakeRoot, store: SchemaStore, type_path: str, folder: str) -> pa.Table | None:
    fs = lake.fs
    files = sorted(_data_files(fs, type_path), key=posixpath.basename)
    if not files:
        return None
    tables = []
    for path in files:
        with fs.open(path, "rb") as fh:
            tables.append((path, pq.read_table(fh)))
    # The schema store is keyed by the folder, as the drain and compaction key it.
    types = published_types(store, folder, [t.schema for _, t in tables])
    fitted = []
    for path, t in tables:
        t = fit_table(t, types)
        for key, value in _partition_values(lake, path).items():
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
    lake = open_lake(fs_or_url, root)
    store = SchemaStore(lake)
    out: dict[str, pa.Table] = {}
    for type_path in _type_dirs(lake, record_type):
        folder = type_dir_folder(type_path) or ""
        table = _read_type(lake, store, type_path, folder)
        if table is None:
            continue
        out[record_type_of_folder(folder)] = table if fold is None else fold_variants(table, fold)
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
