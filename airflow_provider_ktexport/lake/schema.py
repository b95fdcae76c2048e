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


def _infer(values: list[Any]) -> tuple[pa.DataType, pa.Array | None]:
    """The lattice type of a column's values, and the array when inference already built it."""
    kinds = set(map(type, values))
    kinds.discard(_NoneType)
    if not kinds:
        return pa.null(), None
    if kinds == {str}:
        ts = _timestamps(values)
        return (TIMESTAMP, ts) if ts is not None else (pa.string(), None)
    if kinds == {bool}:
        return pa.bool_(), None
    if kinds <= {int, float}:
        if int in kinds:
            ints = [v for v in values if type(v) is int]
            if min(ints) < -MAX_INT_EXACT or max(ints) > MAX_INT_EXACT:
                return pa.string(), None  # never through float: it would round the value
        return (pa.int64(), None) if kinds == {int} else (pa.float64(), None)
    return pa.string(), None


def _build(values: list[Any], target: pa.DataType, inferred: pa.DataType, built: pa.Array | None) -> pa.Array:
    if built is not None and target == inferred:
        return built
    if pa.types.is_null(target) or pa.types.is_null(inferred):
        return pa.nulls(len(values), target)
    if pa.types.is_string(target):
        if pa.types.is_string(inferred) or pa.types.is_timestamp(inferred):
            # Strings (also time strings going into a string column) keep their original text.
            if all(type(v) is str or v is None for v in values):
                return pa.array(values, pa.string())
        return pa.array([_json_text(v) for v in values], pa.string())
    if pa.types.is_timestamp(target):
        return built if built is not None else pc.cast(pa.array(values, pa.string()), TIMESTAMP)
    return pa.array(values, target)


# -- flattening -----------------------------------------------------------------------------------------


class _Flattener:
    """Flattens decoded records into {canonical column name: value}, caching escaped keys."""

    def __init__(self) -> None:
        self.paths: dict[str, tuple[str, ...]] = {}
        self._top: dict[str, str] = {}
        self._inner: dict[str, str] = {}

    def _seg(self, key: str, top: bool) -> str:
        cache = self._top if top else self._inner
        esc = cache.get(key)
        if esc is None:
            esc = column_name((key,)) if top else (key if _is_plain(key) else _escape_segment(key))
            cache[key] = esc
        return esc

    def flatten(self, record: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Returns the flat row and whether msgspec may compute its record key."""
        out: dict[str, Any] = {}
        safe = True
        paths = self.paths
        stack: list[tuple[str, tuple[str, ...], dict[str, Any]]] = [("", (), record)]
        while stack:
            prefix, ppath, obj = stack.pop()
            for k, v in obj.items():
                name = prefix + self._seg(k, not prefix)
                t = type(v)
                if t is dict and v:
                    stack.append((name + "__", (*ppath, k), v))
                    continue
                if name not in paths:
                    paths[name] = (*ppath, k)
                if t is float:
                    if safe and not _float_safe(v):
                        safe = False
                elif t is list and safe:
                    safe = _fast_safe(v)
                out[name] = v
        return out, safe


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
    if len(raw_records) != len(batch_ids):
        raise ValueError("raw_records and batch_ids differ in length")
    for key in partition_by:
        if key not in PARTITION_KEYS:
            raise ValueError(f"unknown partition key {key!r}; use some of {PARTITION_KEYS}")
    if ingested_at.tzinfo is None:
        ingested_at = ingested_at.replace(tzinfo=UTC)
    ingest_day = ingested_at.astimezone(UTC).strftime("%Y-%m-%d")
    flattener = _Flattener()
    by_type: dict[str, list[int]] = {}
    rows: list[dict[str, Any]] = []
    keys: list[str] = []
    parts: list[tuple[str, ...]] = []
    want_event = "event_date" in partition_by
    for i, raw in enumerate(raw_records):
        record = _decode(raw)
        row, safe = flattener.flatten(record)
        rows.append(row)
        keys.append(_record_key_fast(record, safe))
        rtype = record_type_of(record)
        by_type.setdefault(rtype, []).append(i)
        values = {"record_type": rtype, "ingest_date": ingest_day}
        if want_event:
            values["event_date"] = event_date(record)
        parts.append(tuple(values[k] for k in partition_by))

    result: list[PartitionTable] = []
    for rtype, idx in by_type.items():
        table = _type_table(
            rtype,
            idx,
            rows,
            keys,
            flattener.paths,
            raw_records,
            batch_ids,
            source=source,
            ingested_at=ingested_at,
            include_raw=include_raw,
            known=known_schema(rtype),
        )
        groups: dict[tuple[str, ...], list[int]] = {}
        for pos, i in enumerate(idx):
            groups.setdefault(parts[i], []).append(pos)
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


def _type_table(
    rtype: str,
    idx: list[int],
    rows: list[dict[str, Any]],
    keys: list[str],
    all_paths: dict[str, tuple[str, ...]],
    raw_records: Sequence[bytes],
    batch_ids: Sequence[str],
    *,
    source: str,
    ingested_at: datetime,
    include_raw: bool,
    known: pa.Schema | None,
) -> pa.Table:
    """One record type's rows as a table at the widened (known + inferred) schema."""
    trows = [rows[i] for i in idx]
    n = len(trows)
    present: set[str] = set()
    for row in trows:
        present.update(row)
    known_by_path = _known_paths(known)
    names = _assign_names({c: all_paths[c] for c in present}, known_by_path)
    columns: dict[str, tuple[pa.Field, pa.Array]] = {}
    for canon in present:
        name = names[canon]
        path = all_paths[canon]
        values = [row.get(canon) for row in trows]
        inferred, built = _infer(values)
        target = inferred
        if known is not None and name in known.names:
            target = widen_type(known.field(name).type, inferred)
        meta = {PATH_METADATA_KEY: json.dumps(list(path), ensure_ascii=False).encode("utf-8")}
        columns[name] = (pa.field(name, target, metadata=meta), _build(values, target, inferred, built))

    meta_arrays: dict[str, pa.Array] = {
        "_record_key": pa.array([keys[i] for i in idx], pa.string()),
        "_batch_id": pa.array([batch_ids[i] for i in idx], pa.string()),
        "_ingested_at": pa.repeat(pa.scalar(ingested_at, TIMESTAMP), n),
        "_source": pa.repeat(pa.scalar(source, pa.string()), n),
    }
    if include_raw or (known is not None and "_raw" in known.names):
        raws = [bytes(raw_records[i]).decode("utf-8") for i in idx] if include_raw else [None] * n
        meta_arrays["_raw"] = pa.array(raws, pa.string())

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
