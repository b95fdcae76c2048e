"""Records -> Arrow tables: the type lattice, fixed published types and variants, nothing dropped."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from airflow_provider_ktexport.lake.naming import base_name, variant_tag, variant_type
from airflow_provider_ktexport.lake.schema import (
    TIMESTAMP,
    build_tables,
    column_name,
    column_path,
    field_path,
)
from tests.unit.lake.build_support import NOW, build, by_path, one_table

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


def test_an_int_beyond_2_to_53_fits_an_int64_column_but_not_a_double_one() -> None:
    t1 = one_table([{"type": "t", "n": 1, "f": 0.5}])
    t2 = one_table([{"type": "t", "n": 2**53 + 1, "f": 2**53 + 1}], known={"t": t1.schema})
    assert t2.column("n").to_pylist() == [2**53 + 1] and t2.schema.field("n").type == pa.int64()
    assert t2.column("f").to_pylist() == [None]
    assert t2.column("f___bigint").to_pylist() == [2**53 + 1]


def test_a_null_typed_column_in_a_known_schema_is_not_written() -> None:
    old = pa.schema([("spare", pa.null()), ("a", pa.int64())])  # as earlier versions published
    table = one_table([{"type": "t", "a": 1}], known={"t": old})
    assert "spare" not in table.column_names and table.column("a").to_pylist() == [1]


def test_record_types_read_by_the_caller_group_the_records_as_reading_them_here_would() -> None:
    """``build_tables(record_types=)`` (the drain's buffer read each type already) gives the same
    tables; a None stands for a record whose type is read here."""
    raws = [
        b'{"type":"a","v":1}',
        b'{"type":"b/c","v":2}',
        b'{"v":3}',
        b'{"type":5,"v":4}',
        b'{"type":"a","v":5}',
    ]
    when = datetime(2026, 12, 1, tzinfo=UTC)
    plain = build_tables(raws, ["b"] * 5, source="s", ingested_at=when)
    given = build_tables(
        raws, ["b"] * 5, source="s", ingested_at=when, record_types=["a", "b%2Fc", "unknown", None, "a"]
    )
    assert [(p.record_type, p.table.to_pylist()) for p in given] == [
        (p.record_type, p.table.to_pylist()) for p in plain
    ]
    # The given folder is the one used (it is not read again).
    moved = build_tables(raws, ["b"] * 5, source="s", ingested_at=when, record_types=["x"] * 5)
    assert [p.record_type for p in moved] == ["x"]
    with pytest.raises(ValueError, match="record_types differ in length"):
        build_tables(raws, ["b"] * 5, source="s", ingested_at=when, record_types=["a"])
