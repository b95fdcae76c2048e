"""Record keys: pinned vectors, canonical JSON, the fast key equals the reference."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ktexport.lake.schema import (
    build_tables,
    canonical_json,
    record_key,
)
from tests.unit.lake.build_support import NOW, json_values, raws_of

# -- record keys ----------------------------------------------------------------------------------------------

VECTORS = [
    ({"type": "telemetry", "id": 1}, "8cb3b258eca6ae554461682544c25e18"),
    (
        {"type": "événement", "owner": {"name": "Zoë 🚚", "id": 7}, "b": [1, 2.5, {"y": None, "x": True}]},
        "ff2784da6f40cf1811ed0e35662b4ace",
    ),
    ({"z": 1e-05, "a": 1e16, "m": 0.1, "n": -0.0}, "d720343467e6a2ae3661ce616ca894ed"),
    ({}, "2afb9b83f9314e5d029766197f539792"),
]


@pytest.mark.parametrize(("record", "key"), VECTORS)
def test_record_key_vectors(record: dict[str, Any], key: str) -> None:
    assert record_key(record) == key
    # build_tables takes a faster encoder when it can: the key must not change.
    (part,) = build_tables(raws_of([record]), ["b"], source="s", ingested_at=NOW)
    assert part.table.column("_record_key").to_pylist() == [key]


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert (
        canonical_json({"b": 1, "a": {"d": "é", "c": [1.0, 1e16]}})
        == '{"a":{"c":[1.0,1e+16],"d":"é"},"b":1}'.encode()
    )


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5))
def test_fast_record_key_equals_the_reference(record: dict[str, Any]) -> None:
    (part,) = build_tables(raws_of([record]), ["b"], source="s", ingested_at=NOW)
    assert part.table.column("_record_key")[0].as_py() == record_key(record)
