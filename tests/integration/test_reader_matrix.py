"""Every record type's folder reads with DuckDB, Polars, DataFusion and pandas, as landed and compacted.

The lake is built the hard way: two drains that each read the schema store once at their start
(as long-running drains do) write one lake at the same time; a firmware-style drift makes an int
field arrive as "3642h" and a float as "93.7 km"; some fields are only ever null, or null first;
the drains meet the case twins `Speed` and `speed` in opposite orders; the vendor's keys are
camelCase (`eventDate`, `eventClass`, `doc.ownerId`, `tripType`); keys are hostile. Each engine
then reads each record type's folder the way its users read Parquet, and every record must come
back exactly once with every value equal to the source JSON, every column named as its key path
is (escaped only where the name would be ambiguous or illegal), except the later case twins.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datafusion
import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.lake.compact import compact_lake
from airflow_provider_ktexport.lake.keys import record_key
from airflow_provider_ktexport.lake.naming import base_name, column_name, column_path, twin_tag
from airflow_provider_ktexport.lake.schema import build_tables
from airflow_provider_ktexport.lake.types import canonical_text
from airflow_provider_ktexport.lake.writer import LakeWriter

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
PARTITION_COLUMNS = {"record_type", "event_date", "ingest_date"}


class SimDrain:
    """A drain's use of the lake: the store read once per record type, then its own last tables."""

    def __init__(self, fs: Any, root: str, writer_id: str, source: str) -> None:
        self.writer = LakeWriter(fs, root, writer_id=writer_id)
        self.source = source
        self.cache: dict[str, pa.Schema | None] = {}

    def prime(self, record_type: str) -> None:
        self.cache[record_type] = self.writer.load_schema(record_type)

    def flush(self, records: Sequence[dict[str, Any]], batch: str) -> None:
        def known(record_type: str) -> pa.Schema | None:
            if record_type not in self.cache:
                self.prime(record_type)
            return self.cache[record_type]

        parts = build_tables(
            [json.dumps(r, ensure_ascii=False).encode() for r in records],
            [batch] * len(records),
            source=self.source,
            ingested_at=datetime.now(UTC),
            known_schema=known,
        )
        for part in parts:
            self.cache[part.record_type] = part.table.schema
        for part in parts:
            self.writer.write(part.table, part.partition)


def telemetry(i: int, **fields: Any) -> dict[str, Any]:
    return {
        "type": "telemetry",
        "date": (START + timedelta(hours=i)).isoformat().replace("+00:00", "Z"),
        "origin": {"id": f"dev{i % 4}"},
        "seq": i,
        **fields,
    }


HOSTILE = {
    "a.b": 1,
    "a__b": 2,
    "a": {"b": 3, "v_string": "real field"},
    "": "empty key",
    "_record_key": "mine",
    "record_type": "not a partition",
    "Event_Date": 5,
    "%": "percent",
    "x/y": "slash",
    "Öl": "capital umlaut",
    "öl": "small umlaut",
    "名前": "Zoë 🚚",
    "with space": "s",
    'quote"d': "q",
    "hours___string": "three underscores",
    "tab\tkey": "control character",
    "\u212aelvin": "Kelvin sign",
    "Kelvin": "capital K",
    "kelvin": "small k",
    "SPEED": "shout",
    "tags": ["a", 1, None],
    "empty": {},
}


def build_lake(root: Path) -> list[dict[str, Any]]:
    """Two concurrent drains write one lake with drift; returns every record landed."""
    fs = LocalFileSystem()
    a = SimDrain(fs, str(root), "drain-a", "task_a")
    b = SimDrain(fs, str(root), "drain-b", "task_b")
    for rt in ("telemetry", "event", "trip"):
        a.prime(rt)
        b.prime(rt)  # both started before either wrote: neither knows the other's columns
    landed: list[dict[str, Any]] = []

    def flush(drain: SimDrain, records: list[dict[str, Any]], batch: str) -> None:
        drain.flush(records, batch)
        landed.extend(records)

    # a: counters.hours an int, odometer a float; b meets "Speed" first, a meets "speed" first.
    flush(
        a,
        [
            telemetry(
                i,
                counters={"hours": 3600 + i},
                location={"odometer": 93.5 + i, "speed": i},
                spare=None,
                eventClass="ignition",
                doc={"ownerId": i},
            )
            for i in range(0, 20)
        ]
        + [telemetry(20, **HOSTILE), {"type": "event", "eventDate": "2026-11-24T23:59:59.5+01:00", "id": 1}],
        "a1",
    )
    flush(
        b,
        [
            telemetry(
                i, counters={"hours": "3642h"}, location={"odometer": "93.7 km", "Speed": i}, later=None
            )
            for i in range(21, 40)
        ]
        + [
            {
                "type": "trip",
                "id": "t1",
                "dateEnd": "2026-11-25T10:00:00Z",
                "dateStart": "2026-11-25T09:00:00Z",
                "tripType": "business",
                "distance": 12,
            }
        ],
        "b1",
    )
    flush(
        a,
        [
            telemetry(i, counters={"hours": i * 1.5}, location={"odometer": i, "Speed": "fast"}, later=i)
            for i in range(40, 60)
        ]
        + [{"type": "event", "eventDate": "not a date", "id": "e2", "details": {"asset": {"id": 9}}}],
        "a2",
    )
    flush(
        b,
        [
            telemetry(
                i, counters={"hours": 3600 + i}, location={"speed": 2.5}, spare=None, doc={"OwnerId": i}
            )
            for i in range(60, 70)
        ]
        + [{"type": "trip", "id": "t2", "dateEnd": "2026-11-26T10:00:00Z", "distance": "12 km"}]
        + [telemetry(70, **{**HOSTILE, "a.b": "one", "tags": {"k": [1]}, "Öl": 1.5})],
        "b2",
    )
    return landed


# -- comparing what an engine read with the source JSON -------------------------------------------------


def _leaves(obj: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in obj.items():
        if isinstance(v, dict) and v:
            out.update(_leaves(v, (*prefix, k)))
        elif v is not None:  # null and missing both read as null
            out[(*prefix, k)] = v
    return out


def _plain(v: Any) -> Any:
    """An engine's value as a plain Python value (None for NaN/NaT)."""
    if v is None or v is pd.NaT:
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    if hasattr(v, "item") and not isinstance(v, str | bytes):
        return v.item()
    return v


def _same(src: Any, got: Any) -> bool:
    if isinstance(got, datetime):
        if not isinstance(src, str):
            return False
        when = got if got.tzinfo else got.replace(tzinfo=UTC)
        return datetime.fromisoformat(src.replace("Z", "+00:00")) == when
    if isinstance(src, bool) or isinstance(got, bool):
        return type(src) is type(got) and src == got
    if isinstance(got, str):
        return got == (src if isinstance(src, str) else canonical_text(src))
    if isinstance(src, int | float) and isinstance(got, int | float):
        return src == got
    return False


def check(rows: list[dict[str, Any]], expected: list[dict[str, Any]], engine: str) -> None:
    by_key = {record_key(r): r for r in expected}
    counts = Counter(row["_record_key"] for row in rows)
    assert counts == Counter(list(by_key)), f"{engine}: every record exactly once"
    for row in rows:
        source = _leaves(by_key[row["_record_key"]])
        got: dict[tuple[str, ...], Any] = {}
        for name, value in row.items():
            value = _plain(value)
            if name.startswith("_") or name in PARTITION_COLUMNS or value is None:
                continue
            path = column_path(name)
            assert path not in got, f"{engine}: {path} has a value in two columns"
            got[path] = value
        assert set(got) == set(source), f"{engine}: {sorted(set(got) ^ set(source), key=str)}"
        for path, value in got.items():
            assert _same(source[path], value), f"{engine}: {path}: {source[path]!r} read as {value!r}"


def check_names(root: Path) -> None:
    """Every column of every file is its key path's plain name, except later case twins."""
    for folder in root.glob("record_type=*"):
        names = {n for f in folder.rglob("*.parquet") for n in pa.parquet.read_schema(f).names}
        bases = {base_name(n) for n in names if not n.startswith("_")}
        plain = {column_name(column_path(b)).lower(): b for b in bases if not twin_tag(b)}
        for b in bases:
            path = column_path(b)
            if twin_tag(b):  # a twin only beside the plain name it equals ignoring case
                assert b == column_name(path) + twin_tag(b) and column_name(path).lower() in plain, b
            else:
                assert b == column_name(path), b
        assert len({b.lower() for b in bases}) == len(bases), folder


# -- the engines, each the way its users read a folder ------------------------------------------------


def read_duckdb(folder: Path, schema: pa.Schema | None) -> list[dict[str, Any]]:
    sql = f"SELECT * FROM read_parquet('{folder}/**/*.parquet', hive_partitioning=true, union_by_name=true)"
    with duckdb.connect() as con:
        return con.sql(sql).fetch_arrow_table().to_pylist()


def read_datafusion(folder: Path, schema: pa.Schema | None) -> list[dict[str, Any]]:
    ctx = datafusion.SessionContext()
    ctx.register_parquet("lake", str(folder))
    return ctx.sql("SELECT * FROM lake").to_arrow_table().to_pylist()


def read_polars(folder: Path, schema: pa.Schema | None) -> list[dict[str, Any]]:
    # Files landed at different times hold different columns: Polars users pass the table's schema
    # (here the lake's published one). Compacted files all hold every column: no schema needed.
    options: dict[str, Any] = {}
    if schema is not None:
        options = {"schema": pl.from_arrow(schema.empty_table()).schema, "missing_columns": "insert"}
    frame = pl.scan_parquet(f"{folder}/**/*.parquet", hive_partitioning=True, **options).collect()
    return frame.to_arrow().to_pylist()


def read_pandas(folder: Path, schema: pa.Schema | None) -> list[dict[str, Any]]:
    # pandas (pyarrow) takes the first file's columns unless given the schema, as Polars above.
    frame = pd.read_parquet(folder) if schema is None else pd.read_parquet(folder, schema=schema)
    return frame.to_dict("records")


ENGINES: dict[str, Callable[[Path, pa.Schema | None], list[dict[str, Any]]]] = {
    "duckdb": read_duckdb,
    "datafusion": read_datafusion,
    "polars": read_polars,
    "pandas": read_pandas,
}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    root = tmp_path_factory.mktemp("matrix") / "lake"
    return root, build_lake(root)


def _expected(landed: list[dict[str, Any]], record_type: str) -> list[dict[str, Any]]:
    return [r for r in landed if r["type"] == record_type]


def test_the_lake_has_drift_variants_twins_and_no_null_columns(
    lake: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, _ = lake
    check_names(root)
    trip = LakeWriter(LocalFileSystem(), str(root)).load_schema("trip")
    event = LakeWriter(LocalFileSystem(), str(root)).load_schema("event")
    assert trip is not None and {"dateEnd", "dateStart", "tripType"} <= set(trip.names)
    assert event is not None and "eventDate" in event.names
    schema = LakeWriter(LocalFileSystem(), str(root)).load_schema("telemetry")
    assert schema is not None
    types = {f.name: f.type for f in schema}
    assert types["counters__hours"] == pa.int64() and types["counters__hours___string"] == pa.string()
    assert types["location__odometer"] == pa.float64() and types["location__odometer___string"] == pa.string()
    # a met "speed" first and landed first: b's "Speed" is the twin, in every file of both.
    assert "location__Speed___t1" in types and "location__speed" in types
    assert {"eventClass", "doc__ownerId", "doc__OwnerId___t1"} <= set(types)
    assert "spare" not in types and not any(pa.types.is_null(t) for t in types.values())
    for f in root.rglob("*.parquet"):  # no file holds a column at another type than published
        file_types = {fld.name: fld.type for fld in pa.parquet.read_schema(f)}
        rt = f.relative_to(root).parts[0].partition("=")[2]
        published = LakeWriter(LocalFileSystem(), str(root)).load_schema(rt)
        assert published is not None
        assert all(published.field(n).type == t for n, t in file_types.items()), f


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_engine_reads_every_record_type_as_landed(
    lake: tuple[Path, list[dict[str, Any]]], engine: str
) -> None:
    root, landed = lake
    folders = sorted(root.glob("record_type=*"))
    assert [f.name for f in folders] == ["record_type=event", "record_type=telemetry", "record_type=trip"]
    for folder in folders:
        rt = folder.name.partition("=")[2]
        schema = LakeWriter(LocalFileSystem(), str(root)).load_schema(rt)
        check(ENGINES[engine](folder, schema), _expected(landed, rt), f"{engine} {rt}")


def test_every_engine_reads_every_record_type_after_compaction(
    lake: tuple[Path, list[dict[str, Any]]],
) -> None:
    root, landed = lake
    before = {f: pa.parquet.read_schema(f) for f in root.rglob("*.parquet")}
    result = compact_lake(LocalFileSystem(), str(root), now=datetime.now(UTC).timestamp() + 3600)
    assert result.rows_out == result.rows_in  # no duplicates here: nothing may go
    after = {f: pa.parquet.read_schema(f) for f in root.rglob("*.parquet")}
    for folder in root.glob("record_type=*"):
        typed = {
            n: t
            for f, s in before.items()
            if folder in f.parents
            for n, t in zip(s.names, s.types, strict=True)
        }
        compacted = [s for f, s in after.items() if folder in f.parents]
        for s in compacted:  # compaction changed no column's type...
            assert all(typed[n] == t for n, t in zip(s.names, s.types, strict=True)), folder
        assert len({tuple(sorted(s.names)) for s in compacted}) == 1  # ...and every file has every column
    check_names(root)
    for folder in sorted(root.glob("record_type=*")):
        rt = folder.name.partition("=")[2]
        for engine, read in ENGINES.items():
            check(read(folder, None), _expected(landed, rt), f"{engine} {rt} compacted")
