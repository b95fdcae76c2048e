"""Records -> Arrow: naming, type lattice, fixed published types and variants, record keys, partitions."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ktexport.lake import arrowjson, columns, schema
from airflow_provider_ktexport.lake.naming import assign_name, base_name, twin_tag, variant_tag, variant_type
from airflow_provider_ktexport.lake.partitions import record_type_of
from airflow_provider_ktexport.lake.schema import (
    META_COLUMNS,
    TIMESTAMP,
    PartitionTable,
    build_tables,
    canonical_json,
    column_name,
    column_path,
    event_date,
    field_path,
    record_key,
    sanitize_partition_value,
    variant_name,
)
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.testing.records import RecordGenerator

NOW = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)


def _raw(records: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]


def build(
    records: list[dict[str, Any]], known: dict[str, pa.Schema] | None = None, **kw: Any
) -> list[PartitionTable]:
    known = known or {}
    return build_tables(
        _raw(records),
        [f"batch-{i // 2}" for i in range(len(records))],
        source="conn",
        ingested_at=NOW,
        known_schema=known.get,
        **kw,
    )


def one_table(records: list[dict[str, Any]], **kw: Any) -> pa.Table:
    """All records share a type and a partition: the single table."""
    parts = build(records, **kw)
    assert len(parts) == 1, [p.partition for p in parts]
    return parts[0].table


def by_path(table: pa.Table) -> dict[tuple[str, ...], pa.Field]:
    return {field_path(f): f for f in table.schema if f.name not in META_COLUMNS}


# -- naming ------------------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=5).map(tuple))
def test_column_name_round_trips_for_any_path(path: tuple[str, ...]) -> None:
    name = column_name(path)
    assert column_path(name) == path
    assert name and not name.startswith("_") and not name.endswith("_")
    assert name.lower() not in ("record_type", "event_date", "ingest_date")
    # A data column is never mistaken for a variant, and its variants lead back to it.
    assert variant_tag(name) is None and base_name(name) == name
    for t in (pa.string(), pa.float64(), TIMESTAMP):
        v = variant_name(name, t)
        assert base_name(v) == name and variant_type(v) == t and column_path(v) == path


_KEYS = st.text(alphabet="aAbB_.%é É\u212aK", max_size=4)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(_KEYS, min_size=1, max_size=3).map(tuple), min_size=2, max_size=4, unique=True))
def test_paths_published_in_turn_never_share_a_name_even_lower_cased(paths: list[tuple[str, ...]]) -> None:
    names: list[str] = []
    for p in paths:
        names.append(assign_name(p, names))
    assert len({n.lower() for n in names}) == len(names)
    assert [column_path(n) for n in names] == paths
    # A path already published keeps its name, whatever was published after it.
    assert [assign_name(p, names) for p in paths] == names
    # Nor does a variant of one ever equal (case-insensitively) another's name.
    assert not {variant_name(n, pa.string()).lower() for n in names} & {n.lower() for n in names}


def test_naming_examples() -> None:
    assert column_name(("location", "lat")) == "location__lat"
    assert column_name(("a.b",)) == "a%2Eb"
    assert column_name(("a__b",)) == "a%5F%5Fb"
    assert column_name(("_record_key",)) == "%5Frecord_key"
    assert column_name(("type",)) == "type"  # record fields keep their names...
    assert column_name(("record_type",)) == "%72ecord_type"  # ...unless they equal a partition key
    assert column_name(("",)) == "%-"
    assert column_name(("a/b", "x%")) == "a%2Fb__x%25"
    # A key keeps its spelling: the vendor's camelCase field is the column an analyst types.
    assert column_name(("Speed",)) == "Speed"
    assert column_name(("eventDate",)) == "eventDate"
    assert column_name(("doc", "ownerId")) == "doc__ownerId"
    assert column_name(("Öl",)) == "%C3%96l"  # non-ASCII capitals are escaped (engines fold them apart)
    assert variant_name("counters__hours", pa.string()) == "counters__hours___string"
    # dlt's spelling would be a real nested field here; ours cannot be.
    assert column_name(("counters", "hours", "v_double")) == "counters__hours__v_double"
    assert column_name(("counters", "hours", "_string")) == "counters__hours__%5Fstring"
    # Names of earlier versions (case tags) still decode to their key path.
    assert column_path("eventDate___c20") == ("eventDate",)
    assert column_path("location__Speed___c100___string") == ("location", "Speed")


def test_a_later_case_twin_gets_a_twin_tag() -> None:
    assert assign_name(("speed",), []) == "speed"
    assert assign_name(("Speed",), ["speed"]) == "Speed___t1"
    assert assign_name(("SPEED",), ["speed", "Speed___t1", "Speed___t1___string"]) == "SPEED___t2"
    assert assign_name(("Speed",), ["speed", "Speed___t1"]) == "Speed___t1"  # published: kept
    assert assign_name(("speed",), ["Speed", "speed___t1"]) == "speed___t1"
    assert assign_name(("_source",), ["_source"]) == "%5Fsource"  # metadata columns are no key's
    assert twin_tag("Speed___t1___double") == "___t1" and twin_tag("Speed") == ""
    assert (
        column_path("Speed___t1___double") == ("Speed",) and base_name("Speed___t1___double") == "Speed___t1"
    )


def test_dotted_double_underscore_and_nested_keys_get_distinct_columns() -> None:
    table = one_table([{"type": "t", "a.b": 1, "a__b": 2, "a": {"b": 3}}])
    cols = by_path(table)
    assert {p: table.column(f.name)[0].as_py() for p, f in cols.items() if p[0] != "type"} == {
        ("a.b",): 1,
        ("a__b",): 2,
        ("a", "b"): 3,
    }


def test_keys_differing_in_case_stay_distinct_case_insensitively(tmp_path: Path) -> None:
    built = one_table([{"type": "t", "Speed": 1, "speed": 2, "SPEED": 3}])
    # The lake decides the twins as it publishes them: the first spelling keeps its name.
    written = LakeWriter(LocalFileSystem(), str(tmp_path)).write(built, {"record_type": "t"})
    table = pq.read_table(written.path)
    data = [n for n in table.column_names if n not in META_COLUMNS]
    assert sorted(data) == ["SPEED", "Speed___t1", "speed___t2", "type"]
    assert len({n.lower() for n in data}) == len(data)
    cols = by_path(table)
    assert table.column(cols[("speed",)].name)[0].as_py() == 2
    assert table.column(cols[("Speed",)].name)[0].as_py() == 1
    assert table.column(cols[("SPEED",)].name)[0].as_py() == 3
    for path, field in cols.items():
        assert column_path(field.name) == path


def test_tables_spell_keys_as_sent_and_leave_twins_to_the_schema_store() -> None:
    alone = one_table([{"type": "t", "speed": 3, "Speed": 4, "eventDate": "x"}])
    cols = by_path(alone)
    assert (cols[("speed",)].name, cols[("Speed",)].name, cols[("eventDate",)].name) == (
        "speed",
        "Speed",
        "eventDate",
    )


def test_record_fields_named_like_partitions_or_metadata_are_kept() -> None:
    rec = {
        "type": "t",
        "date": "2026-01-02T03:04:05Z",
        "record_type": "x",
        "_record_key": "mine",
        "event_date": 5,
    }
    table = one_table([rec])
    cols = by_path(table)
    assert table.column(cols[("type",)].name)[0].as_py() == "t"
    assert table.column(cols[("record_type",)].name)[0].as_py() == "x"
    assert table.column(cols[("_record_key",)].name)[0].as_py() == "mine"
    assert table.column(cols[("event_date",)].name)[0].as_py() == 5
    assert table.column("_record_key")[0].as_py() == record_key(rec)
    assert cols[("date",)].name == "date"
    assert table.column("date")[0].as_py() == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


# -- type lattice --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected_type", "expected"),
    [
        ([1, 2.5], pa.float64(), [1.0, 2.5]),
        ([1, None, 3], pa.int64(), [1, None, 3]),
        ([1, "x"], pa.string(), ["1", "x"]),
        ([True, 1], pa.string(), ["true", "1"]),
        ([2**53, -(2**53)], pa.int64(), [2**53, -(2**53)]),
        # Integers stay integers: anything int64 holds lands as int64, exactly...
        ([2**53 + 1, 1], pa.int64(), [2**53 + 1, 1]),
        ([2**63 - 1, -(2**63)], pa.int64(), [2**63 - 1, -(2**63)]),
        # ...beyond it, or beside a float that could not hold it exactly, it is text.
        ([2**63, 1], pa.string(), [str(2**63), "1"]),
        ([2**53 + 1, 1.5], pa.string(), [str(2**53 + 1), "1.5"]),
        ([2**64, 1.5], pa.string(), [str(2**64), "1.5"]),
        ([[1, 2], []], pa.string(), ["[1,2]", "[]"]),
        ([{}, 3], pa.string(), ["{}", "3"]),
        (["2026-11-25T10:11:12.345Z", "2026-11-25T12:00:00+02:00"], TIMESTAMP, None),
        (["2026-11-25T10:11:12Z", "not a time"], pa.string(), ["2026-11-25T10:11:12Z", "not a time"]),
        (["2026-11-25T10:11:12Z", "2026-13-01T00:00:00Z"], pa.string(), None),
        (["2026-11-25T10:11:12"], pa.string(), ["2026-11-25T10:11:12"]),  # no zone: not an instant
        (["2026-11-25T10:11:12Z", 5], pa.string(), ["2026-11-25T10:11:12Z", "5"]),
    ],
)
def test_lattice(values: list[Any], expected_type: pa.DataType, expected: list[Any] | None) -> None:
    table = one_table([{"type": "t", "v": v} for v in values])
    assert table.schema.field("v").type == expected_type
    if expected is not None:
        assert table.column("v").to_pylist() == expected


def test_iso_timestamps_are_converted_to_utc() -> None:
    table = one_table(
        [{"type": "t", "v": "2026-11-25T12:00:00.5+02:00"}, {"type": "t", "v": "2026-11-25T10:11:12Z"}]
    )
    assert table.column("v").to_pylist() == [
        datetime(2026, 11, 25, 10, 0, 0, 500000, tzinfo=UTC),
        datetime(2026, 11, 25, 10, 11, 12, tzinfo=UTC),
    ]


def test_object_and_scalar_at_the_same_key_both_land() -> None:
    table = one_table([{"type": "t", "a": {"b": 1}}, {"type": "t", "a": 7}])
    assert table.column("a__b").to_pylist() == [1, None]
    assert table.column("a").to_pylist() == [None, 7]


def test_deep_nesting_and_unicode() -> None:
    deep: dict[str, Any] = {"leaf": "ü"}
    for i in range(50):
        deep = {f"k{i}": deep}
    table = one_table([{"type": "t", "d": deep, "名前": "Zoë 🚚"}])
    (path,) = [p for p in by_path(table) if p[0] == "d"]
    assert len(path) == 52 and path[-1] == "leaf"
    assert table.column(column_name(path))[0].as_py() == "ü"
    assert table.column("名前")[0].as_py() == "Zoë 🚚"


def test_all_rows_land_even_when_keys_appear_late() -> None:
    # pa.Table.from_pylist would drop "late" (absent from the first row).
    table = one_table([{"type": "t", "a": 1}] * 3 + [{"type": "t", "late": "x"}])
    assert table.column("late").to_pylist() == [None, None, None, "x"]


def test_a_field_seen_only_as_null_makes_no_column_until_a_value_arrives() -> None:
    t1 = one_table([{"type": "t", "a": 1, "n": None, "o": {"p": None}}] * 2)
    assert [n for n in t1.column_names if not n.startswith("_")] == ["a", "type"]
    assert not any(pa.types.is_null(f.type) for f in t1.schema)
    t2 = one_table([{"type": "t", "n": "x"}, {"type": "t", "n": None}], known={"t": t1.schema})
    assert t2.schema.field("n").type == pa.string() and t2.column("n").to_pylist() == ["x", None]
    assert t2.column("a").to_pylist() == [None, None]  # published, absent here: nulls at its type
    assert t2.schema.field("a").type == pa.int64()


def test_published_types_never_change_and_misfits_go_to_variants() -> None:
    t1 = one_table([{"type": "t", "n": 1, "f": 0.5, "s": "a", "ts": "2026-11-25T10:11:12Z", "gone": 1}])
    rows = [
        {"type": "t", "n": "3642h", "f": "93.7 km", "s": 7, "ts": "later"},
        {"type": "t", "n": 2, "f": 3, "s": "b", "ts": "2026-11-25T12:00:00+02:00"},
        {"type": "t", "n": 2.5, "f": 2**53 + 1},
    ]
    t2 = one_table(rows, known={"t": t1.schema})
    for name in ("n", "f", "s", "ts", "gone"):
        assert t2.schema.field(name).type == t1.schema.field(name).type, name
    got = {n: t2.column(n).to_pylist() for n in t2.column_names if not n.startswith("_")}
    assert got["n"] == [None, 2, None]
    # "3642h" and 2.5 do not fit int64; the lattice of the two is string (2.5 as its JSON text).
    assert got["n___string"] == ["3642h", None, "2.5"]
    assert got["f"] == [None, 3.0, None]  # an int fits float64 exactly...
    assert got["f___string"] == ["93.7 km", None, str(2**53 + 1)]  # ...2^53 + 1 does not
    assert got["s"] == ["7", "b", None]  # everything fits a string, as its JSON text
    assert got["ts"] == [None, datetime(2026, 11, 25, 10, 0, tzinfo=UTC), None]
    assert got["ts___string"] == ["later", None, None]
    assert got["gone"] == [None] * 3
    for f in t2.schema:
        if variant_tag(f.name) is not None:
            assert f.type == variant_type(f.name) and field_path(f) == column_path(base_name(f.name))
    # A value fitting a published variant goes there, not to a new one; string takes only strings.
    t3 = one_table([{"type": "t", "n": 1.5}], known={"t": t2.schema})
    assert t3.column("n___double").to_pylist() == [1.5] and t3.column("n___string").to_pylist() == [None]
    t4 = one_table([{"type": "t", "n": "y"}, {"type": "t", "n": 2.5}], known={"t": t3.schema})
    assert t4.column("n___string").to_pylist() == ["y", None]
    assert t4.column("n___double").to_pylist() == [None, 2.5]
    assert t4.schema.field("n").type == pa.int64()


def test_reader_path_keeps_ints_and_floats_apart_under_an_int_column(monkeypatch: pytest.MonkeyPatch) -> None:
    known = {"t": one_table([{"type": "t", "n": 1}]).schema}
    raws = _raw([{"type": "t", "n": v} for v in (2, 2.0, 3.5, None)])
    fast, slow, used = _both_paths(raws, monkeypatch, known_schema=known.get)
    assert used == [True]
    _assert_same(fast, slow)
    assert fast[0].table.column("n").to_pylist() == [2, None, None, None]
    assert fast[0].table.column("n___double").to_pylist() == [None, 2.0, 3.5, None]


def test_one_schema_per_record_type_across_partitions() -> None:
    parts = build(
        [
            {"type": "t", "date": "2026-11-01T00:00:00Z", "a": 1},
            {"type": "t", "date": "2026-11-02T00:00:00Z", "b": "x"},
            {"type": "u", "a": True},
        ]
    )
    t_parts = [p for p in parts if p.record_type == "t"]
    assert len(t_parts) == 2
    assert t_parts[0].table.schema == t_parts[1].table.schema
    assert {p.partition["event_date"] for p in t_parts} == {"2026-11-01", "2026-11-02"}
    (u,) = [p for p in parts if p.record_type == "u"]
    assert u.partition == {"record_type": "u", "event_date": "unknown"}
    assert u.table.schema.field("a").type == pa.bool_()


# -- nothing dropped --------------------------------------------------------------------------------------------


def _leaves(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def _as_stored(value: Any, typ: pa.DataType) -> Any:
    if pa.types.is_string(typ) and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if pa.types.is_timestamp(typ):
        return datetime.fromisoformat(value).astimezone(UTC)
    if pa.types.is_floating(typ):
        return float(value)
    return value


def test_every_value_of_a_mixed_set_lands() -> None:
    records = [
        {
            "type": "telemetry",
            "date": "2026-11-25T10:11:12Z",
            "owner": {"id": 1, "name": "A"},
            "zones": [1, {"b": 2}],
        },
        {"type": "telemetry", "date": "2026-11-25T11:00:00Z", "owner": {"id": 2.5}, "io": {}, "x.y": None},
        {"type": "telemetry", "date": "2026-11-25T12:00:00Z", "owner": "flat", "Speed": 1, "speed": True},
        {
            "type": "telemetry",
            "date": "2026-11-25T13:00:00Z",
            "big": 2**60,
            "s": "2026-11-25T10:11:12Z",
            "": "e",
        },
        {"type": "telemetry", "date": "2026-11-25T14:00:00Z", "s": "nope", "__": {"_": ["ü"]}},
    ]
    table = one_table(records)
    fields = by_path(table)
    rows = table.to_pylist()
    for record, row in zip(records, rows, strict=True):
        expected = {p: v for p, v in _leaves(record).items() if v is not None}
        got = {p: row[f.name] for p, f in fields.items() if row[f.name] is not None}
        assert set(got) == set(expected)
        for path, value in expected.items():
            assert got[path] == _as_stored(value, fields[path].type), path


def test_raw_column_keeps_the_original_text() -> None:
    raw = [b'{"type":"t","b":1,  "a":2.50}']
    (part,) = build_tables(raw, ["b1"], source="s", ingested_at=NOW, include_raw=True)
    assert part.table.column("_raw").to_pylist() == ['{"type":"t","b":1,  "a":2.50}']
    assert part.table.column("_batch_id").to_pylist() == ["b1"]
    assert part.table.column("_source").to_pylist() == ["s"]
    assert part.table.column("_ingested_at").to_pylist() == [NOW]
    assert part.batch_ids == frozenset({"b1"})


def test_a_record_that_is_not_an_object_raises() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        build_tables([b"[1,2]"], ["b"], source="s", ingested_at=NOW)
    with pytest.raises(ValueError):
        build_tables([b"{nope"], ["b"], source="s", ingested_at=NOW)


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
    (part,) = build_tables(_raw([record]), ["b"], source="s", ingested_at=NOW)
    assert part.table.column("_record_key").to_pylist() == [key]


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert (
        canonical_json({"b": 1, "a": {"d": "é", "c": [1.0, 1e16]}})
        == '{"a":{"c":[1.0,1e+16],"d":"é"},"b":1}'.encode()
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5))
def test_fast_record_key_equals_the_reference(record: dict[str, Any]) -> None:
    (part,) = build_tables(_raw([record]), ["b"], source="s", ingested_at=NOW)
    assert part.table.column("_record_key")[0].as_py() == record_key(record)


# -- partitions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "day"),
    [
        ({"date": "2026-11-25T23:30:00-02:00", "received": "2020-01-01T00:00:00Z"}, "2026-11-26"),
        ({"date": "garbage", "eventDate": "2026-11-24T10:00:00Z"}, "2026-11-24"),
        ({"date": 12345, "dateEnd": "2026-11-23T10:00:00.123Z"}, "2026-11-23"),
        ({"received": "2026-11-22"}, "2026-11-22"),
        ({"received": "2026-02-30T00:00:00Z"}, "unknown"),
        ({"date": "9999-12-31T23:59:59-23:59", "received": "2026-11-22"}, "2026-11-22"),  # beyond year 9999
        ({"type": "x"}, "unknown"),
    ],
)
def test_event_date(record: dict[str, Any], day: str) -> None:
    assert event_date(record) == day


def test_ingest_date_partition() -> None:
    parts = build(
        [{"type": "t", "date": "2020-01-01T00:00:00Z"}], partition_by=("record_type", "ingest_date")
    )
    assert parts[0].partition == {"record_type": "t", "ingest_date": "2026-11-26"}


@pytest.mark.parametrize(
    "value", ["../../etc", "..", ".hidden", "a/b", "a\\b", "k=v", "x\x00y\n", "", None, "%2F"]
)
def test_sanitized_partition_values_cannot_escape(value: object) -> None:
    safe = sanitize_partition_value(value)
    assert safe and "/" not in safe and "\\" not in safe and "=" not in safe and ".." not in safe
    assert not safe.startswith(".")
    assert all(ord(c) >= 0x20 for c in safe)


def test_sanitize_is_deterministic_distinct_and_bounded() -> None:
    assert sanitize_partition_value("../../etc") == "%2E%2E%2F.%2E%2Fetc"
    assert sanitize_partition_value("a/b") != sanitize_partition_value("a%2Fb")
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(sanitize_partition_value(long_a)) <= 120
    assert sanitize_partition_value(long_a) != sanitize_partition_value(long_b)
    assert sanitize_partition_value("telemetry") == "telemetry"


def test_hostile_record_type_is_sanitized_in_the_partition() -> None:
    parts = build([{"type": "../../etc"}, {"type": ""}, {"type": 5}])
    assert {p.record_type for p in parts} == {"%2E%2E%2F.%2E%2Fetc", "unknown"}
    for p in parts:
        assert "/" not in p.partition["record_type"]


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
    raws = _raw(RecordGenerator(3).records(150, 3000))
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


def test_an_int_beyond_2_to_53_fits_an_int64_column_but_not_a_double_one() -> None:
    t1 = one_table([{"type": "t", "n": 1, "f": 0.5}])
    t2 = one_table([{"type": "t", "n": 2**53 + 1, "f": 2**53 + 1}], known={"t": t1.schema})
    assert t2.column("n").to_pylist() == [2**53 + 1] and t2.schema.field("n").type == pa.int64()
    assert t2.column("f").to_pylist() == [None]
    assert t2.column("f___bigint").to_pylist() == [2**53 + 1]


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
    fast, slow, _ = _both_paths(_raw(records), monkeypatch)
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
    fast, slow, used = _both_paths(_raw(records), monkeypatch)
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
    fast, slow, _ = _both_paths(_raw(records), monkeypatch)
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
    raws = _raw([{**r, "type": "t"} for r in records])
    with pytest.MonkeyPatch.context() as m:
        fast, slow, _ = _both_paths(raws, m)
    _assert_same(fast, slow)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59),
    st.sampled_from(["%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"]),
)
def test_event_date_from_time_columns_equals_the_per_record_rule(
    when: datetime, offset_min: int, fmt: str
) -> None:
    sign = "-" if offset_min < 0 else "+"
    text = when.strftime(fmt) + f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    record = {"type": "t", "date": text}
    (part,) = build([record])
    assert part.partition["event_date"] == event_date(record)


# -- grouping by record type agrees with the decoded record ------------------------------------------------
# (A byte-level shortcut was tried and measured slower than msgspec's one-field decode: 1.1 vs 0.7 us.)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"telemetry","a":1}',
        b'{"type":"a","x":1,"type":"b"}',  # duplicate key: the last one wins, as in the dict
        b'{"type":"a","\\u0074ype":"b"}',  # the same key spelled with an escape
        b'{"type":"a","d":{"type":"b"}}',  # a nested "type" (not the record's)
        b'{"type":"a\\"b","x":1}',  # an escaped quote inside the value
        b'{"type":"caf\\u00e9"}',
        b'{"type":"","x":1}',
        b'{"type" : "spaced"}',
        b'{"x":1,"type":"later"}',
        b'{"type":5}',
        b'{"type":null}',
        b'{"type":"../../etc"}',
        b'{"x":"type"}',
    ],
)
def test_record_type_from_bytes_equals_the_decoded_record(raw: bytes) -> None:
    cache: dict[Any, str] = {}
    expected = record_type_of(json.loads(raw))
    assert schema._type_of(raw, cache) == expected
    assert schema._type_of(raw, cache) == expected  # and again from the cache


def test_record_type_with_invalid_utf8_is_refused() -> None:
    with pytest.raises(ValueError, match="utf-8"):
        schema._type_of(b'{"type":"\xff\xfe","x":1}', {})


def test_event_time_columns_name_the_columns_the_time_fields_land_in() -> None:
    # The drain finds each flush's oldest record time by these names.
    from airflow_provider_ktexport.lake.partitions import EVENT_TIME_COLUMNS, EVENT_TIME_FIELDS

    when = "2026-11-25T10:00:00Z"
    table = one_table([{"type": "t", **dict.fromkeys(EVENT_TIME_FIELDS, when)}])
    for name in EVENT_TIME_COLUMNS:
        assert table.schema.field(name).type == TIMESTAMP


def test_a_null_typed_column_in_a_known_schema_is_not_written() -> None:
    old = pa.schema([("spare", pa.null()), ("a", pa.int64())])  # as earlier versions published
    table = one_table([{"type": "t", "a": 1}], known={"t": old})
    assert "spare" not in table.column_names and table.column("a").to_pylist() == [1]
