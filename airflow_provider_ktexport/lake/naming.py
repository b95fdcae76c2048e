"""Column names and partition values: the reversible escaping rules of docs/schema-mapping.md.

Pure functions. A key keeps its spelling (``eventDate`` is the column ``eventDate``):

- each key is escaped by a percent rule (``%XX``) only where its name would otherwise be
  ambiguous or illegal, so escaped keys never start or end with ``_`` nor hold ``__``; the keys
  are joined by ``__``;
- a *case twin* (a key path whose name equals, ignoring case, a column the record type already
  publishes for another path) gets a *twin tag* ``___t<n>`` (:func:`twin_name`): Athena, Glue,
  Spark and DuckDB match names case-insensitively. Which spelling came first is the lake's
  schema store's decision (:func:`assign_name` given what it publishes), never a writer's;
- a *variant* column (values that do not fit the column's published type) is the column's name
  plus ``___<type>`` (``___string``, ``___double``...).

Because escaped names never hold ``___`` (two keys' ``_`` never meet across a ``__``), a tag can
never be mistaken for part of a key path, and every name splits back into its key path, twin
tag and variant type. Names of earlier versions carried a case tag ``___c<hex>`` on every name
with capitals; they decode too (:func:`column_path` drops every tag).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

import pyarrow as pa

from airflow_provider_ktexport.lake.layout import (
    PARTITION_KEYS,
    TIMESTAMP,
    is_safe_folder_name,
    safe_folder_name,
)

__all__ = [
    "PARTITION_KEYS",
    "PATH_METADATA_KEY",
    "TAG_SEP",
    "VARIANT_TAGS",
    "NameAssigner",
    "assign_name",
    "base_name",
    "case_tagged",
    "column_name",
    "column_path",
    "field_path",
    "is_meta_column",
    "is_safe_partition_value",
    "legacy_renames",
    "path_metadata",
    "published_names",
    "sanitize_partition_value",
    "twin_name",
    "twin_tag",
    "variant_name",
    "variant_tag",
    "variant_type",
]

#: Field metadata key holding the JSON list of the original key path of a data column.
PATH_METADATA_KEY = b"ktexport.path"
#: Separates a column's key path from its tags; escaped key paths never contain it.
TAG_SEP = "___"
_TWIN_TAG = "t"
_EMPTY_SEGMENT = "%-"

#: The variant suffix of each column type, and back (SQL type words people recognise).
VARIANT_TAGS: dict[pa.DataType, str] = {
    pa.bool_(): "boolean",
    pa.int64(): "bigint",
    pa.float64(): "double",
    TIMESTAMP: "timestamp",
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
    # of their own (U+212A KELVIN SIGN and "K" both become "k"), so case twins are told apart by
    # ASCII case alone, alike in every engine.
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


def column_name(path: tuple[str, ...]) -> str:
    """The plain column name of a key path (see docs/schema-mapping.md): the keys as spelt, escaped.

    Reversible by :func:`column_path` for any non-empty tuple of strings. Two paths may give
    names equal ignoring case (``speed``, ``Speed``): the lake's name for the later one is a
    :func:`twin_name` (see :func:`assign_name`).
    """
    if not path:
        raise ValueError("a column path needs at least one key")
    body = "__".join(seg if is_plain(seg) else escape_segment(seg) for seg in path)
    if len(path) == 1 and body.lower() in PARTITION_KEYS:
        # A record field called e.g. "record_type" must not shadow the hive partition key.
        body = _pct(body[0]) + body[1:]
    return body


def twin_name(path: tuple[str, ...], n: int) -> str:
    """The ``n``-th case twin's name of a key path: its plain name plus ``___t<n>`` (n >= 1)."""
    return f"{column_name(path)}{TAG_SEP}{_TWIN_TAG}{n}"


def assign_name(path: tuple[str, ...], published: Iterable[str]) -> str:
    """The name of key path ``path`` given the names a record type already publishes.

    The name published for the path when there is one; else its plain name, unless that equals a
    published name ignoring case, in which case the first free :func:`twin_name`. Writers get the
    same answer from the same published names; the schema store makes the first published
    spelling the one every writer sees (docs/schema-mapping.md).
    """
    return NameAssigner(published).assign(path)


class NameAssigner:
    """:func:`assign_name` for many paths over a growing list of published names.

    Naming a new record type's columns one after the other with :func:`assign_name` decoded every
    name so far for each column (quadratic: 1 of the 3.5 s of CPU publishing 50 new types of 47
    columns took). This reads each name once, as it is added.

    :param published: the names published so far, in publication order
    """

    def __init__(self, published: Iterable[str] = ()) -> None:
        # The first published base column of each key path, and every data name lower-cased.
        self._by_path: dict[tuple[str, ...], str] = {}
        self._taken: set[str] = set()
        for name in published:
            self.add(name)

    def add(self, name: str) -> None:
        """Count ``name`` as published (after those already added)."""
        if is_meta_column(name):  # metadata columns: no key path
            return
        if variant_tag(name) is None:
            self._by_path.setdefault(column_path(name), name)
        self._taken.add(name.lower())

    def assign(self, path: tuple[str, ...]) -> str:
        """The name of key path ``path`` (:func:`assign_name`); it is not added."""
        found = self._by_path.get(path)
        if found is not None:
            return found
        n = 0
        name = column_name(path)
        while name.lower() in self._taken:
            n += 1
            name = twin_name(path, n)
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


_TWIN_RE = re.compile(rf"{TAG_SEP}{_TWIN_TAG}[1-9][0-9]*$")


def twin_tag(name: str) -> str:
    """The twin tag of a base column name (``___t1``...), empty for a column that is no twin."""
    m = _TWIN_RE.search(base_name(name))
    return m.group(0) if m else ""


def is_meta_column(name: str) -> bool:
    """True for a metadata or partition column (no key path of a record)."""
    # Data columns never start with "_" (the escape rule), metadata columns always do; partition
    # columns (added by readers) are never data columns either.
    return name.startswith("_") or name in PARTITION_KEYS


def published_names(published: Iterable[str]) -> dict[tuple[str, ...], str]:
    """The published base column of each key path among ``published`` (a case twin's is its twin name)."""
    return {column_path(n): n for n in published if not is_meta_column(n) and variant_tag(n) is None}


_CASE_TAG_RE = re.compile(rf"{TAG_SEP}c[0-9a-f]+$")


def case_tagged(name: str) -> bool:
    """True for a name the previous version gave a case tag (``eventDate___c20``, its variants)."""
    return _CASE_TAG_RE.search(base_name(name)) is not None


def legacy_renames(names: Sequence[str]) -> dict[str, str]:
    """Old name -> this version's name, for each case-tagged name among a table's ``names``.

    Untagged names keep theirs (queries on them never break); a tagged name loses its tag, unless
    its plain name is taken ignoring case: then it is a twin, in the order of ``names``
    (publication order). Variants follow their column.
    """
    kept = [n for n in names if not case_tagged(n)]
    out: dict[str, str] = {}
    for name in sorted((n for n in names if case_tagged(n)), key=lambda n: variant_tag(n) is not None):
        old_base = base_name(name)
        base = out.get(old_base)
        if base is None:
            base = out[old_base] = assign_name(column_path(name), kept)
            kept.append(base)
        tag = variant_tag(name)
        out[name] = base if tag is None else f"{base}{TAG_SEP}{tag}"
    return {old: new for old, new in out.items() if old in names}


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

    Names written by earlier versions (case tags ``___c<hex>``, or no tags and case twins as
    ``%53peed``) decode too.
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
