"""The schema store: a column's name and type fixed by the first writer that publishes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake import atomic
from airflow_provider_ktexport.lake.layout import LakeRoot
from airflow_provider_ktexport.lake.reader import read_lake
from airflow_provider_ktexport.lake.schema_store import SchemaStore, column_file
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.testing.records import RecordGenerator
from tests.lake_support import land, parquet_files


def test_schema_store_keeps_the_first_published_type(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    w1 = LakeWriter(fs, str(tmp_path), writer_id="w1")
    w2 = LakeWriter(fs, str(tmp_path), writer_id="w2")
    w1.save_schema("t", pa.schema([("a", pa.int64()), ("b", pa.bool_()), ("z", pa.null())]))
    # w2 started before w1 published and meant other types: its offer of "a" loses, "c" is new.
    w2._published.clear()
    w2.schemas.publish("t", [pa.field("a", pa.float64()), pa.field("c", pa.string())], {})
    for reader in (w1, w2, LakeWriter(fs, str(tmp_path), writer_id="reader")):
        merged = reader.load_schema("t")
        assert merged is not None
        assert {f.name: f.type for f in merged} == {"a": pa.int64(), "b": pa.bool_(), "c": pa.string()}
    assert len(list((tmp_path / "_schema" / "t" / "columns").iterdir())) == 3
    assert LakeWriter(fs, str(tmp_path)).load_schema("nothing") is None


def test_a_writer_that_lost_the_race_moves_its_values_to_variants(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    w1 = LakeWriter(fs, str(tmp_path), writer_id="w1")
    w2 = LakeWriter(fs, str(tmp_path), writer_id="w2")
    w2.load_schema("telemetry")  # w2's view: the store is empty
    land(w1, [{"type": "telemetry", "n": 1}])
    # w2 built its table before it could see w1's entry: n as string.
    land(w2, [{"type": "telemetry", "n": "x"}], known=lambda t: None)
    types = {
        str(pq.read_schema(f).field("n").type)
        for f in parquet_files(tmp_path)
        if "n" in pq.read_schema(f).names
    }
    assert types == {"int64"}
    table = read_lake(str(tmp_path))["telemetry"]
    assert sorted(zip(table.column("n").to_pylist(), table.column("n___string").to_pylist()), key=str) == [
        (1, None),
        (None, "x"),
    ]


def test_runs_that_bring_no_new_column_add_no_schema_file(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    record = {"type": "telemetry", "date": "2026-11-25T10:00:00Z", "speed": 5}
    for run in range(5):  # every run is a new writer, as every drain task is
        land(LakeWriter(fs, str(tmp_path), writer_id=f"run{run}"), [record])
    store = tmp_path / "_schema" / "telemetry" / "columns"
    first = sorted(p.name for p in store.iterdir())
    assert len(first) == len(pq.read_schema(parquet_files(tmp_path)[0]).names)
    # A run that brings a new column or a variant publishes a file for each.
    land(LakeWriter(fs, str(tmp_path), writer_id="run5"), [{**record, "speed": 5.5, "new": True}])
    assert len(list(store.iterdir())) == len(first) + 2
    merged = LakeWriter(fs, str(tmp_path)).load_schema("telemetry")
    assert merged is not None
    assert merged.field("speed").type == pa.int64() and merged.field("speed___double").type == pa.float64()
    assert merged.field("new").type == pa.bool_()
    assert len(parquet_files(tmp_path)) == 6


def test_a_damaged_column_file_fails_the_write_naming_the_column_and_the_store(tmp_path: Path) -> None:
    fs = LocalFileSystem()
    LakeWriter(fs, str(tmp_path)).write(pa.table({"a": [1]}), {"record_type": "t"})
    damaged = next((tmp_path / "_schema" / "t" / "columns").iterdir())
    damaged.write_text("{not json")
    with pytest.raises(KtExportWriteError) as err:
        LakeWriter(fs, str(tmp_path)).write(pa.table({"a": [2]}), {"record_type": "t"})
    assert "['a']" in str(err.value) and "Remove the damaged files" in str(err.value)
    assert err.value.destination.endswith("_schema/t/columns")
    assert len(parquet_files(tmp_path)) == 1  # nothing was written
    damaged.unlink()  # as the error says: the next write publishes the column again
    LakeWriter(fs, str(tmp_path)).write(pa.table({"a": [3]}), {"record_type": "t"})
    assert len(parquet_files(tmp_path)) == 2


def test_a_store_without_a_writer_reads_what_writers_published_and_publishes_nothing(tmp_path: Path) -> None:
    LakeWriter(LocalFileSystem(), str(tmp_path), writer_id="w1").write(
        pa.table({"a": [1]}), {"record_type": "t"}
    )
    store = SchemaStore(LakeRoot(LocalFileSystem(), str(tmp_path)))
    published = store.load("t")
    assert published is not None and published.field("a").type == pa.int64()
    with pytest.raises(TypeError, match="reads only"):
        store.publish("t", [pa.field("b", pa.string())], {})
    assert store.load("t") == published


def test_a_column_file_is_named_by_its_lower_cased_name() -> None:
    """Case twins share one file, so of two published at once exactly one takes the name."""
    assert column_file("Speed") == column_file("speed") != column_file("speed2")
    assert column_file("speed").endswith(".json") and len(column_file("speed")) == 45


def test_a_schema_already_settled_is_not_checked_again_until_the_store_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow_provider_ktexport.lake import schema_store

    w = LakeWriter(LocalFileSystem(), str(tmp_path), writer_id="w")
    table = pa.table({"a": [1], "b": ["x"]})
    w.write(table, {"record_type": "t"})  # publishes a and b
    checks: list[pa.Schema] = []
    real = schema_store.needs_fit
    monkeypatch.setattr(schema_store, "needs_fit", lambda s, p: checks.append(s) or real(s, p))
    w.write(table, {"record_type": "t"})
    w.write(table, {"record_type": "t"})
    assert len(checks) <= 1  # the first settled write may check once; the next ones never
    w.write(pa.table({"a": [2], "b": ["y"], "c": [True]}), {"record_type": "t"})  # a new column
    w.write(table, {"record_type": "t"})  # the store was read again: checked against it once more
    assert len(checks) >= 3
    assert read_lake(str(tmp_path))["t"].num_rows == 5


def test_a_new_record_type_is_published_with_one_folder_fsync_and_not_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new record type's ~40 column files cost one folder fsync, not two each, and the writer
    keeps what it wrote instead of reading them back; what it keeps is what a fresh reader reads,
    and the files are the indented JSON they always were."""
    fs = LocalFileSystem()
    w = LakeWriter(fs, str(tmp_path), writer_id="w")
    synced: list[str] = []
    real_fsync_dir = atomic._fsync_dir
    monkeypatch.setattr(atomic, "_fsync_dir", lambda d: synced.append(d) or real_fsync_dir(d))
    read: list[Any] = []
    real_cat = fs.cat
    monkeypatch.setattr(fs, "cat", lambda paths, **kw: read.append(paths) or real_cat(paths, **kw))
    (written,) = land(w, RecordGenerator(5, record_types=("telemetry",)).records(1, 50)[:1])

    columns = tmp_path / "_schema" / "telemetry" / "columns"
    files = sorted(columns.iterdir())
    assert len(files) > 30
    assert [d for d in synced if Path(d) == columns] == [str(columns)]
    assert read == []
    fresh = SchemaStore(LakeRoot(fs, str(tmp_path))).load("telemetry")
    assert fresh is not None and fresh.equals(w.load_schema("telemetry"), check_metadata=True)
    assert pq.read_schema(written.path).names == [n for n in fresh.names if n in written.schema.names]
    for f in files:
        assert f.read_bytes() == json.dumps(json.loads(f.read_bytes()), indent=1, ensure_ascii=False).encode()
