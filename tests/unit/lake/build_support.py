"""Test helpers shared by the lake's schema tests: build records into partition tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

from airflow_provider_ktexport.lake.schema import (
    META_COLUMNS,
    PartitionTable,
    build_tables,
    field_path,
)

NOW = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)


def raws_of(records: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in records]


def build(
    records: list[dict[str, Any]], known: dict[str, pa.Schema] | None = None, **kw: Any
) -> list[PartitionTable]:
    known = known or {}
    return build_tables(
        raws_of(records),
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


#: Any JSON value (hypothesis).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)
