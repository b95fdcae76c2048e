"""The variant rule on typed tables (lake/variants.py): fitting files to published columns, folding back."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from airflow_provider_ktexport.lake.naming import path_metadata
from airflow_provider_ktexport.lake.types import TIMESTAMP
from airflow_provider_ktexport.lake.variants import (
    fit_table,
    fitted_columns,
    fold_variants,
    needs_fit,
    pad_table,
)

T0 = datetime(2026, 11, 25, 8, tzinfo=UTC)


def test_a_value_of_another_type_moves_to_its_own_variant_never_re_spelt() -> None:
    table = pa.table(
        {
            "when": pa.array([T0, None], TIMESTAMP),
            "odo": pa.array([100.0, 2.5]),
            "n": pa.array([1, 2**53 + 1]),
            "s": pa.array(["a", "b"]),
            "_record_key": pa.array(["k1", "k2"]),
        }
    )
    published = {"when": pa.string(), "odo": pa.string(), "n": pa.float64(), "s": pa.string()}
    assert needs_fit(table.schema, published)
    fitted = fit_table(table, published)
    types = dict(zip(fitted.column_names, fitted.schema.types, strict=True))
    # A time is not turned into text, nor 100.0 into "100": each keeps its type beside the column.
    assert types["when___timestamp"] == TIMESTAMP and "when" not in types
    assert fitted.column("odo___double").to_pylist() == [100.0, 2.5]
    # An int goes into a double column only when exact; 2^53 + 1 keeps its own int column.
    assert fitted.column("n").to_pylist() == [1.0, None] and types["n"] == pa.float64()
    assert fitted.column("n___bigint").to_pylist() == [None, 2**53 + 1]
    assert fitted.column("s").to_pylist() == ["a", "b"]
    assert fitted.column("_record_key").to_pylist() == ["k1", "k2"]
    assert not needs_fit(fitted.schema, published)


def test_old_spellings_are_renamed_by_key_path_and_null_columns_dropped() -> None:
    table = pa.table(
        {
            "%53peed": pa.array([1]),
            "eventDate___c20": pa.array(["x"]),
            "doc__ownerId___c40___string": pa.array(["y"]),
            "gone": pa.nulls(1),
        }
    )
    fitted = fit_table(table, {})
    assert fitted.column_names == ["Speed", "eventDate", "doc__ownerId___string"]
    meta = fitted.schema.field("Speed").metadata
    assert meta == path_metadata(("Speed",))


def test_old_spellings_of_a_case_twin_take_the_twin_name_the_lake_publishes() -> None:
    table = pa.table({"Speed___c1": pa.array([1]), "Speed___c1___string": pa.array(["x"]), "speed": [2]})
    fitted = fit_table(table, {"speed": pa.int64(), "Speed___t1": pa.int64()})
    assert fitted.column_names == ["speed", "Speed___t1", "Speed___t1___string"]
    assert fitted.column("Speed___t1").to_pylist() == [1]


def test_two_pieces_of_one_column_merge_where_rows_are_disjoint() -> None:
    # A file with a widened string column next to a variant already holding strings.
    table = pa.table({"h": pa.array(["x", None]), "h___string": pa.array([None, "y"])})
    fitted = fit_table(table, {"h": pa.int64()})
    assert fitted.column_names == ["h___string"]
    assert fitted.column("h___string").to_pylist() == ["x", "y"]


def test_fitted_columns_and_padding_give_every_file_the_same_columns() -> None:
    a = pa.schema([("h", pa.int64()), ("_record_key", pa.string())])
    b = pa.schema([("h", pa.string()), ("new", pa.bool_())])
    full = fitted_columns([a, b], {"h": pa.int64()})
    assert full == {"h": pa.int64(), "_record_key": pa.string(), "h___string": pa.string(), "new": pa.bool_()}
    padded = pad_table(fit_table(pa.table({"h": ["x"]}), {"h": pa.int64()}), full)
    assert padded.column_names == list(full)
    assert padded.to_pylist() == [{"h": None, "_record_key": None, "h___string": "x", "new": None}]


@pytest.mark.parametrize(
    ("mode", "expected_type", "expected"),
    [
        ("string", pa.string(), ["1", "2.5", "x", "true", "2026-11-25T08:00:00Z", None]),
        ("widest", pa.string(), ["1", "2.5", "x", "true", "2026-11-25T08:00:00Z", None]),
    ],
)
def test_fold_gives_one_column_of_json_text(
    mode: str, expected_type: pa.DataType, expected: list[object]
) -> None:
    table = pa.table(
        {
            "v": pa.array([1, None, None, None, None, None]),
            "v___double": pa.array([None, 2.5, None, None, None, None]),
            "v___string": pa.array([None, None, "x", None, None, None]),
            "v___boolean": pa.array([None, None, None, True, None, None]),
            "v___timestamp": pa.array([None, None, None, None, T0, None], TIMESTAMP),
        }
    )
    folded = fold_variants(table, mode)  # type: ignore[arg-type]
    assert folded.column_names == ["v"]
    assert folded.schema.field("v").type == expected_type
    assert folded.column("v").to_pylist() == expected


def test_fold_widest_keeps_numbers_numbers() -> None:
    table = pa.table(
        {"v": pa.array([1, None]), "v___double": pa.array([None, 2.5]), "w___string": ["a", "b"]}
    )
    folded = fold_variants(table, "widest")
    assert folded.column_names == ["v", "w"]
    assert folded.schema.field("v").type == pa.float64()
    assert folded.column("v").to_pylist() == [1.0, 2.5]
    assert folded.column("w").to_pylist() == ["a", "b"]
