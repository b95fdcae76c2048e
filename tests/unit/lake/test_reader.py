"""Reading the lake: a table per record type, fitted to the published columns; DuckDB and pandas agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.lake.reader import read_lake, read_lake_pandas, read_lake_table
from airflow_provider_ktexport.lake.writer import LakeWriter
from tests.lake_support import land, parquet_files


def test_read_lake_gives_a_table_per_record_type_and_folds_on_request(
    writer: LakeWriter, tmp_path: Path
) -> None:
    land(writer, [{"type": "telemetry", "telemetry": {"ignition": 1}, "n": 1, "at": "2026-11-25T10:00:00Z"}])
    land(writer, [{"type": "telemetry", "telemetry": {"ignition": "on"}, "n": 2.5, "at": "x"}])
    land(writer, [{"type": "trip", "id": "t1", "dateEnd": "2026-11-25T10:00:00Z", "n": "a"}])
    files = parquet_files(tmp_path / "record_type=telemetry")
    assert {str(pq.read_schema(f).field("telemetry__ignition").type) for f in files} == {"int64"}
    lake = read_lake(str(tmp_path))
    assert sorted(lake) == ["telemetry", "trip"]
    tel = lake["telemetry"]
    assert tel.num_rows == 2 and tel.schema.field("n").type == pa.int64()
    assert sorted(tel.column("telemetry__ignition___string").to_pylist(), key=str) == [None, "on"]
    assert lake["trip"].column("id").to_pylist() == ["t1"]
    assert lake["trip"].column("event_date").to_pylist() == ["2026-11-25"]
    as_text = read_lake(str(tmp_path), record_type="telemetry", fold="string")["telemetry"]
    rows = sorted(as_text.select(["telemetry__ignition", "n", "at"]).to_pylist(), key=lambda r: r["n"])
    assert rows == [
        {"telemetry__ignition": "1", "n": "1", "at": "2026-11-25T10:00:00Z"},
        {"telemetry__ignition": "on", "n": "2.5", "at": "x"},
    ]
    widest = read_lake(str(tmp_path), record_type="telemetry", fold="widest")["telemetry"]
    assert widest.schema.field("n").type == pa.float64()
    assert sorted(widest.column("n").to_pylist()) == [1.0, 2.5]
    assert "n___double" not in widest.column_names
    # One table for all types: trip's string n goes beside telemetry's int n, not over it.
    table = read_lake_table(str(tmp_path))
    assert table.num_rows == 3 and table.schema.field("n").type == pa.int64()
    assert sorted(r["record_type"] for r in table.to_pylist()) == ["telemetry", "telemetry", "trip"]
    df = read_lake_pandas(str(tmp_path))
    assert len(df) == 3 and "telemetry__ignition" in df.columns


def test_duckdb_and_pandas_read_the_lake(writer: LakeWriter, tmp_path: Path) -> None:
    records = [
        {
            "type": "telemetry",
            "date": "2026-11-25T10:11:12.345Z",
            "location": {"speed": 5},
            "Speed": 1,
            "nothing": None,
        },
        {
            "type": "telemetry",
            "date": "2026-11-25T11:00:00Z",
            "location": {"speed": 7.5},
            "speed": 2,
            "nothing": None,
        },
        {"type": "event", "eventDate": "2026-11-24T10:00:00Z", "details": {"asset": {"id": 9}}},
    ]
    land(writer, records)
    land(writer, [{"type": "telemetry", "date": "2026-11-25T12:00:00Z", "location": {"speed": "fast"}}])
    con = duckdb.connect()
    rel = con.sql(
        f"select record_type, event_date, date, location__speed, Speed, location__speed___string, "
        "details__asset__id, speed___t1 "
        f"from read_parquet('{tmp_path}/**/*.parquet', hive_partitioning=true, union_by_name=true) "
        "order by _record_key"
    )
    rows = rel.fetchall()
    assert len(rows) == 4
    telemetry = sorted((r for r in rows if r[0] == "telemetry"), key=lambda r: str(r[3]))
    # The published double stays a double; "fast" went beside it. No column is Null-typed.
    assert [(r[3], r[5]) for r in telemetry] == [(5.0, None), (7.5, None), (None, "fast")]
    assert not any("nothing" in pq.read_schema(f).names for f in parquet_files(tmp_path))
    # The record's own date survives next to the partition day.
    assert {str(r[2])[:19] for r in telemetry} >= {"2026-11-25 10:11:12"}
    assert {str(r[1]) for r in rows} == {"2026-11-25", "2026-11-24"}
    # Case twins: the spelling published first keeps its name, the later one is a twin.
    assert [(r[4], r[7]) for r in telemetry if r[4] is not None or r[7] is not None] == [(1, None), (None, 2)]
    assert [r[6] for r in rows if r[0] == "event"] == [9]
    import pandas as pd

    df = pd.read_parquet(next(iter(parquet_files(tmp_path / "record_type=event"))))
    assert df["details__asset__id"].tolist() == [9]


def test_reading_builds_no_writer(
    writer: LakeWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader asks the layout and the schema store where things are; it never writes, so it
    never builds a writer (it read through ``LakeWriter(writer_id="reader")`` before)."""
    land(writer, [{"type": "t", "a": 1, "date": "2026-11-25T10:00:00Z"}])

    def no_writer(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the reader built a LakeWriter")

    monkeypatch.setattr(LakeWriter, "__init__", no_writer)
    table = read_lake_table(str(tmp_path))
    assert table.column("a").to_pylist() == [1]
    assert table.column("record_type").to_pylist() == ["t"]
    assert table.column("event_date").to_pylist() == ["2026-11-25"]


def test_the_reader_does_not_import_the_writer() -> None:
    """No import circle: the reader stands alone; the writer's old reader names are a deprecated shim."""
    code = (
        "import sys, airflow_provider_ktexport.lake.reader\n"
        "print('airflow_provider_ktexport.lake.writer' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    with pytest.warns(DeprecationWarning, match="lake.reader"):
        from airflow_provider_ktexport.lake.writer import read_lake_table as shimmed
    assert shimmed is read_lake_table
