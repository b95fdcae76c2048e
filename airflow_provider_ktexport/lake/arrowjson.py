"""The fast column path: a record type's raw JSON read by Arrow's C++ reader, then flattened.

``pyarrow.json.read_json`` builds typed columns from the raw bytes far cheaper than decoding to
dicts and flattening in Python, but it does not follow the lake's rules everywhere. So it is used
only for a group it provably gets right, and :func:`read_columns` returns None for the rest (the
caller then takes the dict path, which defines the result):

- the reader fails on a type conflict (object vs scalar, bool vs number, number vs string,
  duplicate keys, invalid surrogates, numbers beyond double): None;
- an int64 column beyond +-2^53, or a double column holding a magnitude of 2^53 or more (it may
  have been such an int) or a negative zero (it may have been the int ``-0``): None;
- lists (canonical JSON text) and objects that may be ``null`` or ``{}`` (a ``{}`` is stored as
  ``"{}"``, a present ``null`` makes a null column the reader cannot show): the caller reads
  these *probe* paths from the decoded record it builds for the record key anyway; the reader's
  parse of a list still tells, vectorised, which rows hold a float that msgspec would spell
  differently from canonical JSON (:func:`~.types.float_safe`), which a walk in Python over
  every value of a 100-point track spent most of a trip's build on;
- all-second time strings the reader turned into timestamps: read again with them as strings,
  so the lattice sees the text as sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from airflow_provider_ktexport.lake.types import MAX_INT_EXACT, unsafe_float_rows

__all__ = ["LIST", "OBJECT", "VALUE", "Found", "read_columns"]

#: Probe kinds: the value at the path is a list (or null), an object that may be null or {}, or
#: a number whose JSON spelling matters (``5`` or ``5.0`` under a published int64 column).
LIST = "list"
OBJECT = "object"
VALUE = "value"
_MAX_BLOCK = 2**31 - 2
_LEAF_TYPES = (pa.null(), pa.bool_(), pa.int64(), pa.float64(), pa.string())


class _Reject(Exception):
    """The reader's result cannot be made equal to the dict path's."""


def _read(buf: bytes, multiline: bool, schema: pa.Schema | None) -> pa.Table:
    return pj.read_json(
        pa.py_buffer(buf),
        read_options=pj.ReadOptions(use_threads=False, block_size=len(buf) + 1),
        parse_options=pj.ParseOptions(
            explicit_schema=schema, newlines_in_values=multiline, unexpected_field_behavior="infer"
        ),
    )


def _untime(t: pa.DataType) -> tuple[pa.DataType, bool]:
    """``t`` with every timestamp replaced by string, and whether there was one."""
    if pa.types.is_timestamp(t):
        return pa.string(), True
    if pa.types.is_struct(t):
        fields, changed = [], False
        for f in t:
            ft, c = _untime(f.type)
            fields.append(f.with_type(ft))
            changed |= c
        return pa.struct(fields), changed
    if pa.types.is_list(t):
        vt, c = _untime(t.value_type)
        return pa.list_(vt), c
    return t, False


def _check_leaf(arr: pa.Array) -> None:
    t = arr.type
    if t not in _LEAF_TYPES:
        raise _Reject(str(t))
    if arr.null_count == len(arr) or not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        return
    mm = pc.min_max(arr).as_py()
    # A double of 2^53 may be the rounded int 2^53 + 1 (a string column on the dict path).
    limit = MAX_INT_EXACT - 1 if pa.types.is_floating(t) else MAX_INT_EXACT
    if mm["min"] < -limit or mm["max"] > limit:
        raise _Reject("magnitude beyond 2^53")
    if pa.types.is_floating(t):
        negative_zero = pc.equal(arr.view(pa.int64()), -(2**63))
        if pc.any(pc.and_(negative_zero, arr.is_valid())).as_py():
            raise _Reject("negative zero")


@dataclass
class Found:
    """What the reader gave: leaf columns and probe paths by key path, and the rows of lists
    holding a float msgspec spells differently from canonical JSON."""

    leaves: dict[tuple[str, ...], pa.Array] = field(default_factory=dict)
    probes: dict[tuple[str, ...], str] = field(default_factory=dict)
    unsafe_list_rows: set[int] = field(default_factory=set)


def _unsafe_rows_in_list(arr: pa.Array) -> set[int]:
    """Rows of a list column holding, at any depth, a float ``json.dumps`` writes with an exponent."""
    rows: set[int] = set()
    todo: list[tuple[pa.Array, pa.Array | None]] = [
        (arr, None)
    ]  # (values, each one's row); None: the same position
    while todo:
        values, row_of = todo.pop()
        t = values.type
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            parents = pc.list_parent_indices(values)
            todo.append((pc.list_flatten(values), parents if row_of is None else row_of.take(parents)))
        elif pa.types.is_struct(t):
            todo.extend((child, row_of) for child in values.flatten())
        elif pa.types.is_floating(t):
            bad = unsafe_float_rows(values)
            rows.update(bad if row_of is None else row_of.take(pa.array(bad, pa.int64())).to_pylist())
    return rows


def _walk(
    path: tuple[str, ...],
    arr: pa.Array,
    parent_valid: pa.Array | None,
    found: Found,
    value_paths: frozenset[tuple[str, ...]],
) -> None:
    t = arr.type
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        found.probes[path] = LIST
        found.unsafe_list_rows |= _unsafe_rows_in_list(arr)
        return
    if not pa.types.is_struct(t):
        _check_leaf(arr)
        if pa.types.is_floating(t) and path in value_paths:
            # The reader turned ints into doubles here; an int64 column takes the ints only.
            found.probes[path] = VALUE
            return
        found.leaves[path] = arr
        return
    children = arr.flatten()  # parent nulls carried into the children
    if not children:  # only ever {} (or null) here
        found.probes[path] = OBJECT
        return
    # A row of a present parent where this object is null, or where all its keys are null, may
    # hold a null or {} here: the dict path makes a column of those, so read them from the dicts.
    empty = pc.is_null(children[0])
    for c in children[1:]:
        empty = pc.and_(empty, pc.is_null(c))
    if parent_valid is not None:
        empty = pc.and_(empty, parent_valid)
    if pc.any(empty).as_py():
        found.probes[path] = OBJECT
    valid = arr.is_valid()
    for f, child in zip(t, children, strict=True):
        _walk((*path, f.name), child, valid, found, value_paths)


def read_columns(raws: Sequence[Any], value_paths: frozenset[tuple[str, ...]] = frozenset()) -> Found | None:
    """Leaf columns, probe paths and unsafe list rows of one record type's records; None to fall back.

    :param value_paths: paths published as int64: a double leaf there becomes a ``VALUE`` probe
    """
    buf = b"\n".join(raws)
    if not raws or len(buf) >= _MAX_BLOCK:
        return None
    # A record with a line break inside (pretty-printed) needs the reader's slower multi-line mode.
    multiline = buf.count(b"\n") != len(raws) - 1 or b"\r" in buf
    try:
        table = _read(buf, multiline, None)
        untimed, changed = _untime(pa.struct(list(table.schema)))
        if changed:
            table = _read(buf, multiline, pa.schema(list(untimed)))
    except pa.ArrowException:
        return None
    if table.num_rows != len(raws) or len(set(table.column_names)) != table.num_columns:
        return None
    found = Found()
    try:
        for column, col in zip(table.schema, table.columns, strict=True):
            arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            _walk((column.name,), arr, None, found, value_paths)
    except (_Reject, pa.ArrowException):
        return None
    return found
