"""The iterative envelope scanner (_jsonscan.py) against msgspec, the reference it stands in for."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ktexport.api.scan import scan

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
_LAYOUTS = st.sampled_from(
    [
        {"separators": (",", ":")},
        {"separators": (", ", ": ")},
        {"indent": 2},
        {"indent": "\t", "ensure_ascii": False},
        {"separators": (" ,\r\n", " : ")},
    ]
)


def _reference(body: bytes) -> tuple[list[tuple[str, bytes]], list[bytes] | None]:
    top = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    items = top.get("items")
    raw_items = None
    if items is not None and bytes(items)[:1] == b"[":
        raw_items = [bytes(r) for r in msgspec.json.decode(items, type=list[msgspec.Raw])]
    return [(k, bytes(v)) for k, v in top.items()], raw_items


@settings(max_examples=150, deadline=None)
@given(
    items=st.lists(_VALUES, max_size=6),
    extra=st.dictionaries(st.sampled_from(["id", "next", "meta", "é"]), _VALUES, max_size=3),
    layout=_LAYOUTS,
    items_first=st.booleans(),
)
def test_the_scanner_gives_the_same_raw_bytes_as_msgspec(
    items: list, extra: dict, layout: dict, items_first: bool
) -> None:
    envelope = {"items": items, **extra} if items_first else {**extra, "items": items}
    body = json.dumps(envelope, **layout).encode()
    found = scan(body)
    assert found.error is None, (found.error, body)
    keys, raw_items = _reference(body)
    assert found.keys == keys
    assert found.items == raw_items


@settings(max_examples=150, deadline=None)
@given(items=st.lists(_VALUES, min_size=1, max_size=4), cut=st.integers(min_value=0))
def test_a_cut_body_is_never_taken_for_a_whole_one(items: list, cut: int) -> None:
    body = json.dumps({"id": "b-1", "items": items}).encode()
    head = body[: cut % len(body)]
    found = scan(head)
    assert found.error is not None
    # Whatever was seen before the cut is a real top-level key with its whole value.
    whole = scan(body).keys
    assert found.keys == whole[: len(found.keys)]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"[1,2]", "not a batch object"),
        (b"  ", "ends before"),
        (b'{"id":"x",}', "expected a key"),
        (b'{"id" "x"}', "expected ':'"),
        (b'{"id":tru}', "not JSON"),
        (b'{"items":[1 2]}', "is not JSON"),
        (b'{"items":[{"a":1]]}', "brackets do not match"),
        (b'{"items":[{"a":"x}]}', "not closed"),
        (b'{"items":[]} x', "follows the end"),
    ],
)
def test_malformed_envelopes_are_named(body: bytes, fragment: str) -> None:
    found = scan(body)
    assert found.error is not None and fragment in found.error, found.error


def test_a_hundred_thousand_levels_need_no_recursion() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    found = scan(b'{"id":"d","items":[' + deep + b"," + deep + b"]}")
    assert found.error is None
    assert found.items == [deep, deep]


def test_each_key_keeps_where_its_value_sits_repeats_and_escapes_included() -> None:
    body = b'{ "id" : "A" ,"items":[{"id":"r"}], "i\\u0064":\t7 , "items" :[] }'
    found = scan(body)
    assert found.error is None
    assert [key for key, _ in found.keys] == ["id", "items", "id", "items"]
    assert [body[start:end] for start, end in found.spans] == [raw for _, raw in found.keys]
    assert [raw for _, raw in found.keys] == [b'"A"', b'[{"id":"r"}]', b"7", b"[]"]
    cut = scan(b'{"id":"A","items":[{"id":"r"},')  # cut short: the id before the cut only
    assert cut.error is not None and [key for key, _ in cut.keys] == ["id"] and cut.spans == [(6, 9)]
