"""Spark 3.5 reads the lake as landed: every record type, every value equal to the source JSON.

The lake is built here (tests/lake_support.land(), two flushes by two writers, as two drain runs
would) and a copy of it compacted (``compact_lake``); then ``tests/integration/spark_read.py``
reads each record-type folder of both with
``spark.read.option("mergeSchema", "true").parquet(folder)`` under the interpreter in
``KTEXPORT_SPARK_PYTHON`` (Spark's own venv, .venv-spark; .ci/run sets it) and prints what it saw.

Columns are mapped back to key paths through the lake's own field metadata
(``naming.field_path``), not by spelling names here, so a value may sit in its field's column or in
a variant column that carries the same key path; it must be in exactly one of them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.lake.compact import compact_lake
from airflow_provider_ktexport.lake.naming import field_path
from airflow_provider_ktexport.lake.schema import record_key
from airflow_provider_ktexport.lake.writer import LakeWriter
from tests.lake_support import land

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCRIPT = Path(__file__).with_name("spark_read.py")
META = {"_record_key", "_batch_id", "_ingested_at", "_source", "_raw"}
PARTITIONS = {"record_type", "event_date", "ingest_date"}
STABLE_TYPES = ("trip", "event", "changenotification", "geofence_alert")
DRIFT_TYPE = "telemetry"

FIRST_FLUSH: list[dict[str, Any]] = [
    {
        "type": "telemetry",
        "date": "2026-11-25T10:00:00Z",
        "asset": {"id": 7, "name": "truck 7"},
        "location": {"lat": -33.9249, "lon": 18.4241, "speed": 52, "heading": 270},
        "counters": {"hours": 3641, "odometer": 93.5},
        "gc": None,
        "zones": [{"id": 3, "name": "depot"}],
    },
    {
        "type": "telemetry",
        "date": "2026-11-25T10:01:00Z",
        "asset": {"id": 8, "name": "truck 8"},
        "location": {"lat": -33.93, "lon": 18.43, "speed": 0, "heading": None},
        "counters": {"hours": 12, "odometer": 10.25},
        "gc": None,
        "zones": [],
    },
    {
        "type": "trip",
        "id": "trip-1",
        "tripType": "business",
        "dateStart": "2026-11-25T08:00:00Z",
        "dateEnd": "2026-11-25T09:30:00Z",
        "start": {"lat": -33.9, "lon": 18.4},
        "end": {"lat": -34.0, "lon": 18.5},
        "distance": 41.5,
    },
    {
        "type": "event",
        "id": "ev-1",
        "eventDate": "2026-11-25T09:15:00.123Z",
        "eventClass": "alert",
        "details": {"Speed": 130, "speed": "fast", "asset": {"id": 7}, "note": None},
        "owner": {"id": 1, "name": "Fleet A"},
        "flags": [True, False],
    },
    {
        "type": "event",
        "id": "ev-2",
        "eventDate": "2026-11-24T23:59:59Z",
        "eventClass": "info",
        "details": {"Speed": 0, "speed": "stopped", "asset": {"id": 8}, "note": None},
        "owner": {"id": 1, "name": "Fleet A"},
        "flags": [],
    },
    {
        "type": "changenotification",
        "date": "2026-11-25T07:00:00Z",
        "operation": "modified",
        "doc": {"id": "a-7", "type": "asset", "ownerId": 1},
        "a.b": "dotted key",
        "x__y": "double underscore",
    },
    {"type": "geofence_alert", "received": "2026-11-25T06:00:00Z", "zone": {"id": 9}, "inside": True},
]

SECOND_FLUSH: list[dict[str, Any]] = [
    {
        # Firmware drift: an int field arrives as text, a float as text with a unit, and a field
        # that was only ever null gets a value.
        "type": "telemetry",
        "date": "2026-11-25T11:00:00Z",
        "asset": {"id": 7, "name": "truck 7"},
        "location": {"lat": -33.92, "lon": 18.42, "speed": 61, "heading": 90},
        "counters": {"hours": "3642h", "odometer": "93.7 km"},
        "gc": {"address": "1 Main Rd"},
        "zones": [],
    },
    {
        "type": "trip",
        "id": "trip-2",
        "tripType": "private",
        "dateStart": "2026-11-26T08:00:00Z",
        "dateEnd": "2026-11-26T08:45:00Z",
        "start": {"lat": -33.8, "lon": 18.3},
        "end": {"lat": -33.85, "lon": 18.35},
        "distance": 12.0,
        "driver": {"id": 4},  # a field new in this flush: schemas merge by adding a column
    },
    {
        "type": "event",
        "id": "ev-3",
        "eventDate": "2026-11-25T12:00:00Z",
        "eventClass": "alert",
        "details": {"Speed": 99, "speed": "fast", "asset": {"id": 9}, "note": None},
        "owner": {"id": 2, "name": "Fleet B"},
        "flags": [False],
    },
    {
        "type": "changenotification",
        "date": "2026-11-25T13:00:00Z",
        "operation": "deleted",
        "doc": {"id": "a-8", "type": "asset", "ownerId": 1},
        "a.b": None,
        "x__y": "again",
    },
]


# -- building the lake and running Spark -----------------------------------------------------------


@pytest.fixture(scope="module")
def spark_python() -> str:
    python = os.environ.get("KTEXPORT_SPARK_PYTHON")
    if not python:
        pytest.skip(
            "KTEXPORT_SPARK_PYTHON is unset: point it at a Python with pyspark 3.5 "
            "(.ci/run builds .venv-spark from ci/spark-requirements.txt and sets it)"
        )
    return python


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spark") / "lake"
    land(LakeWriter(LocalFileSystem(), str(root), writer_id="drain-1"), FIRST_FLUSH, batch_id="b1")
    land(LakeWriter(LocalFileSystem(), str(root), writer_id="drain-2"), SECOND_FLUSH, batch_id="b2")
    return root


@pytest.fixture(scope="module")
def compacted(lake: Path) -> Path:
    """A copy of the lake after compaction (every partition rewritten as one file)."""
    root = lake.parent / "compacted"
    shutil.copytree(lake, root)
    result = compact_lake(LocalFileSystem(), str(root), now=time.time() + 3600)
    assert result.partitions > 0 and result.files_out < result.files_in, result.summary()
    return root


@pytest.fixture(scope="module")
def lakes(lake: Path, compacted: Path) -> dict[str, Path]:
    return {"landed": lake, "compacted": compacted}


@pytest.fixture(scope="module")
def spark_saw(spark_python: str, lakes: dict[str, Path]) -> Iterator[dict[str, dict[str, Any]]]:
    """What Spark read: ``{"landed" | "compacted": {record_type: result}}`` (one Spark session)."""
    env = {**os.environ, "PYSPARK_PYTHON": spark_python, "PYSPARK_DRIVER_PYTHON": spark_python}
    proc = subprocess.run(
        [spark_python, str(SCRIPT), *(str(p) for p in lakes.values())],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["spark"].startswith("3.5."), out["spark"]
    yield {name: out["lakes"][str(path)] for name, path in lakes.items()}


# -- comparing -----------------------------------------------------------------------------------------


def leaves(record: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every key path of a record with its value; objects are walked, lists are values."""
    out: dict[tuple[str, ...], Any] = {}
    for key, value in record.items():
        path = (*prefix, key)
        if isinstance(value, dict) and value:
            out.update(leaves(value, path))
        else:
            out[path] = value
    return out


def column_paths(lake: Path, record_type: str) -> dict[str, tuple[str, ...]]:
    """Data column name -> key path, from the field metadata of every file of the record type."""
    paths: dict[str, tuple[str, ...]] = {}
    for f in sorted((lake / f"record_type={record_type}").rglob("*.parquet")):
        for field in pq.read_schema(f):
            if field.name not in META and field.name not in PARTITIONS:
                assert paths.setdefault(field.name, field_path(field)) == field_path(field), field.name
    return paths


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def same(source: Any, got: Any, spark_type: str) -> bool:
    """Is Spark's value the source value, as the lake promises to store it?"""
    if spark_type == "string" and not isinstance(source, str):
        return json.loads(got) == source  # lists, objects and values of a mixed column: JSON text
    if spark_type == "timestamp":
        return isinstance(source, str) and _instant(source) == _instant(got)
    if isinstance(source, bool) or isinstance(got, bool):
        return type(source) is type(got) and source == got
    return source == got


def mismatches(lake: Path, record_type: str, saw: dict[str, Any], sources: list[dict]) -> list[str]:
    """Every difference between what Spark read for a record type and the source records."""
    paths = column_paths(lake, record_type)
    types = dict(saw["columns"])
    by_path: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for name, path in paths.items():
        by_path[path].append(name)
    missing_columns = [n for n in paths if n not in types]
    problems = [f"Spark lacks columns {missing_columns}"] if missing_columns else []
    expected = {record_key(r): r for r in sources}
    keys = [row["_record_key"] for row in saw["rows"]]
    if sorted(keys) != sorted(expected) or saw["count"] != len(sources):
        problems.append(
            f"rows: Spark read {saw['count']} with keys {sorted(keys)}, expected {sorted(expected)}"
        )
    for row in saw["rows"]:
        source = expected.get(row["_record_key"])
        if source is None:
            continue
        want = leaves(source)
        day = next(source[k] for k in ("date", "eventDate", "dateEnd", "received") if k in source)[:10]
        if row.get("event_date") != day:
            problems.append(
                f"{source.get('id', source['type'])}: event_date {row.get('event_date')} != {day}"
            )
        for path in set(want) | set(by_path):
            cells = [(n, row.get(n)) for n in by_path.get(path, []) if row.get(n) is not None]
            value = want.get(path)
            label = f"{source.get('id', source['type'])} {'.'.join(path)}"
            if value is None:
                if cells:
                    problems.append(f"{label}: source has no value, Spark has {cells}")
            elif len(cells) != 1:
                problems.append(
                    f"{label}: source {value!r}, Spark has {cells} (want it in exactly one column)"
                )
            elif not same(value, cells[0][1], types[cells[0][0]]):
                problems.append(f"{label}: source {value!r}, Spark {cells[0][1]!r} ({types[cells[0][0]]})")
    return problems


def sources_of(record_type: str) -> list[dict]:
    return [r for r in FIRST_FLUSH + SECOND_FLUSH if r["type"] == record_type]


# -- the tests -----------------------------------------------------------------------------------------


def test_the_lake_holds_what_the_cases_need(lake: Path) -> None:
    """The lake really has the hard cases (without Spark): a guard against a test that passes vacuously."""
    event = column_paths(lake, "event")
    assert ("details", "Speed") in event.values() and ("details", "speed") in event.values()
    spellings = [n.lower() for n, p in event.items() if p in {("details", "Speed"), ("details", "speed")}]
    assert len(set(spellings)) == 2  # case-twins differ beyond case (Spark resolves names ignoring case)
    assert {("a.b",), ("x__y",)} <= set(column_paths(lake, "changenotification").values())
    assert ("driver", "id") in column_paths(lake, "trip").values()
    assert {("counters", "hours"), ("gc", "address")} <= set(column_paths(lake, DRIFT_TYPE).values())
    assert sorted(p.name.partition("=")[2] for p in lake.glob("record_type=*")) == sorted(
        (*STABLE_TYPES, DRIFT_TYPE)
    )


@pytest.mark.parametrize("state", ["landed", "compacted"])
@pytest.mark.parametrize("record_type", STABLE_TYPES)
def test_spark_reads_every_record_type_with_every_value(
    lakes: dict[str, Path], spark_saw: dict[str, Any], record_type: str, state: str
) -> None:
    saw = spark_saw[state][record_type]
    assert saw["ok"], saw.get("error")
    assert mismatches(lakes[state], record_type, saw, sources_of(record_type)) == []


def test_spark_reads_a_drifted_record_type_after_compaction(
    compacted: Path, spark_saw: dict[str, Any]
) -> None:
    saw = spark_saw["compacted"][DRIFT_TYPE]
    assert saw["ok"], saw.get("error", "")[:1500]
    assert mismatches(compacted, DRIFT_TYPE, saw, sources_of(DRIFT_TYPE)) == []


def test_spark_reads_a_record_type_whose_fields_drifted(lake: Path, spark_saw: dict[str, Any]) -> None:
    """Drift lands in variant columns, so no column changes type and mergeSchema only adds columns."""
    saw = spark_saw["landed"][DRIFT_TYPE]
    assert saw["ok"], saw.get("error", "")[:1500]
    assert mismatches(lake, DRIFT_TYPE, saw, sources_of(DRIFT_TYPE)) == []
