"""Column names and partition values: the reversible escaping rules of docs/schema-mapping.md.

Pure functions. A column name is the key path's escaped keys joined by ``__``; escaped keys never
start or end with ``_`` nor hold ``__``, so :func:`column_path` inverts :func:`column_name`.
"""

from __future__ import annotations

import hashlib
import json
import re

import pyarrow as pa

__all__ = [
    "PARTITION_KEYS",
    "PATH_METADATA_KEY",
    "assign_names",
    "column_name",
    "column_path",
    "field_path",
    "is_safe_partition_value",
    "path_metadata",
    "sanitize_partition_value",
]

#: Field metadata key holding the JSON list of the original key path of a data column.
PATH_METADATA_KEY = b"ktexport.path"
#: Hive partition keys the lake may use; a data column never takes one of these names.
PARTITION_KEYS = ("record_type", "event_date", "ingest_date")
_PARTITION_MAX_LEN = 100
_EMPTY_SEGMENT = "%-"


def _pct(c: str) -> str:
    return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))


def _must_escape(c: str) -> bool:
    o = ord(c)
    return c in "%./" or o < 0x20 or 0x7F <= o <= 0x9F


def escape_segment(seg: str, fold: int = 0) -> str:
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


def is_plain(seg: str) -> bool:
    """True when a key needs no escaping at all (the common case, checked without a loop)."""
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
    name = "__".join(seg if (fold == 0 and is_plain(seg)) else escape_segment(seg, fold) for seg in path)
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


def path_metadata(path: tuple[str, ...]) -> dict[bytes, bytes]:
    """The field metadata of a data column: its key path as JSON under ``ktexport.path``."""
    return {PATH_METADATA_KEY: json.dumps(list(path), ensure_ascii=False).encode("utf-8")}


def field_path(field: pa.Field) -> tuple[str, ...]:
    """The original key path of a data column: from its metadata, else decoded from its name."""
    meta = field.metadata or {}
    raw = meta.get(PATH_METADATA_KEY)
    if raw is not None:
        return tuple(json.loads(raw))
    return column_path(field.name)


def _uppercase_count(path: tuple[str, ...]) -> int:
    return sum(1 for seg in path for c in seg if c != c.lower())


def assign_names(
    paths: dict[str, tuple[str, ...]], known: dict[tuple[str, ...], str], reserved: set[str]
) -> dict[str, str]:
    """Map each canonical name to its final, case-insensitively unique column name.

    Existing (known) names keep theirs; new ones are taken in order of (upper-case letters,
    canonical name) and get the first free spelling of: canonical, upper-case letters
    percent-encoded, every cased letter percent-encoded. ``reserved`` (lower-case) names are
    never taken (the metadata columns).
    """
    taken = {n.lower() for n in known.values()} | reserved
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
