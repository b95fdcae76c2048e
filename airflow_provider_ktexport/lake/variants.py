"""The variant rule on typed Arrow data: fit a file's table to the published columns, fold variants.

:mod:`.types` applies the rule to JSON values while a flush builds its tables. This module applies
it to tables that already have types: a table a writer built before another writer published
the same new column with another type, files written by earlier versions (which widened a column
in place, spelled case twins by arrival order and wrote Null-typed columns), and the reader's
optional folding of variants back into one column. No value is ever re-spelt here: a value whose
type differs from its column's published type moves to the variant of its own type. The only
conversion is int64 -> float64, and only where exact (|x| <= 2^53), as on the JSON path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_ktexport.lake.naming import (
    TAG_SEP,
    VARIANT_TAGS,
    NameAssigner,
    base_name,
    column_name,
    field_path,
    is_meta_column,
    path_metadata,
    published_names,
    twin_tag,
    variant_name,
    variant_tag,
    variant_type,
)
from airflow_provider_ktexport.lake.types import MAX_INT_EXACT, canonical_text, widen_type

__all__ = [
    "FoldMode",
    "current_name",
    "fit_table",
    "fitted_columns",
    "fold_variants",
    "is_meta_column",
    "name_new_columns",
    "needs_fit",
    "pad_table",
]

FoldMode = Literal["string", "widest"]


def current_name(field: pa.Field, names: Mapping[tuple[str, ...], str] | None = None) -> str:
    """The name this version gives a column a file holds (files of any version).

    ``names``: the lake's published column of each key path (:func:`published_names`), which
    decides case twins; without it, or for a path it lacks, the plain name (a twin tag the
    field's name carries is kept; an earlier version's case tag is dropped).
    """
    if is_meta_column(field.name):
        return field.name
    path = field_path(field)
    base = names.get(path) if names else None
    if base is None:
        base = column_name(path) + twin_tag(field.name)
    tag = variant_tag(field.name)
    return base if tag is None else f"{base}{TAG_SEP}{tag}"


def name_new_columns(table: pa.Table, published: Sequence[str]) -> pa.Table:
    """``table`` with each base column not in ``published`` named by :func:`.naming.assign_name`.

    For a sink whose published names are read and extended in one optimistic commit (Iceberg):
    a new case twin gets its twin name before the commit that publishes it.
    """
    names = NameAssigner(published)
    known = set(published)
    renamed = []
    for f in table.schema:
        name = f.name
        if not (is_meta_column(name) or name in known or variant_tag(name) is not None):
            name = names.assign(field_path(f))
            names.add(name)
        renamed.append(name)
    return table if renamed == table.column_names else table.rename_columns(renamed)


def _target_type(name: str, published: Mapping[str, pa.DataType]) -> pa.DataType | None:
    vtype = variant_type(name)
    return vtype if vtype is not None else published.get(name)


def needs_fit(schema: pa.Schema, published: Mapping[str, pa.DataType]) -> bool:
    """True when a table of ``schema`` is not already at ``published`` (names, types, no Null columns)."""
    names = published_names(published)
    for f in schema:
        if pa.types.is_null(f.type):
            return True
        if is_meta_column(f.name):
            continue
        name = current_name(f, names)
        target = _target_type(name, published)
        if name != f.name or (target is not None and target != f.type):
            return True
    return False


class _Builder:
    """Columns by name in arrival order; a second piece for a name fills the first's nulls."""

    def __init__(self) -> None:
        self.columns: dict[str, tuple[pa.Field, pa.ChunkedArray]] = {}

    def put(self, field: pa.Field, arr: pa.ChunkedArray) -> None:
        have = self.columns.get(field.name)
        if have is None:
            self.columns[field.name] = (field, arr)
        else:  # rows are disjoint: a row holds its value in one column of a key path only
            self.columns[field.name] = (have[0], pc.coalesce(have[1], arr))


def fit_table(table: pa.Table, published: Mapping[str, pa.DataType]) -> pa.Table:
    """``table`` with every column at its published type, misfits moved to variants.

    Columns are renamed to this version's spelling (by their key path), Null-typed columns are
    dropped, a column not in ``published`` keeps its type (it is new). Published columns the
    table lacks are not added (engines merge files by adding columns).
    """
    out = _Builder()
    names = published_names(published)
    for field, col in zip(table.schema, table.columns, strict=True):
        if pa.types.is_null(field.type):
            continue
        if is_meta_column(field.name):
            out.put(field, col)
            continue
        name = current_name(field, names)
        meta = path_metadata(field_path(field))
        target = _target_type(name, published)
        t = field.type
        if target is None or target == t:
            out.put(pa.field(name, t, metadata=meta), col)
            continue
        if t not in VARIANT_TAGS:
            raise ValueError(f"column {field.name!r} has type {t}, which this lake never writes")
        if t == pa.int64() and target == pa.float64():
            exact = pc.fill_null(pc.less_equal(pc.abs(col), MAX_INT_EXACT), False)
            null = pa.scalar(None, pa.int64())
            fits = pc.if_else(exact, col, null).cast(pa.float64())
            out.put(pa.field(name, target, metadata=meta), fits)
            col = pc.if_else(exact, null, col)
            if col.null_count == len(col):
                continue
        vname = variant_name(name, t)
        out.put(pa.field(vname, t, metadata=meta), col)
    order = [n for n in published if n in out.columns] + [n for n in out.columns if n not in published]
    fields = [out.columns[n][0] for n in order]
    return pa.Table.from_arrays([out.columns[n][1] for n in order], schema=pa.schema(fields))


def fitted_columns(schemas: list[pa.Schema], published: Mapping[str, pa.DataType]) -> dict[str, pa.DataType]:
    """Every column :func:`fit_table` makes of tables of ``schemas``, with its type; published first.

    (An int64 column under a published double whose ints exceed 2^53 also gets a ``___bigint``
    variant; that needs the data and is left out here.)
    """
    full = dict(published)
    names = published_names(published)
    for schema in schemas:
        for f in schema:
            if pa.types.is_null(f.type):
                continue
            if is_meta_column(f.name):
                full.setdefault(f.name, f.type)
                continue
            name = current_name(f, names)
            target = _target_type(name, published)
            if target is None or target == f.type:
                full.setdefault(name, f.type)
            elif f.type == pa.int64() and target == pa.float64():
                full.setdefault(name, target)
            else:
                full.setdefault(variant_name(name, f.type), f.type)
    return full


def pad_table(table: pa.Table, columns: Mapping[str, pa.DataType]) -> pa.Table:
    """``table`` with every one of ``columns`` (nulls where it has none), in that order, then its others.

    Files of one record type with the same columns read with every engine's defaults: pandas
    (pyarrow) takes the first file's columns and drops the rest, Polars refuses a file with a
    column the first lacks.
    """
    n = table.num_rows
    fields: list[pa.Field] = []
    arrays: list[pa.Array | pa.ChunkedArray] = []
    for name, t in columns.items():
        if name in table.column_names:
            fields.append(table.schema.field(name))
            arrays.append(table.column(name))
        else:
            meta = None if is_meta_column(name) else path_metadata(field_path(pa.field(name, t)))
            fields.append(pa.field(name, t, metadata=meta))
            arrays.append(pa.nulls(n, t))
    for f in table.schema:
        if f.name not in columns:
            fields.append(f)
            arrays.append(table.column(f.name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


# -- folding variants back ----------------------------------------------------------------------------


def _text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return canonical_text(v)


def _as_text(col: pa.ChunkedArray) -> pa.Array:
    if pa.types.is_string(col.type):
        return col.combine_chunks()
    return pa.array([None if v is None else _text(v) for v in col.to_pylist()], pa.string())


def fold_variants(table: pa.Table, mode: FoldMode = "string") -> pa.Table:
    """Each column that has variants merged with them into one column under the column's name.

    Columns without variants are left as they are.

    ``string``: every value as its JSON text (strings as they are, times as ISO-8601 UTC);
    ``widest``: the lattice join of the column's types (int64 and double give double, exactly;
    any other mix gives string as above).
    """
    groups: dict[str, list[str]] = {}
    for name in table.column_names:
        if not is_meta_column(name):
            groups.setdefault(base_name(name), []).append(name)
    # Each group of more than one column (or a variant without its column) becomes one column.
    result = table
    for base, names in groups.items():
        if len(names) < 2 and base in table.column_names:
            continue
        cols = [table.column(n) for n in names]
        joined = cols[0].type
        for c in cols[1:]:
            joined = widen_type(joined, c.type)
        folded: pa.Array | pa.ChunkedArray | None = None
        if mode == "widest" and not pa.types.is_string(joined):
            try:  # the cast is safe: it refuses an int that a double would round
                folded = pc.coalesce(*[c.cast(joined) for c in cols])
            except pa.ArrowInvalid:
                folded = None
        if folded is None:
            folded = pc.coalesce(*[_as_text(c) for c in cols])
        meta = table.schema.field(names[0]).metadata
        keep = [n for n in result.column_names if n not in names or n == names[0]]
        result = result.select(keep)
        idx = result.column_names.index(names[0])
        result = result.set_column(idx, pa.field(base, folded.type, metadata=meta), folded)
    return result
