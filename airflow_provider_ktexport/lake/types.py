"""The column type lattice: inference from values, and building columns at a published type.

null < bool; null < int64 < float64 (ints any int64; into float64 only while |x| <= 2^53);
null < timestamp[us, UTC]
(strict RFC 3339 times with a zone); string on top. Lists and empty objects are canonical JSON
text; a mix the lattice does not join is a string column of each value's JSON text.

The lattice types a column only in the flush where it first appears; from then on its type is
published and fixed. :func:`build_fitted` puts each later value that fits the published type
exactly into the column, and the others into variant columns beside it (docs/schema-mapping.md).

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

from airflow_provider_ktexport.lake.layout import TIMESTAMP

__all__ = [
    "MAX_INT_EXACT",
    "TIMESTAMP",
    "build_column",
    "canonical_text",
    "fast_safe",
    "float_safe",
    "unsafe_float_rows",
    "build_fitted",
    "widen_type",
]

MAX_INT_EXACT = 2**53
#: The range of an int64 column: JSON integers in it land as int64, exactly.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
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


def unsafe_float_rows(arr: pa.Array) -> list[int]:
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
        # Ints stay int64 while they fit it; beside floats only while a double holds them exactly.
        limit = (INT64_MIN, INT64_MAX) if kinds == {int} else (-MAX_INT_EXACT, MAX_INT_EXACT)
        if int in kinds:
            ints = [v for v in values if type(v) is int]
            if min(ints) < limit[0] or max(ints) > limit[1]:
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
        unsafe = unsafe_float_rows(arr)
    return target, arr, unsafe


def _build_array(arr: pa.Array, known: pa.DataType | None) -> tuple[pa.DataType, pa.Array, list[int]]:
    """Same as the Python-list path for an Arrow array of null, bool, int64 (|x| <= 2^53), double or string."""
    n = len(arr)
    inferred = arr.type
    built = arr
    if arr.null_count == n:  # also a typed array of nulls (the rows left after fitting)
        inferred = pa.null()
    elif pa.types.is_string(inferred):
        ts = _timestamps(arr)
        if ts is not None:
            inferred, built = TIMESTAMP, ts
    target = inferred if known is None else widen_type(known, inferred)
    unsafe = unsafe_float_rows(arr) if pa.types.is_floating(arr.type) else []
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


# -- fitting values to a published type -----------------------------------------------------------------

#: Order in which existing variant columns are tried for a value that does not fit its column:
#: the narrowest first, string (which takes anything) last.
_VARIANT_ORDER = (pa.bool_(), pa.int64(), pa.float64(), TIMESTAMP, pa.string())


def _is_time_text(v: str) -> bool:
    if not _ISO_TS.match(v):
        return False
    try:
        pa.scalar(v, pa.string()).cast(TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _value_fits(v: Any, target: pa.DataType) -> bool:
    """Whether a JSON value goes into a column of ``target`` unchanged (exact; nothing rounded)."""
    t = type(v)
    if target == pa.float64():
        return t is float or (t is int and -MAX_INT_EXACT <= v <= MAX_INT_EXACT)
    if target == pa.int64():
        return t is int and INT64_MIN <= v <= INT64_MAX
    if target == pa.bool_():
        return t is bool
    if target == TIMESTAMP:
        return t is str and _is_time_text(v)
    return False


def _all_fit(values: list[Any], target: pa.DataType) -> bool:
    kinds = set(map(type, values))
    kinds.discard(_NoneType)
    if not kinds:
        return True
    if target == TIMESTAMP:
        return kinds == {str} and _timestamps(pa.array(values, pa.string())) is not None
    if target == pa.bool_():
        return kinds == {bool}
    if not kinds <= ({int, float} if target == pa.float64() else {int}):
        return False
    ints = [v for v in values if type(v) is int]
    low, high = (-MAX_INT_EXACT, MAX_INT_EXACT) if target == pa.float64() else (INT64_MIN, INT64_MAX)
    return not ints or (min(ints) >= low and max(ints) <= high)


def _fit_values(values: list[Any], target: pa.DataType) -> list[bool] | None:
    """Per row: the value is null or fits ``target``; None when every row does."""
    if pa.types.is_string(target):
        return None  # everything fits a string column (as its JSON text)
    if _all_fit(values, target):  # the usual case, decided per column rather than per value
        return None
    mask = [v is None or _value_fits(v, target) for v in values]
    return None if all(mask) else mask


def _time_mask(arr: pa.Array) -> pa.Array:
    mask = pc.fill_null(pc.match_substring_regex(arr, ISO_TS_RE), False)
    try:
        pc.cast(arr.filter(mask), TIMESTAMP)
        return mask
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # an impossible date among them
        return pa.array(
            [bool(m) and _is_time_text(v) for m, v in zip(mask.to_pylist(), arr.to_pylist(), strict=True)]
        )


def _fit_array(arr: pa.Array, target: pa.DataType) -> pa.Array | None:
    """Per row: null or fits ``target`` (a boolean array); None when every row does.

    ``arr`` comes from the JSON reader: null, bool, int64 (|x| <= 2^53), double or string. A double
    under an int64 column is ambiguous (``5`` or ``5.0``?): the caller passes those as values.
    """
    t = arr.type
    if pa.types.is_null(t) or t == target or pa.types.is_string(target) or arr.null_count == len(arr):
        return None
    if t == pa.int64() and target == pa.float64():
        return None
    if pa.types.is_string(t) and target == TIMESTAMP:
        fits = pc.or_(arr.is_null(), _time_mask(arr))
    else:
        fits = arr.is_null()
    return None if pc.all(fits).as_py() else fits


def _select(values: list[Any] | pa.Array, keep: list[bool] | pa.Array) -> list[Any] | pa.Array:
    """``values`` with the rows not in ``keep`` set to null (row positions are kept)."""
    if isinstance(values, list):
        return [v if k else None for v, k in zip(values, keep, strict=True)]
    return pc.if_else(keep, values, pa.nulls(len(values), values.type))


def _invert(keep: list[bool] | pa.Array) -> list[bool] | pa.Array:
    return [not k for k in keep] if isinstance(keep, list) else pc.invert(keep)


def _fit(values: list[Any] | pa.Array, target: pa.DataType) -> list[bool] | pa.Array | None:
    return _fit_values(values, target) if isinstance(values, list) else _fit_array(values, target)


def build_fitted(
    values: list[Any] | pa.Array,
    published: pa.DataType | None,
    variants: tuple[pa.DataType, ...] = (),
) -> tuple[list[tuple[pa.DataType | None, pa.Array]], list[int]]:
    """One key path's columns: ``[(None, column), (variant type, variant column), ...]``.

    A column not yet published takes its lattice type from these values (none at all when every
    value is null: no Null-typed columns). A published column keeps ``published``: values that
    fit it exactly go in, the others go to the published non-string variants they fit (narrowest
    first), and what is left to the variant of the type the lattice gives those values. Every row holds
    its value in exactly one of the returned columns. Also returns the rows whose fast record
    key is unsafe (see :func:`float_safe`).
    """
    if published is None:
        target, arr, unsafe = build_column(values, None)
        return ([] if pa.types.is_null(target) else [(None, arr)]), unsafe
    if published == TIMESTAMP and not isinstance(values, list) and pa.types.is_string(values.type):
        ts = _timestamps(values)  # the usual case, checked once: every text is a time
        if ts is not None:
            return [(None, ts)], []
    fits = _fit(values, published)
    if fits is None:
        _, arr, unsafe = build_column(values, published)
        return [(None, arr)], unsafe
    _, base, unsafe = build_column(_select(values, fits), published)
    out: list[tuple[pa.DataType | None, pa.Array]] = [(None, base)]
    rest = _select(values, _invert(fits))
    # string takes anything as its JSON text, so it only gets what the lattice makes a string:
    # a 1.5 still gets a double variant after a "93.7 km" made a string one.
    for vtype in sorted((v for v in variants if not pa.types.is_string(v)), key=_VARIANT_ORDER.index):
        fits = _fit(rest, vtype)
        if fits is None:  # every remaining value fits this variant
            _, arr, bad = build_column(rest, vtype)
            out.append((vtype, arr))
            return out, sorted({*unsafe, *bad})
        if (isinstance(fits, list) and any(fits)) or (not isinstance(fits, list) and pc.any(fits).as_py()):
            # fits also holds the null rows: only the variant's own values count
            _, arr, bad = build_column(_select(rest, fits), vtype)
            if arr.null_count < len(arr):
                out.append((vtype, arr))
                unsafe = sorted({*unsafe, *bad})
            rest = _select(rest, _invert(fits))
    vtype, arr, bad = build_column(rest, None)
    if not pa.types.is_null(vtype):
        out.append((vtype, arr))
    return out, sorted({*unsafe, *bad})
