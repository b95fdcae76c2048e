"""The column type lattice: inference from values, widening, and building columns at a type.

null < bool; null < int64 < float64 (ints only while |x| <= 2^53); null < timestamp[us, UTC]
(strict RFC 3339 times with a zone); string on top. Lists and empty objects are canonical JSON
text; a mix the lattice does not join is a string column of each value's JSON text.

A column's values come either as a Python list (the dict path) or as an Arrow array of
null/bool/int64/double/string (the JSON-reader path); both give the same column. Building a
column also reports the rows whose record key cannot take msgspec's sorted encoding (see
:func:`float_safe`), so the key pass needs no second walk over every value.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "MAX_INT_EXACT",
    "TIMESTAMP",
    "build_column",
    "canonical_text",
    "fast_safe",
    "float_safe",
    "widen",
    "widen_type",
]

TIMESTAMP = pa.timestamp("us", tz="UTC")
MAX_INT_EXACT = 2**53
_NoneType = type(None)
#: One shared encoder: msgspec's sorted encoding is canonical JSON whenever :func:`fast_safe` holds.
SORTED_ENCODER = msgspec.json.Encoder(order="sorted")

# RFC 3339 shape: a date, a time with at least minutes, fraction up to microseconds (finer
# would lose digits) and a zone (Z or offset). Arrow's cast then rejects impossible dates.
ISO_TS_RE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})$"
)
_ISO_TS = re.compile(ISO_TS_RE)


# -- canonical JSON of values -------------------------------------------------------------------------


def float_safe(v: float) -> bool:
    """True when msgspec writes ``v`` exactly as ``json.dumps`` does (no exponent in ``repr``)."""
    # Python's repr uses an exponent below 1e-4 and from 1e16 on; msgspec spells those differently.
    return v == 0.0 or 1e-4 <= abs(v) < 1e16


def fast_safe(obj: Any) -> bool:
    """True when msgspec's sorted encoding of ``obj`` equals its canonical JSON (pinned by tests)."""
    t = type(obj)
    if t is float:
        return float_safe(obj)
    if t is dict:
        return all(fast_safe(v) for v in obj.values())
    if t is list:
        return all(fast_safe(v) for v in obj)
    return True


def canonical_text(v: Any) -> str:
    """``json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _unsafe_float_rows(arr: pa.Array) -> list[int]:
    """Rows of a float64 array whose value ``json.dumps`` writes with an exponent (vectorised)."""
    mag = pc.abs(arr)
    bad = pc.and_(pc.not_equal(arr, 0.0), pc.or_(pc.less(mag, 1e-4), pc.greater_equal(mag, 1e16)))
    return pc.indices_nonzero(pc.fill_null(bad, False)).to_pylist()


# -- lattice ----------------------------------------------------------------------------------------------


def widen_type(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """Join of two column types on the lattice (null < bool; null < int64 < float64; timestamp; string)."""
    if a == b:
        return a
    if pa.types.is_null(a):
        return b
    if pa.types.is_null(b):
        return a
    if pa.types.is_timestamp(a) and pa.types.is_timestamp(b):
        return TIMESTAMP
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()


def widen(a: pa.Schema, b: pa.Schema) -> pa.Schema:
    """Per-column lattice join of two schemas; columns of ``a`` first, then those only in ``b``."""
    fields = []
    b_names = set(b.names)
    for fa in a:
        if fa.name in b_names:
            fb = b.field(fa.name)
            fields.append(
                pa.field(fa.name, widen_type(fa.type, fb.type), metadata=fa.metadata or fb.metadata)
            )
        else:
            fields.append(fa)
    a_names = set(a.names)
    fields.extend(fb for fb in b if fb.name not in a_names)
    return pa.schema(fields, metadata=a.metadata or b.metadata)


def _timestamps(arr: pa.Array) -> pa.Array | None:
    """A string array as UTC timestamps when every non-null value is a strict RFC 3339 time, else None."""
    if arr.null_count == len(arr):
        return None
    valid = arr.drop_null() if arr.null_count else arr
    # Cheap rejection on the first value before a regex over the whole column.
    if not _ISO_TS.match(valid[0].as_py()):
        return None
    if not pc.all(pc.match_substring_regex(valid, ISO_TS_RE)).as_py():
        return None
    try:
        return pc.cast(arr, TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _infer_values(values: list[Any]) -> tuple[pa.DataType, pa.Array | None, set[type]]:
    """The lattice type of Python values, the array when inference already built it, the types seen."""
    kinds = set(map(type, values))
    kinds.discard(_NoneType)
    if not kinds:
        return pa.null(), None, kinds
    if kinds == {str}:
        arr = pa.array(values, pa.string())
        ts = _timestamps(arr)
        return (TIMESTAMP, ts, kinds) if ts is not None else (pa.string(), arr, kinds)
    if kinds == {bool}:
        return pa.bool_(), None, kinds
    if kinds <= {int, float}:
        if int in kinds:
            ints = [v for v in values if type(v) is int]
            if min(ints) < -MAX_INT_EXACT or max(ints) > MAX_INT_EXACT:
                return pa.string(), None, kinds  # never through float: it would round the value
        return (pa.int64() if kinds == {int} else pa.float64()), None, kinds
    return pa.string(), None, kinds


def _texts(values: list[Any], unsafe: list[int]) -> list[str | None]:
    """Each value's string-column text (strings as they are), noting rows unsafe for the fast key."""
    out: list[str | None] = []
    for j, v in enumerate(values):
        t = type(v)
        if v is None or t is str:
            out.append(v)
        elif t is list or t is dict:
            if fast_safe(v):
                out.append(SORTED_ENCODER.encode(v).decode("utf-8"))
            else:
                unsafe.append(j)
                out.append(canonical_text(v))
        else:
            if t is float and not float_safe(v):
                unsafe.append(j)
            out.append(canonical_text(v))
    return out


def _build_values(values: list[Any], known: pa.DataType | None) -> tuple[pa.DataType, pa.Array, list[int]]:
    inferred, built, kinds = _infer_values(values)
    target = inferred if known is None else widen_type(known, inferred)
    unsafe: list[int] = []
    if pa.types.is_null(target) or pa.types.is_null(inferred):
        return target, pa.nulls(len(values), target), unsafe
    if built is not None and target == inferred:
        return target, built, unsafe
    if pa.types.is_string(target):
        if kinds == {str}:
            # Strings (also time strings going into a string column) keep their original text.
            return (
                target,
                (built if built is not None and pa.types.is_string(built.type) else pa.array(values, target)),
                unsafe,
            )
        return target, pa.array(_texts(values, unsafe), pa.string()), unsafe
    if pa.types.is_timestamp(target):
        return (
            target,
            built if built is not None else pc.cast(pa.array(values, pa.string()), TIMESTAMP),
            unsafe,
        )
    arr = pa.array(values, target)
    if float in kinds:
        unsafe = _unsafe_float_rows(arr)
    return target, arr, unsafe


def _build_array(arr: pa.Array, known: pa.DataType | None) -> tuple[pa.DataType, pa.Array, list[int]]:
    """Same as the Python-list path for an Arrow array of null, bool, int64 (|x| <= 2^53), double or string."""
    n = len(arr)
    inferred = arr.type
    built = arr
    if pa.types.is_string(inferred):
        ts = _timestamps(arr)
        if ts is not None:
            inferred, built = TIMESTAMP, ts
    elif arr.null_count == n:
        inferred = pa.null()
    target = inferred if known is None else widen_type(known, inferred)
    unsafe = _unsafe_float_rows(arr) if pa.types.is_floating(arr.type) else []
    if pa.types.is_null(target) or pa.types.is_null(inferred):
        return target, pa.nulls(n, target), unsafe
    if target == inferred:
        return target, built, unsafe
    if pa.types.is_string(target):
        if pa.types.is_string(arr.type):
            return target, arr, unsafe
        # bool, int or float under a published string type: their JSON text, as the dict path.
        return target, pa.array([None if v is None else canonical_text(v) for v in arr.to_pylist()]), unsafe
    return target, arr.cast(target), unsafe  # int64 -> float64: exact below 2^53


def build_column(
    values: list[Any] | pa.Array, known: pa.DataType | None
) -> tuple[pa.DataType, pa.Array, list[int]]:
    """The column at ``widen(known, inferred)``, and the rows whose fast record key is unsafe."""
    if isinstance(values, list):
        return _build_values(values, known)
    return _build_array(values, known)
