"""Column names and partition values: the reversible escaping rules of docs/schema-mapping.md.

Pure functions. A column name is a function of the key path alone (never of which keys a writer
met first), so concurrent writers always agree on it:

- each key is escaped by a percent rule (``%XX``), so escaped keys never start or end with ``_``
  nor hold ``__``; the keys are joined by ``__``;
- a name holding upper-case letters gets a *case tag* ``___c<hex>`` (the bit mask of its
  upper-case letters), so two names never differ by case alone (Athena, Glue, Spark and DuckDB
  match names case-insensitively);
- a *variant* column (values that do not fit the column's published type) is the column's name
  plus ``___<type>`` (``___string``, ``___double``...).

Because escaped names never hold ``___`` (two keys' ``_`` never meet across a ``__``), a tag can
never be mistaken for part of a key path, and every name splits back into its key path, case
tag and variant type.
"""

from __future__ import annotations

import json
import re

import pyarrow as pa

from airflow_provider_ktexport.lake.layout import is_safe_folder_name, safe_folder_name

__all__ = [
    "PARTITION_KEYS",
    "PATH_METADATA_KEY",
    "TAG_SEP",
    "VARIANT_TAGS",
    "base_name",
    "column_name",
    "column_path",
    "field_path",
    "is_safe_partition_value",
    "path_metadata",
    "sanitize_partition_value",
    "variant_name",
    "variant_tag",
    "variant_type",
]

#: Field metadata key holding the JSON list of the original key path of a data column.
PATH_METADATA_KEY = b"ktexport.path"
#: Hive partition keys the lake may use; a data column never takes one of these names.
PARTITION_KEYS = ("record_type", "event_date", "ingest_date")
#: Separates a column's key path from its tags; escaped key paths never contain it.
TAG_SEP = "___"
_CASE_TAG = "c"
_EMPTY_SEGMENT = "%-"

_TIMESTAMP = pa.timestamp("us", tz="UTC")
#: The variant suffix of each column type, and back (SQL type words people recognise).
VARIANT_TAGS: dict[pa.DataType, str] = {
    pa.bool_(): "boolean",
    pa.int64(): "bigint",
    pa.float64(): "double",
    _TIMESTAMP: "timestamp",
    pa.string(): "string",
}
_TAG_TYPES = {tag: t for t, tag in VARIANT_TAGS.items()}


def _pct(c: str) -> str:
    return "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))


def _must_escape(c: str) -> bool:
    o = ord(c)
    if c in "%./" or o < 0x20 or 0x7F <= o <= 0x9F:
        return True
    # Non-ASCII capitals (and title-case letters) are escaped: engines lower-case them by rules
    # of their own (U+212A KELVIN SIGN and "K" both become "k"), so the case tag covers ASCII only.
    return o > 0x7F and c != c.lower()


def escape_segment(seg: str) -> str:
    """Escape one key: ``%XX`` for ``% . /``, control characters, non-ASCII capitals and edge ``_``."""
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
        else:
            out.append(c)
    return "".join(out)


def is_plain(seg: str) -> bool:
    """True when a key needs no escaping at all (the common case, checked without a loop)."""
    return (
        bool(seg)
        and seg.isascii()
        and seg.isprintable()
        and "%" not in seg
        and "." not in seg
        and "/" not in seg
        and ("_" not in seg or (seg[0] != "_" and seg[-1] != "_" and "__" not in seg))
    )


def _case_mask(body: str) -> int:
    """Bit i set when the i-th ASCII letter of ``body`` (outside ``%XX`` escapes) is upper-case."""
    mask = 0
    bit = 0
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == "%":  # escapes are always upper-case hex (or "%-"): they carry no case of their own
            i += 3 if body[i + 1 : i + 2] != "-" else 2
            continue
        if c.isascii() and c.isalpha():
            if c.isupper():
                mask |= 1 << bit
            bit += 1
        i += 1
    return mask


def column_name(path: tuple[str, ...]) -> str:
    """The column name of a key path (see docs/schema-mapping.md); a pure function of the path.

    Reversible by :func:`column_path` for any non-empty tuple of strings, and distinct from the
    name of every other path even when both are lower-cased.
    """
    if not path:
        raise ValueError("a column path needs at least one key")
    body = "__".join(seg if is_plain(seg) else escape_segment(seg) for seg in path)
    if len(path) == 1 and body.lower() in PARTITION_KEYS:
        # A record field called e.g. "record_type" must not shadow the hive partition key.
        body = _pct(body[0]) + body[1:]
    if body.islower() or not any("A" <= c <= "Z" for c in body):
        return body
    mask = _case_mask(body)
    return f"{body}{TAG_SEP}{_CASE_TAG}{mask:x}" if mask else body


_PCT_RUN = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _unescape_segment(seg: str) -> str:
    if seg == _EMPTY_SEGMENT:
        return ""
    if "%" not in seg:
        return seg
    return _PCT_RUN.sub(
        lambda m: bytes.fromhex(m.group(0).replace("%", "")).decode("utf-8", "surrogatepass"), seg
    )


def base_name(name: str) -> str:
    """The column a name belongs to: ``name`` without its variant tag (a column is its own base)."""
    head, sep, tag = name.rpartition(TAG_SEP)
    return head if sep and tag in _TAG_TYPES else name


def variant_tag(name: str) -> str | None:
    """The variant tag of a column name (``string``, ``double``...), None for a base column."""
    _, sep, tag = name.rpartition(TAG_SEP)
    return tag if sep and tag in _TAG_TYPES else None


def variant_type(name: str) -> pa.DataType | None:
    """The Arrow type a variant column always has (by its name), None for a base column."""
    tag = variant_tag(name)
    return None if tag is None else _TAG_TYPES[tag]


def variant_name(name: str, value_type: pa.DataType) -> str:
    """The column beside base column ``name`` that holds its values of ``value_type``."""
    tag = VARIANT_TAGS.get(value_type)
    if tag is None:
        raise ValueError(f"no variant column for type {value_type}")
    return f"{base_name(name)}{TAG_SEP}{tag}"


def column_path(name: str) -> tuple[str, ...]:
    """The key path a column name stands for (inverse of :func:`column_name`; tags are dropped).

    Names written by earlier versions (no tags, case twins as ``%53peed``) decode too.
    """
    if not name:
        raise ValueError("empty column name")
    body = name.split(TAG_SEP, 1)[0]
    return tuple(_unescape_segment(seg) for seg in body.split("__"))


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


# -- partitions ----------------------------------------------------------------------------------------

#: A safe hive partition value (the record type folder rule of :mod:`.layout`, for any value).
sanitize_partition_value = safe_folder_name
#: True for a value safe as one path segment (see :func:`.layout.is_safe_folder_name`).
is_safe_partition_value = is_safe_folder_name
