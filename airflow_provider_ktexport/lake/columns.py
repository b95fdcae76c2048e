"""One record type's records -> column values by key path, and each record's key.

Two paths give the same columns (a differential test holds them equal):
:func:`reader_columns` takes Arrow's C++ JSON reader over the raw bytes where it provably
follows the lake's rules (:mod:`.arrowjson`), and decodes each record only for its key and the
few values the reader cannot show (lists, null or ``{}`` objects); :func:`dict_columns` decodes
and flattens every record in Python and defines the result. Either way each decoded record is
dropped at once, so a flush never holds all its dicts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from airflow_provider_ktexport.lake import arrowjson
from airflow_provider_ktexport.lake.keys import fast_key, record_key
from airflow_provider_ktexport.lake.types import SORTED_ENCODER, canonical_text

__all__ = ["decode_record", "dict_columns", "reader_columns"]

_MISSING = object()
#: A float msgspec spells otherwise than canonical JSON (``json.dumps``) has an exponent
#: (msgspec ``1e16``, canonical ``1e+16``: a digit then ``e``) or is below 1e-4 written out
#: (msgspec ``0.00001``, canonical ``1e-05``). :func:`_floats_safe` finds both in C-speed steps.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_SMALL_FLOAT = re.compile(rb"(?<![0-9])-?0\.0000[0-9]")
#: A record type whose first record holds at least this share of its bytes in lists has its lists
#: taken out before Arrow's reader (:func:`_lists_apart`): parsing a 100-point track
#: into structs that are then thrown away cost the reader more than all the rest of a trip.
_LIST_HEAVY = 0.5
_ENCODER = msgspec.json.Encoder()


class _Columns:
    """Flattens one record type's records straight into per-column value lists (padded with None).

    A trie of raw keys caches each key path and its value list, so each leaf costs one dict
    lookup and one append.
    """

    def __init__(self) -> None:
        self.cols: dict[tuple[str, ...], list[Any]] = {}
        self._root: dict[str, list[Any]] = {}

    def _entry(self, node: dict[str, Any], key: str, parent: list[Any] | None) -> list[Any]:
        path: tuple[str, ...] = (key,) if parent is None else (*parent[2], key)
        ent: list[Any] = [None, {}, path, None]  # (unused), children, path, values
        node[key] = ent
        return ent

    def _values(self, ent: list[Any]) -> list[Any]:
        lst: list[Any] = []
        ent[3] = self.cols[ent[2]] = lst
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

    def finish(self, n: int) -> dict[tuple[str, ...], list[Any]]:
        """The columns by key path, each padded to ``n`` rows."""
        for lst in self.cols.values():
            if len(lst) != n:
                lst.extend([None] * (n - len(lst)))
        return self.cols


def decode_record(raw: Any) -> dict[str, Any]:
    try:
        record = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"record is not valid JSON: {exc}") from exc
    if type(record) is not dict:
        raise ValueError(f"record is not a JSON object but {type(record).__name__}")
    return record


def dict_columns(raws: Sequence[Any]) -> tuple[dict[tuple[str, ...], list[Any]], list[str]]:
    """The dict path: decode, key and flatten record by record (each dict dropped at once)."""
    flattener = _Columns()
    keys: list[str] = []
    for j, raw in enumerate(raws):
        record = decode_record(raw)
        keys.append(fast_key(record))
        flattener.add(record, j)
    return flattener.finish(len(raws)), keys


def _probe(record: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = record
    for key in path:
        if type(value) is not dict:
            return _MISSING
        value = value.get(key, _MISSING)
    return value


def _list_text(record: dict[str, Any], path: tuple[str, ...], value: Any, safe: bool) -> str | None:
    """A list's column text, as the dict path writes it (:func:`.types.build_column`); None if absent.

    Written here because the reader already proved which rows' floats msgspec spells as canonical
    JSON does (``safe``): the dict path walks every value of the list in Python to find out. In a
    safe row the list is then replaced in ``record`` by its encoded text (``msgspec.Raw``), so the
    record key's encoding copies those bytes instead of encoding every point a second time.
    """
    if value is _MISSING or value is None:
        return None
    if not safe:
        return canonical_text(value)
    text = SORTED_ENCODER.encode(value)
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = msgspec.Raw(text)
    return text.decode("utf-8")


def _list_paths(obj: dict[str, Any], parent: tuple[str, ...], out: list[tuple[str, ...]]) -> None:
    """The key path of each list in ``obj`` and its nested objects (not inside lists)."""
    for k, v in obj.items():
        t = v.__class__
        if t is list:
            out.append((*parent, k))
        elif t is dict:
            _list_paths(v, (*parent, k), out)


def _heavy_list_paths(raws: Sequence[Any]) -> list[tuple[str, ...]]:
    """The list paths of the first record when they hold most of its bytes (:data:`_LIST_HEAVY`), else []."""
    if not raws:
        return []
    first = decode_record(raws[0])
    paths: list[tuple[str, ...]] = []
    _list_paths(first, (), paths)
    listed = sum(len(SORTED_ENCODER.encode(_probe(first, path))) for path in paths)
    return paths if listed >= _LIST_HEAVY * len(raws[0]) else []


def _floats_safe(text: bytes) -> bool:
    """Whether msgspec's encoding ``text`` spells every float as canonical JSON does.

    A match inside a string is a false alarm that only sends its row to the canonical encoder
    (property-tested against :func:`.types.float_safe`).
    """
    if b"0e" in text.translate(_DIGITS_AS_ZERO):
        return False
    return b"0.0000" not in text or _SMALL_FLOAT.search(text) is None


def _at(record: dict[str, Any], path: tuple[str, ...]) -> tuple[Any, Any]:
    """The object holding ``path``'s last key (None if there is none) and the value (or _MISSING)."""
    parent: Any = _probe(record, path[:-1]) if len(path) > 1 else record
    if parent.__class__ is not dict:
        return None, _MISSING
    return parent, parent.get(path[-1], _MISSING)


def _lists_apart(
    raws: Sequence[Any], paths: list[tuple[str, ...]]
) -> tuple[list[bytes], dict[tuple[str, ...], list[Any]], list[str]] | None:
    """Each record without its values at ``paths`` (for Arrow's reader), those values, and keys.

    A list's column is its canonical JSON text whatever Arrow would parse it into, and parsing a
    100-point track into structs that are then thrown away cost the reader more than all the
    rest of a trip. Here each list is encoded once by msgspec (its floats checked on the encoded
    text in C, :func:`_floats_safe`), spliced into the record for its key as ``msgspec.Raw``
    (as :func:`_list_text` does), and left out of what Arrow reads. The values at ``paths`` that
    are not lists are kept as decoded, so the column types them as the dict path does (a list
    text beside a string or a number makes a string column there too). None when a record holds
    an object at one of ``paths``: that flattens into columns of its own (the caller then takes
    the usual reader path).
    """
    columns: list[list[Any]] = [[] for _ in paths]
    rest: list[bytes] = []
    keys: list[str] = []
    for raw in raws:
        record = decode_record(raw)
        found = [_at(record, path) for path in paths]
        if any(value.__class__ is dict for _, value in found):
            return None
        texts = [SORTED_ENCODER.encode(value) if value.__class__ is list else None for _, value in found]
        safe = all(text is None or _floats_safe(text) for text in texts)
        if safe:
            for (parent, _), path, text in zip(found, paths, texts, strict=True):
                if text is not None:
                    parent[path[-1]] = msgspec.Raw(text)
        keys.append(fast_key(record) if safe else record_key(record))
        for (parent, value), path, text, values in zip(found, paths, texts, columns, strict=True):
            if value is _MISSING:
                values.append(None)
                continue
            if text is None:
                values.append(value)
            else:
                values.append(text.decode("utf-8") if safe else canonical_text(value))
            del parent[path[-1]]
        rest.append(_ENCODER.encode(record))
    return rest, dict(zip(paths, columns, strict=True)), keys


def reader_columns(
    raws: Sequence[Any], value_paths: frozenset[tuple[str, ...]] = frozenset()
) -> tuple[dict[tuple[str, ...], Any], list[str]] | None:
    """The reader path (see :mod:`.arrowjson`); None when it cannot give the dict path's table.

    :param value_paths: key paths whose numbers are needed as decoded (see ``arrowjson.VALUE``)
    """
    apart = _lists_apart(raws, paths) if (paths := _heavy_list_paths(raws)) else None
    if apart is not None:
        found = arrowjson.read_columns(apart[0], value_paths)
        if found is None:
            return None
        if not found.probes:  # else (a rare shape) read the whole records as below
            return {**found.leaves, **apart[1]}, apart[2]
    found = arrowjson.read_columns(raws, value_paths)
    if found is None:
        return None
    columns: dict[tuple[str, ...], Any] = dict(found.leaves)
    probed: list[tuple[tuple[str, ...], Any, list[Any]]] = [
        (path, kind, []) for path, kind in found.probes.items()
    ]
    unsafe = found.unsafe_list_rows
    keys: list[str] = []
    for j, raw in enumerate(raws):
        record = decode_record(raw)
        safe = j not in unsafe
        for path, kind, values in probed:
            value = _probe(record, path)
            if kind == arrowjson.LIST:
                values.append(_list_text(record, path, value, safe))
            elif kind == arrowjson.VALUE:
                values.append(None if value is _MISSING else value)
            else:  # an object path: the dict path makes a column of its null and {} values
                values.append(value if value is None or value == {} else _MISSING)
        # After the lists (spliced in as text). A row whose lists hold a float msgspec spells
        # otherwise takes the canonical path; the reader's floats outside lists are checked (and
        # such rows keyed again) by the caller.
        keys.append(fast_key(record) if safe else record_key(record))
    for path, kind, values in probed:
        if kind == arrowjson.LIST or kind == arrowjson.VALUE:
            columns[path] = values
        elif any(v is not _MISSING for v in values):
            columns[path] = [None if v is _MISSING else v for v in values]
    return columns, keys
