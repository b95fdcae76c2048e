"""Test helper shared by the lake tests: land records the way the drain does."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from airflow_provider_ktexport.lake.schema import build_tables
from airflow_provider_ktexport.lake.writer import LakeWriter, WrittenFile

INGESTED_AT = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)


def land(
    writer: LakeWriter,
    records: Sequence[dict[str, Any]],
    *,
    source: str = "conn",
    batch_id: str = "b",
    ingested_at: datetime = INGESTED_AT,
    known: Callable[[str], pa.Schema | None] | None = None,
) -> list[WrittenFile]:
    """Build against the lake's published schema, then write every partition (as a flush does)."""
    parts = build_tables(
        [json.dumps(r).encode() for r in records],
        [batch_id] * len(records),
        source=source,
        ingested_at=ingested_at,
        known_schema=writer.load_schema if known is None else known,
    )
    return [writer.write(p.table, p.partition) for p in parts]


def parquet_files(root: Path) -> list[Path]:
    """Every Parquet file under ``root`` (a local lake), sorted."""
    return sorted(root.rglob("*.parquet"))


def trips(seqs: range) -> list[dict]:
    """Trip records ending on one day, numbered by ``seq`` (what the compaction tests land)."""
    return [{"type": "trip", "dateEnd": "2026-11-25T10:00:00Z", "seq": i} for i in seqs]
