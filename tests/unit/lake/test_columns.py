"""The JSON reader path equals the dict path (:mod:`.arrowjson`, :mod:`.columns`)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ktexport.lake import arrowjson, columns
from airflow_provider_ktexport.lake.schema import (
    PartitionTable,
    build_tables,
    record_key,
)
from airflow_provider_ktexport.testing.records import RecordGenerator
from tests.unit.lake.build_support import NOW, json_values, one_table, raws_of

# -- the reader path equals the dict path ------------------------------------------------------------------


def _dict_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrowjson, "read_columns", lambda raws, *a: None)


def _both_paths(
    raws: list[bytes], monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> tuple[list[PartitionTable], list[PartitionTable], list[bool]]:
    used: list[bool] = []
    real = arrowjson.read_columns

    def spy(group: Any, *args: Any) -> Any:
        found = real(group, *args)
        used.append(found is not None)
        return found

    ids = [f"batch-{i // 3}" for i in range(len(raws))]
    with monkeypatch.context() as m:
        m.setattr(arrowjson, "read_columns", spy)
        fast = build_tables(raws, ids, source="conn", ingested_at=NOW, **kw)
    with monkeypatch.context() as m:
        _dict_path_only(m)
        slow = build_tables(raws, ids, source="conn", ingested_at=NOW, **kw)
    return fast, slow, used


def _assert_same(fast: list[PartitionTable], slow: list[PartitionTable]) -> None:
    assert [(p.record_type, p.partition, p.batch_ids) for p in fast] == [
        (p.record_type, p.partition, p.batch_ids) for p in slow
    ]
    for f, s in zip(fast, slow, strict=True):
        assert f.table.schema.equals(s.table.schema, check_metadata=True), (f.table.schema, s.table.schema)
        assert f.table.equals(s.table, check_metadata=True)


def test_reader_path_equals_dict_path_on_generated_records(monkeypatch: pytest.MonkeyPatch) -> None:
    raws = raws_of(RecordGenerator(3).records(150, 3000))
    fast, slow, used = _both_paths(raws, monkeypatch)
    assert used.count(True) >= 4  # telemetry, event, trip, changenotification take the reader
    _assert_same(fast, slow)
    # Against a published schema (misfits to variants), with _raw.
    known = {
        p.record_type: p.table.schema
        for p in build_tables(raws[:50], ["b"] * 50, source="c", ingested_at=NOW)
    }
    fast, slow, used = _both_paths(raws[50:], monkeypatch, known_schema=known.get, include_raw=True)
    assert any(used)
    _assert_same(fast, slow)


def test_reader_path_keeps_ints_and_floats_apart_under_an_int_column(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {"t": one_table([{"type": "t", "n": 1}]).schema}
    raws = raws_of([{"type": "t", "n": v} for v in (2, 2.0, 3.5, None)])
    fast, slow, used = _both_paths(raws, monkeypatch, known_schema=known.get)
    assert used == [True]
    _assert_same(fast, slow)
    assert fast[0].table.column("n").to_pylist() == [2, None, None, None]
    assert fast[0].table.column("n___double").to_pylist() == [None, 2.0, 3.5, None]


NASTY = [
    # Each list is one record type's records: the reader takes or refuses it; the table is the same.
    [{"type": "t", "a": {"b": 1}}, {"type": "t", "a": None}, {"type": "t"}],
    [{"type": "t", "a": {"b": 1}}, {"type": "t", "a": {}}, {"type": "t", "a": {"b": None}}],
    [{"type": "t", "a": {"b": {}}}, {"type": "t", "a": {"b": {"c": 2}}}],
    [{"type": "t", "a": {}}],
    [{"type": "t", "a": {"b": None}}, {"type": "t", "x": {"y": {"z": None}}}],
    [{"type": "t", "n": 1}, {"type": "t", "n": 2.5}, {"type": "t", "n": 1e-7}, {"type": "t", "n": 1e16}],
    [{"type": "t", "n": 2**53}, {"type": "t", "n": -(2**53)}],
    [{"type": "t", "n": 2**53 + 1}],
    [{"type": "t", "n": 2**63 - 1}, {"type": "t", "n": -(2**63)}, {"type": "t", "n": 2**63}],
    [{"type": "t", "n": 2**64}, {"type": "t", "n": 0.5}],
    [{"type": "t", "n": 1.5}, {"type": "t", "n": 9007199254740993}],
    [{"type": "t", "l": [1, 2.5, {"b": 1, "a": None}]}, {"type": "t", "l": []}, {"type": "t", "l": None}],
    [{"type": "t", "l": [1e-9]}, {"type": "t", "l": [0.1]}],
    [{"type": "t", "l": ["2026-11-25T10:11:12Z"]}],
    [{"type": "t", "v": True}, {"type": "t", "v": 1}],
    [{"type": "t", "v": "x"}, {"type": "t", "v": 1}],
    [{"type": "t", "v": {"a": 1}}, {"type": "t", "v": 2}],
    [{"type": "t", "date": "2026-11-25T10:11:12Z"}, {"type": "t", "date": "2026-11-26T00:11:12Z"}],
    [{"type": "t", "date": "2026-11-25T10:11:12"}, {"type": "t", "date": "2026-11-25"}],
    [{"type": "t", "date": "2026-11-25T23:30:00-02:00", "received": "2026-01-01T00:00:00Z"}],
    [{"type": "t", "date": None, "eventDate": "2026-11-24T10:00:00.123456Z"}, {"type": "t", "date": "nope"}],
    [{"type": "t", "date": "0999-06-01T00:00:00Z"}, {"type": "t", "date": "9999-12-31T23:59:59-23:59"}],
    [{"type": "t", "Speed": 1, "speed": 2, "a.b": 3, "a__b": 4, "": 5, "_x": 6, "record_type": 7}],
    [{"type": "t", "s": "é\u0000\n\u2028🚚", "e": None}],
    [{"type": "t", "z": -0.0}, {"type": "t", "z": 1.0}],
]


@pytest.mark.parametrize("records", NASTY)
def test_reader_path_equals_dict_path_on_nasty_records(
    records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow, _ = _both_paths(raws_of(records), monkeypatch)
    _assert_same(fast, slow)


def test_tracks_with_floats_msgspec_spells_otherwise_take_the_reader_and_keep_canonical_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader's parse of a list says which rows hold such a float, at any depth: those rows
    get canonical text and key, the others msgspec's (equal for them)."""
    records = [
        {"type": "trip", "track": [{"lat": -33.9, "lon": 18.4, "d": [0.5, 1e-5]}], "n": 1},
        {"type": "trip", "track": [{"lat": 1e16, "lon": 0.0, "d": []}, {"lat": 2.0, "lon": 1.0, "d": None}]},
        {"type": "trip", "track": [{"lat": 2.5, "lon": -0.0, "d": [0.25]}], "grid": [[1.5, 1e-7], []]},
        {"type": "trip", "track": None, "grid": [[2.5]]},
        {"type": "trip", "track": [], "grid": None},
        {"type": "trip", "track": [{"lat": 1.25, "lon": 3.5e-4, "d": [123456.789]}]},
    ]
    fast, slow, used = _both_paths(raws_of(records), monkeypatch)
    # The reader, never the dict path: once on the records without their lists ("track" holds
    # most of the first record), then on the whole records, since "grid" shows up later.
    assert used == [True, True]
    _assert_same(fast, slow)
    table = fast[0].table
    canonical = [
        None if r.get("track") is None else json.dumps(r["track"], sort_keys=True, separators=(",", ":"))
        for r in records
    ]
    assert table.column("track").to_pylist() == canonical
    assert table.column("track").to_pylist()[0].endswith('"d":[0.5,1e-05],"lat":-33.9,"lon":18.4}]')
    assert table.column("_record_key").to_pylist() == [record_key(r) for r in records]


_TRACK = [{"date": "2026-11-25T10:11:12Z", "lat": -33.917123, "lon": 18.423456, "speed": 61}] * 30
LIST_HEAVY = [
    # The first record holds most of its bytes in lists: they are taken out before Arrow's reader.
    [{"type": "t", "track": _TRACK}, {"type": "t", "track": "text"}, {"type": "t", "track": 5}],
    [{"type": "t", "track": _TRACK}, {"type": "t", "track": None}, {"type": "t"}, {"type": "t", "track": []}],
    [{"type": "t", "track": _TRACK}, {"type": "t", "track": "2026-11-25T10:11:12Z"}],
    [{"type": "t", "track": _TRACK}, {"type": "t", "track": True}, {"type": "t", "track": 2.5}],
    [{"type": "t", "track": _TRACK, "n": 1}, {"type": "t", "track": {"p": 1}}],  # an object there
    [{"type": "t", "a": {"track": _TRACK}}, {"type": "t", "a": {"track": _TRACK[:2], "x": 1}}],
    [{"type": "t", "track": _TRACK}, {"type": "t", "track": _TRACK, "grid": [[1.5]]}],  # a new list
    [{"type": "t", "a": {"track": _TRACK}}, {"type": "t", "a": "flat"}],
    [{"type": "t", "track": [1e-5, 0.5] * 20}, {"type": "t", "track": [1e16] * 20}, {"type": "t", "v": 1e-7}],
    [{"type": "t", "track": ["1e5", "x0.00001", 0.00001, -0.00002, 10.00001] * 20, "n": 1e-6}],
    [{"type": "t", "track": [{"b": 1, "a": [2, {"d": None, "c": 3}]}] * 20, "v": 1}, {"type": "t", "v": 2}],
]


@pytest.mark.parametrize("records", LIST_HEAVY)
def test_lists_taken_out_before_the_reader_give_the_dict_paths_table(
    records: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[bool] = []
    real = columns._lists_apart

    def spy(raws: Any, paths: Any) -> Any:
        found = real(raws, paths)
        taken.append(found is not None)
        return found

    monkeypatch.setattr(columns, "_lists_apart", spy)
    fast, slow, _ = _both_paths(raws_of(records), monkeypatch)
    assert taken, "the list-heavy path was not tried"
    _assert_same(fast, slow)
    keys = [k for p in fast for k in p.table.column("_record_key").to_pylist()]
    assert sorted(keys) == sorted(record_key(r) for r in records)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.text(), max_size=8))
def test_the_float_check_on_encoded_text_never_passes_a_float_spelt_otherwise(values: list[Any]) -> None:
    text = msgspec.json.encode(values)
    if columns._floats_safe(text):
        assert text == json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()


def test_reader_path_handles_pretty_printed_and_integer_minus_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    raws = [
        b'{\n  "type": "t",\n  "a": {"b": 1}\n}',
        b'{"type":"t","a":{"b":-0}}',
        b'{"type":"t","d":"x"}\r\n',
    ]
    fast, slow, _ = _both_paths(raws, monkeypatch)
    _assert_same(fast, slow)
    assert fast[0].table.column("a__b").to_pylist() == [1, 0, None]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.sampled_from(["a", "b", "A", "c.d", "date", ""]), json_values, max_size=4),
        min_size=1,
        max_size=5,
    )
)
def test_reader_path_equals_dict_path_for_any_records(records: list[dict[str, Any]]) -> None:
    raws = raws_of([{**r, "type": "t"} for r in records])
    with pytest.MonkeyPatch.context() as m:
        fast, slow, _ = _both_paths(raws, m)
    _assert_same(fast, slow)
