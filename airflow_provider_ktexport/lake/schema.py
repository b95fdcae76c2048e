"""Records (raw JSON bytes) -> typed Arrow tables, one schema per record type.

Pure functions, no I/O. The rules are documented for users in ``docs/schema-mapping.md``:

- nested objects are flattened into columns joined by ``__``; every key is escaped by one
  reversible percent rule (:func:`column_name` / :func:`column_path`), so no two paths share a
  column and no data column can be mistaken for a partition key or a ``_`` metadata column;
- column types come from a lattice (null < bool; null < int64 < float64; timestamp; string on
  top), widened against the lake's published schema so types only ever widen;
- nothing is dropped or nulled: a value that does not fit its column's type is stored as its
  JSON text in a string column.
"""

from __future__ import annotations

import gc
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "META_COLUMNS",
    "PARTITION_KEYS",
    "PATH_METADATA_KEY",
    "RECORD_KEY_HASH",
    "PartitionTable",
    "build_tables",
    "canonical_json",
    "column_name",
    "column_path",
    "event_date",
    "field_path",
    "record_key",
    "sanitize_partition_value",
    "widen",
    "widen_type",
]

RECORD_KEY_HASH = "blake2b-128"
#: Field metadata key holding the JSON list of the original key path of a data column.
PATH_METADATA_KEY = b"ktexport.path"
#: Hive partition keys the lake may use; a data column never takes one of these names.
PARTITION_KEYS = ("record_type", "event_date", "ingest_date")
TIMESTAMP = pa.timestamp("us", tz="UTC")
#: Metadata columns added to every row, in table order (``_raw`` only when asked for).
META_COLUMNS: dict[str, pa.DataType] = {
    "_record_key": pa.string(),
    "_batch_id": pa.string(),
    "_ingested_at": TIMESTAMP,
    "_source": pa.string(),
    "_raw": pa.string(),
}
EVENT_TIME_FIELDS = ("date", "eventDate", "dateEnd", "received")
MAX_INT_EXACT = 2**53
_PARTITION_MAX_LEN = 100
_EMPTY_SEGMENT = "%-"
_NoneType = type(None)

# RFC 3339 shape: a date, a time with at least minutes, fraction up to microseconds (finer
# would lose digits) and a zone (Z or offset). Arrow's cast then rejects impossible dates.
_ISO_TS_RE = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?(Z|[+-][0-9]{2}:?[0-9]{2})$"
)
_ISO_TS = re.compile(_ISO_TS_RE)
# event_date is a partition choice, not a stored value: it also takes a bare date, or a time
# without zone (read as UTC).
_ISO_LOOSE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:?[0-9]{2})?)?$"
)


# -- canonical JSON and record keys ----------------------------------------------------------------


def canonical_json(record: object) -> bytes:
    """The record's canonical JSON: keys sorted, separators ``(",", ":")``, UTF-8, no ASCII escaping.

    Floats are written as Python's ``json`` module writes them (``1e+16``, ``0.1``).
    """
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def record_key(record: object) -> str:
    """32 hex characters: blake2b (digest_size=16) of :func:`canonical_json`; never changes between versions."""
    return hashlib.blake2b(canonical_json(record), digest_size=16).hexdigest()


def _float_safe(v: float) -> bool:
    # msgspec writes exactly what json.dumps writes for a float unless repr() uses an exponent,
    # which Python does below 1e-4 and from 1e16 on.
    return v == 0.0 or 1e-4 <= abs(v) < 1e16


def _fast_safe(obj: Any) -> bool:
    """True when msgspec's sorted encoding of ``obj`` equals :func:`canonical_json` (pinned by tests)."""
    t = type(obj)
    if t is float:
        return _float_safe(obj)
    if t is dict:
        return all(_fast_safe(v) for v in obj.values())
    if t is list:
        return all(_fast_safe(v) for v in obj)
    return True


def _record_key_fast(record: dict[str, Any], safe: bool) -> str:
    data = msgspec.json.encode(record, order="sorted") if safe else canonical_json(record)
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# -- column naming -----------------------------------------------------------------------------------


def _pct(c: str) -> str:
    return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))


def _must_escape(c: str) -> bool:
    o = ord(c)
    return c in "%./" or o < 0x20 or 0x7F <= o <= 0x9F


def _escape_segment(seg: str, fold: int = 0) -> str:
    """Escape one key. ``fold`` 1 also escapes upper-case letters, 2 every cased letter."""
    if not seg:
        return _EMPTY_SEGMENT
    last = len(seg) - 1
    out = []
    for i, c in enumerate(seg):
        if _must_escape(c):
            out.append(_pct(c))
        elif c == "_" and (i == 0 or i == last or seg[i - 1] == "_" or seg[i + 1] == "_"):
            # Escaped segments never start/end with "_" nor hold "__": "__" is only ever a separator.
            out.append("%5F")
        elif fold and (c != c.lower() if fold == 1 else c.lower() != c.upper()):
            out.append(_pct(c))
        else:
            out.append(c)
    return "".join(out)


def _is_plain(seg: str) -> bool:
    # Fast path: most keys need no escaping at all.
    return (
        bool(seg)
        and seg.isprintable()
        and "%" not in seg
        and "." not in seg
        and "/" not in seg
        and ("_" not in seg or (seg[0] != "_" and seg[-1] != "_" and "__" not in seg))
    )


def column_name(path: tuple[str, ...], *, fold: int = 0) -> str:
    """The column name of a key path: escaped keys joined by ``__`` (see docs/schema-mapping.md).

    Reversible by :func:`column_path` for any non-empty tuple of strings. ``fold`` > 0 gives the
    case-insensitively distinct spellings used when two keys differ only in case.
    """
    if not path:
        raise ValueError("a column path needs at least one key")
    name = "__".join(seg if (fold == 0 and _is_plain(seg)) else _escape_segment(seg, fold) for seg in path)
    if len(path) == 1 and name.lower() in PARTITION_KEYS:
        # A record field called e.g. "record_type" must not shadow the hive partition key.
        name = _pct(name[0]) + name[1:]
    return name


_PCT_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _unescape_segment(seg: str) -> str:
    if seg == _EMPTY_SEGMENT:
        return ""
    if "%" not in seg:
        return seg
    return _PCT_RUN.sub(
        lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode("utf-8", "surrogatepass"), seg
    )


def column_path(name: str) -> tuple[str, ...]:
    """The key path a column name stands for (inverse of :func:`column_name`)."""
    if not name:
        raise ValueError("empty column name")
    return tuple(_unescape_segment(seg) for seg in name.split("__"))


def field_path(field: pa.Field) -> tuple[str, ...]:
    """The original key path of a data column: from its metadata, else decoded from its name."""
    meta = field.metadata or {}
    raw = meta.get(PATH_METADATA_KEY)
    if raw is not None:
        return tuple(json.loads(raw))
    return column_path(field.name)


def _uppercase_count(path: tuple[str, ...]) -> int:
    return sum(1 for seg in path for c in seg if c != c.lower())


def _assign_names(paths: dict[str, tuple[str, ...]], known: dict[tuple[str, ...], str]) -> dict[str, str]:
    """Map each canonical name to its final, case-insensitively unique column name.

    Existing (known) names keep theirs; new ones are taken in order of (upper-case letters,
    canonical name) and get the first free spelling of: canonical, upper-case letters
    percent-encoded, every cased letter percent-encoded.
    """
    taken = {n.lower() for n in known.values()} | {m.lower() for m in META_COLUMNS}
    result: dict[str, str] = {}
    new: list[tuple[int, str, tuple[str, ...]]] = []
    for canon, path in paths.items():
        if path in known:
            result[canon] = known[path]
        else:
            new.append((_uppercase_count(path), canon, path))
    # Group by lower-case so names with no case clash keep their canonical spelling cheaply.
    groups: dict[str, int] = {}
    for _, canon, _p in new:
        low = canon.lower()
        groups[low] = groups.get(low, 0) + 1
    for _, canon, path in sorted(new):
        low = canon.lower()
        if groups[low] == 1 and low not in taken:
            name = canon
        else:
            for fold in (0, 1, 2):
                name = column_name(path, fold=fold)
                if name.lower() not in taken:
                    break
            else:  # pragma: no cover - fold 2 leaves no letter outside escapes, so it is always free
                raise ValueError(f"cannot name column for key path {path!r}")
        taken.add(name.lower())
        result[canon] = name
    return result


# -- partitions ----------------------------------------------------------------------------------------

_PARTITION_UNSAFE = set('/\\=%:*?"<>|#')


def sanitize_partition_value(value: object) -> str:
    """A safe hive partition value: never a path separator, ``..``, control character or ``=``.

    Unsafe characters (``/ \\ = % : * ? " < > | #``, control characters, a leading ``.`` and a
    ``.`` following another ``.``) are percent-encoded (readers decode them: DuckDB and pyarrow
    both do); ``None``/empty becomes ``unknown``; values longer than 100 characters are cut and
    get a hash suffix so distinct values stay distinct.
    """
    text = "" if value is None else str(value)
    if not text:
        return "unknown"
    out = []
    prev = ""
    for i, c in enumerate(text):
        o = ord(c)
        if c in _PARTITION_UNSAFE or o < 0x20 or 0x7F <= o <= 0x9F or (c == "." and (i == 0 or prev == ".")):
            out.append(_pct(c))
        else:
            out.append(c)
        prev = c
    safe = "".join(out)
    if len(safe) > _PARTITION_MAX_LEN:
        cut = safe[:_PARTITION_MAX_LEN]
        pos = cut.rfind("%", len(cut) - 2)
        if pos != -1:  # never cut an escape in half
            cut = cut[:pos]
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        safe = f"{cut}~{digest}"
    return safe


def is_safe_partition_value(value: str) -> bool:
    """True for a value :func:`sanitize_partition_value` could have produced (checked before writing)."""
    if not value or len(value) > _PARTITION_MAX_LEN + 17 or value.startswith(".") or ".." in value:
        return False
    return not any(c in "/\\=" or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value)


def _parse_loose(value: object) -> datetime | None:
    if type(value) is not str or not _ISO_LOOSE.match(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def event_date(record: dict[str, Any]) -> str:
    """UTC day ``YYYY-MM-DD`` of the first of date, eventDate, dateEnd, received that parses; else ``unknown``.

    Never the ingestion day: a redelivered copy lands in the same partition as the first.
    """
    for name in EVENT_TIME_FIELDS:
        parsed = _parse_loose(record.get(name))
        if parsed is not None:
            return parsed.strftime("%Y-%m-%d")
    return "unknown"


def record_type_of(record: dict[str, Any]) -> str:
    """The sanitised record type: the record's ``type`` if a non-empty string, else ``unknown``."""
    t = record.get("type")
    return sanitize_partition_value(t) if type(t) is str and t else "unknown"


# -- type lattice ----------------------------------------------------------------------------------------


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


def _json_text(v: Any) -> str | None:
    if v is None or type(v) is str:
        return v
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _timestamps(values: list[Any]) -> pa.Array | None:
    """The column as UTC timestamps when every non-null value is a strict ISO-8601 time, else None."""
    first = next((v for v in values if v is not None), None)
    if first is None or not _ISO_TS.match(first):
        return None
    arr = pa.array(values, pa.string())
    if not pc.all(pc.match_substring_regex(arr, _ISO_TS_RE)).as_py():
        return None
    try:
        return pc.cast(arr, TIMESTAMP)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _infer(values: list[Any]) -> tuple[pa.DataType, pa.Array | None, set[type]]:
    """The lattice type of a column's values, the array when inference already built it, and the
    Python types seen."""
    kinds = set(map(type, values))
    kinds.discard(_NoneType)
    if not kinds:
        return pa.null(), None, kinds
    if kinds == {str}:
        ts = _timestamps(values)
        return (TIMESTAMP, ts, kinds) if ts is not None else (pa.string(), None, kinds)
    if kinds == {bool}:
        return pa.bool_(), None, kinds
    if kinds <= {int, float}:
        if int in kinds:
            ints = [v for v in values if type(v) is int]
            if min(ints) < -MAX_INT_EXACT or max(ints) > MAX_INT_EXACT:
                return pa.string(), None, kinds  # never through float: it would round the value
        return (pa.int64() if kinds == {int} else pa.float64()), None, kinds
    return pa.string(), None, kinds


def _build(
    values: list[Any], target: pa.DataType, inferred: pa.DataType, built: pa.Array | None, kinds: set[type]
) -> pa.Array:
    if built is not None and target == inferred:
        return built
    if pa.types.is_null(target) or pa.types.is_null(inferred):
        return pa.nulls(len(values), target)
    if pa.types.is_string(target):
        if kinds == {str}:
            # Strings (also time strings going into a string column) keep their original text.
            return pa.array(values, pa.string())
        return pa.array([_json_text(v) for v in values], pa.string())
    if pa.types.is_timestamp(target):
        return built if built is not None else pc.cast(pa.array(values, pa.string()), TIMESTAMP)
    return pa.array(values, target)


# -- flattening -----------------------------------------------------------------------------------------


class _Columns:
    """Flattens one record type's records straight into per-column value lists (padded with None).

    A trie of raw keys caches each key path's escaped name and its value list, so a path is
    escaped once per call and each leaf costs one dict lookup and one append.
    """

    def __init__(self) -> None:
        self.paths: dict[str, tuple[str, ...]] = {}
        self.cols: dict[str, list[Any]] = {}
        self._root: dict[str, list[Any]] = {}

    def _entry(self, node: dict[str, Any], key: str, parent: list[Any] | None) -> list[Any]:
        if parent is None:
            path: tuple[str, ...] = (key,)
            name = column_name(path)
        else:
            path = (*parent[2], key)
            name = parent[0] + "__" + (key if _is_plain(key) else _escape_segment(key))
        ent = [name, {}, path, None]  # name, children, path, values
        node[key] = ent
        return ent

    def _values(self, ent: list[Any]) -> list[Any]:
        lst: list[Any] = []
        ent[3] = self.cols[ent[0]] = lst
        self.paths[ent[0]] = ent[2]
        return lst

    def add(self, record: dict[str, Any], j: int) -> None:
        """Append row ``j`` (0-based) from ``record``."""
        self._walk(record, self._root, None, j)

    def _walk(self, obj: dict[str, Any], node: dict[str, Any], parent: list[Any] | None, j: int) -> None:
        for k, v in obj.items():
            ent = node.get(k)
            if ent is None:
                ent = self._entry(node, k, parent)
            if v.__class__ is dict and v:
                self._walk(v, ent[1], ent, j)
                continue
            lst = ent[3]
            if lst is None:
                lst = self._values(ent)
            if len(lst) != j:
                lst.extend([None] * (j - len(lst)))
            lst.append(v)

    def finish(self, n: int) -> dict[str, list[Any]]:
        """The columns, each padded to ``n`` rows."""
        for lst in self.cols.values():
            if len(lst) != n:
                lst.extend([None] * (n - len(lst)))
        return self.cols


# -- building tables --------------------------------------------------------------------------------------


@dataclass
class PartitionTable:
    """The rows of one partition of one record type, at that record type's schema."""

    record_type: str
    partition: dict[str, str]
    table: pa.Table
    batch_ids: frozenset[str]


def _decode(raw: Any) -> dict[str, Any]:
    try:
        record = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"record is not valid JSON: {exc}") from exc
    if type(record) is not dict:
        raise ValueError(f"record is not a JSON object but {type(record).__name__}")
    return record


def _known_paths(known: pa.Schema | None) -> dict[tuple[str, ...], str]:
    if known is None:
        return {}
    return {field_path(f): f.name for f in known if f.name not in META_COLUMNS}


def build_tables(
    raw_records: Sequence[bytes],
    batch_ids: Sequence[str],
    *,
    source: str,
    ingested_at: datetime,
    partition_by: Sequence[str] = ("record_type", "event_date"),
    include_raw: bool = False,
    known_schema: Callable[[str], pa.Schema | None] = lambda t: None,
) -> list[PartitionTable]:
    """Decode, flatten and type records into one Arrow table per partition.

    :param raw_records: each record's own JSON bytes
    :param batch_ids: the batch id of each record (same length as ``raw_records``)
    :param source: the value of ``_source`` (the connection id)
    :param ingested_at: the value of ``_ingested_at`` (and of the ``ingest_date`` partition)
    :param partition_by: partition keys, among ``record_type``, ``event_date``, ``ingest_date``
    :param include_raw: add ``_raw``, each record's original JSON text
    :param known_schema: the lake's published schema of a record type (or None); the tables are
        built at its types widened by the new data, so a type never narrows
    :raises ValueError: a record is not a JSON object
    """
    # Millions of short-lived, acyclic objects (decoded records, column lists) trigger the
    # cyclic GC over and over: measured 4x slower decoding with it on. Nothing here makes cycles.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _build_tables(
            raw_records,
            batch_ids,
            source=source,
            ingested_at=ingested_at,
            partition_by=partition_by,
            include_raw=include_raw,
            known_schema=known_schema,
        )
    finally:
        if was_enabled:
            gc.enable()


def _build_tables(
    raw_records: Sequence[bytes],
    batch_ids: Sequence[str],
    *,
    source: str,
    ingested_at: datetime,
    partition_by: Sequence[str],
    include_raw: bool,
    known_schema: Callable[[str], pa.Schema | None],
) -> list[PartitionTable]:
    if len(raw_records) != len(batch_ids):
        raise ValueError("raw_records and batch_ids differ in length")
    for key in partition_by:
        if key not in PARTITION_KEYS:
            raise ValueError(f"unknown partition key {key!r}; use some of {PARTITION_KEYS}")
    if ingested_at.tzinfo is None:
        ingested_at = ingested_at.replace(tzinfo=UTC)
    ingest_day = ingested_at.astimezone(UTC).strftime("%Y-%m-%d")
    records = [_decode(raw) for raw in raw_records]
    type_cache: dict[Any, str] = {}
    by_type: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        t = record.get("type")
        rtype = type_cache.get(t) if type(t) is str else "unknown"
        if rtype is None:
            rtype = type_cache[t] = record_type_of(record)
        by_type.setdefault(rtype, []).append(i)

    result: list[PartitionTable] = []
    for rtype, idx in by_type.items():
        trecords = [records[i] for i in idx]
        table = _type_table(
            trecords,
            [batch_ids[i] for i in idx],
            [raw_records[i] for i in idx] if include_raw else None,
            source=source,
            ingested_at=ingested_at,
            known=known_schema(rtype),
        )
        groups: dict[tuple[str, ...], list[int]] = {}
        fixed = {"record_type": rtype, "ingest_date": ingest_day}
        for pos, record in enumerate(trecords):
            part = tuple(fixed[k] if k in fixed else event_date(record) for k in partition_by)
            groups.setdefault(part, []).append(pos)
        for part, positions in groups.items():
            sub = table if len(positions) == len(idx) else table.take(pa.array(positions, pa.int64()))
            result.append(
                PartitionTable(
                    record_type=rtype,
                    partition=dict(zip(partition_by, part, strict=True)),
                    table=sub,
                    batch_ids=frozenset(batch_ids[idx[p]] for p in positions),
                )
            )
    return result


def _unsafe_rows(values: list[Any], kinds: set[type]) -> list[int]:
    """Rows whose record key msgspec cannot compute (a float json.dumps writes with an exponent)."""
    if float not in kinds and list not in kinds and dict not in kinds:
        return []
    return [
        j
        for j, v in enumerate(values)
        if (type(v) is float and not _float_safe(v)) or (type(v) in (list, dict) and not _fast_safe(v))
    ]


def _type_table(
    records: list[dict[str, Any]],
    batch_ids: list[str],
    raws: list[bytes] | None,
    *,
    source: str,
    ingested_at: datetime,
    known: pa.Schema | None,
) -> pa.Table:
    """One record type's rows as a table at the widened (known + inferred) schema."""
    n = len(records)
    flattener = _Columns()
    for j, record in enumerate(records):
        flattener.add(record, j)
    cols = flattener.finish(n)
    names = _assign_names({c: flattener.paths[c] for c in cols}, _known_paths(known))
    columns: dict[str, tuple[pa.Field, pa.Array]] = {}
    unsafe: set[int] = set()
    for canon, values in cols.items():
        name = names[canon]
        inferred, built, kinds = _infer(values)
        unsafe.update(_unsafe_rows(values, kinds))
        target = inferred
        if known is not None and name in known.names:
            target = widen_type(known.field(name).type, inferred)
        meta = {
            PATH_METADATA_KEY: json.dumps(list(flattener.paths[canon]), ensure_ascii=False).encode("utf-8")
        }
        columns[name] = (
            pa.field(name, target, metadata=meta),
            _build(values, target, inferred, built, kinds),
        )

    meta_arrays: dict[str, pa.Array] = {
        "_record_key": pa.array(
            [_record_key_fast(r, j not in unsafe) for j, r in enumerate(records)], pa.string()
        ),
        "_batch_id": pa.array(batch_ids, pa.string()),
        "_ingested_at": pa.repeat(pa.scalar(ingested_at, TIMESTAMP), n),
        "_source": pa.repeat(pa.scalar(source, pa.string()), n),
    }
    if raws is not None:
        meta_arrays["_raw"] = pa.array([bytes(raw).decode("utf-8") for raw in raws], pa.string())
    elif known is not None and "_raw" in known.names:
        meta_arrays["_raw"] = pa.nulls(n, pa.string())

    fields: list[pa.Field] = []
    arrays: list[pa.Array] = []
    seen: set[str] = set()
    if known is not None:
        for kf in known:
            seen.add(kf.name)
            if kf.name in columns:
                f, arr = columns[kf.name]
            elif kf.name in meta_arrays:
                arr = meta_arrays[kf.name]
                f = pa.field(kf.name, widen_type(kf.type, arr.type))
                arr = arr.cast(f.type) if arr.type != f.type else arr
            else:  # a column this batch does not have: nulls at the published type
                f, arr = kf, pa.nulls(n, kf.type)
            fields.append(f)
            arrays.append(arr)
    for name in sorted(columns):
        if name not in seen:
            f, arr = columns[name]
            fields.append(f)
            arrays.append(arr)
    for name, arr in meta_arrays.items():
        if name not in seen:
            fields.append(pa.field(name, arr.type))
            arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
