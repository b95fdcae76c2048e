"""LakeWriter on the local filesystem (and fsspec's memory filesystem as an object store)."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportError, KtExportWriteError
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake, read_lake_pandas, read_lake_table
from tests.lake_support import land

NOW = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


@pytest.fixture
def writer(tmp_path: Path) -> LakeWriter:
    return LakeWriter(LocalFileSystem(), str(tmp_path), writer_id="w1")


def test_write_lays_out_hive_partitions_and_verifies(writer: LakeWriter, tmp_path: Path) -> None:
    table = pa.table({"a": [1, 2, 3]})
    written = writer.write(table, {"record_type": "telemetry", "event_date": "2026-11-25"})
    path = Path(written.path)
    assert path.parent == tmp_path / "record_type=telemetry" / "event_date=2026-11-25"
    assert path.name.startswith("part-") and path.suffix == ".parquet"
    assert written.rows == 3 and written.bytes == path.stat().st_size
    assert written.uri == "file://" + written.path
    assert pq.read_table(path).column("a").to_pylist() == [1, 2, 3]
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left behind


def test_uri_prefix_is_the_user_facing_url(tmp_path: Path) -> None:
    w = LakeWriter(LocalFileSystem(), str(tmp_path), uri_prefix="s3://bucket/lake/")
    written = w.write(pa.table({"a": [1]}), {"record_type": "t", "event_date": "unknown"})
    assert written.uri.startswith("s3://bucket/lake/record_type=t/event_date=unknown/part-")


def test_file_names_never_collide(writer: LakeWriter, tmp_path: Path) -> None:
    paths = {writer.write(pa.table({"a": [i]}), {"record_type": "t"}).path for i in range(60)}
    assert len(paths) == 60 and len(parquet_files(tmp_path)) == 60


def test_failing_write_leaves_no_visible_file(
    writer: LakeWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(fd: int) -> None:
        raise OSError(28, "No space left on device")

    table = pa.table({"a": [1]})
    writer.save_schema("t", table.schema)  # published already: the data file is what fails
    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KtExportWriteError) as err:
        writer.write(table, {"record_type": "t", "event_date": "unknown"})
    assert "No space left" in str(err.value)
    assert "record_type=t/event_date=unknown" in err.value.destination
    assert parquet_files(tmp_path) == []
    assert [p for p in tmp_path.rglob("*") if p.is_file() and ".tmp-" in p.name] == []


def test_temp_files_are_invisible_to_globs_and_cleaned_up(writer: LakeWriter, tmp_path: Path) -> None:
    writer.write(pa.table({"a": [1]}), {"record_type": "t"})
    part_dir = tmp_path / "record_type=t"
    stale = part_dir / ".part-x.parquet.tmp-abc"
    fresh = part_dir / ".part-y.parquet.tmp-def"
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert [p.name for p in parquet_files(tmp_path)] == [p.name for p in part_dir.glob("*.parquet")]
    assert len(parquet_files(tmp_path)) == 1
    con = duckdb.connect()
    assert con.sql(f"select count(*) from read_parquet('{tmp_path}/**/*.parquet')").fetchall() == [(1,)]
    assert writer.cleanup_temp(older_than_seconds=3600) == 1
    assert not stale.exists() and fresh.exists()


class TruncatingFS(MemoryFileSystem):
    """An object store that acknowledges a PUT of a data file but keeps a truncated body."""

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        keep = len(value) // 2 if path.endswith(".parquet") else len(value)
        super().pipe_file(path, value[:keep], **kwargs)


def test_verification_failure_raises_and_removes_the_bad_file() -> None:
    fs = TruncatingFS()
    w = LakeWriter(fs, "/lake-trunc", writer_id="w")
    with pytest.raises(KtExportWriteError) as err:
        w.write(pa.table({"a": list(range(1000))}), {"record_type": "t"})
    assert "Verifying" in str(err.value) and "size" in str(err.value)
    assert "record_type=t/part-" in err.value.destination
    assert [p for p in fs.find("/lake-trunc") if p.endswith(".parquet")] == []


def test_object_store_write_is_one_pipe_and_readable() -> None:
    fs = MemoryFileSystem()
    w = LakeWriter(fs, "memory://lake-ok", writer_id="w")
    written = w.write(pa.table({"a": [1, 2]}), {"record_type": "t", "event_date": "2026-11-25"})
    assert written.path.startswith("/lake-ok/record_type=t/event_date=2026-11-25/part-")
    assert written.uri.startswith("memory://")
    assert read_lake(fs, "/lake-ok")["t"].column("a").to_pylist() == [1, 2]


class CountingFS(MemoryFileSystem):
    """An object store that records each request made on a data file (what a PUT, HEAD or GET costs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []

    def _note(self, name: str, path: str) -> None:
        if str(path).endswith(".parquet"):
            self.calls.append(name)

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        self._note("put", path)
        super().pipe_file(path, value, **kwargs)

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        self._note("head", path)
        return super().info(path, **kwargs)

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode:  # the memory store's pipe_file writes through _open(..., "wb")
            self._note("get", path)
        return super()._open(path, mode, **kwargs)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        self._note("get", path)
        return super().cat_file(path, start, end, **kwargs)


def test_object_store_write_costs_one_put_and_one_head() -> None:
    """A backfill writes thousands of files on a remote store: a file costs two requests, not four
    (its footer is checked on the bytes built, and the stored size proves the PUT kept them)."""
    fs = CountingFS()
    w = LakeWriter(fs, "memory://lake-count", writer_id="w")
    w.write(pa.table({"a": [1, 2, 3]}), {"record_type": "t", "event_date": "2026-11-25"})
    assert fs.calls == ["put", "head"]


def test_local_write_still_reads_its_footer_back(writer: LakeWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real_open = LocalFileSystem._open

    def spy(self: LocalFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        reads.append(mode)
        return real_open(self, path, mode, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", spy)
    writer.write(pa.table({"a": [1]}), {"record_type": "t"})
    assert "rb" in reads


def test_unsanitised_partition_is_refused(writer: LakeWriter, tmp_path: Path) -> None:
    with pytest.raises(KtExportWriteError, match="sanitised"):
        writer.write(pa.table({"a": [1]}), {"record_type": "../../etc"})
    assert not (tmp_path.parent / "etc").exists()


def test_hostile_record_type_lands_inside_the_root(writer: LakeWriter, tmp_path: Path) -> None:
    (written,) = land(writer, [{"type": "../../etc", "x": 1}])
    path = written.path
    assert Path(path).resolve().is_relative_to(tmp_path.resolve())
    assert read_lake_table(str(tmp_path)).column("record_type").to_pylist() == ["../../etc"]


def test_quarantine_once_per_body(writer: LakeWriter, tmp_path: Path) -> None:
    first = writer.quarantine(b"\x1f\x8b garbage", reason="not JSON", batch_id="b1")
    meta_path = tmp_path / "_quarantine" / (Path(first).stem + ".json")
    meta = json.loads(meta_path.read_text())
    again = writer.quarantine(b"\x1f\x8b garbage", reason="still not JSON", batch_id="b2")
    assert first == again
    assert json.loads(meta_path.read_text()) == meta  # first sighting kept
    assert meta["reason"] == "not JSON" and meta["batch_id"] == "b1" and meta["first_seen"]
    other = writer.quarantine(b"other", reason="r", batch_id=None)
    assert other != first
    assert sorted(p.suffix for p in (tmp_path / "_quarantine").iterdir()) == [
        ".body",
        ".body",
        ".json",
        ".json",
        ".seen",
        ".seen",
    ]
    assert writer.quarantine_sightings(b"\x1f\x8b garbage") == 2
    assert writer.quarantine_sightings(b"other") == 1
    assert writer.quarantine_sightings(b"never stored") == 0
    assert (tmp_path / "_quarantine" / Path(first).name).read_bytes() == b"\x1f\x8b garbage"


def test_a_body_redelivered_under_new_ids_is_stored_once_and_counted(
    writer: LakeWriter, tmp_path: Path
) -> None:
    def body(batch_id: str) -> bytes:
        return b'{"id":"%b","items":[{"a":1}],"items":[]}' % batch_id.encode()

    uris = {
        writer.quarantine(body(f"lease-{n}"), reason="items twice", batch_id=f"lease-{n}") for n in range(3)
    }
    assert len(uris) == 1
    stored = sorted((tmp_path / "_quarantine").iterdir())
    assert [p.suffix for p in stored] == [".body", ".json", ".seen"]
    assert stored[0].read_bytes() == body("lease-0")  # the first delivery's copy
    assert writer.quarantine_sightings(body("lease-9")) == 3
    assert writer.quarantine_kept(body("lease-9"))


def test_a_quarantined_copy_that_does_not_read_back_is_stored_again(
    writer: LakeWriter, tmp_path: Path
) -> None:
    body = b'{"id":"q-1","items":[1,'
    uri = writer.quarantine(body, reason="cut", batch_id="q-1")
    path = tmp_path / "_quarantine" / Path(uri).name
    path.write_bytes(body[:5])  # damaged after it was stored
    assert not writer.quarantine_kept(body)
    assert path.read_bytes() == body
    assert writer.quarantine_kept(b'{"id":"q-2","items":[1,')
    path.unlink()
    assert not writer.quarantine_kept(body) and path.read_bytes() == body


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


# -- proving the destination -----------------------------------------------------------------------


def test_prove_writable_writes_reads_back_and_deletes_its_probe(tmp_path: Path) -> None:
    memory = MemoryFileSystem()
    for writer in (
        LakeWriter(LocalFileSystem(), str(tmp_path / "lake")),
        LakeWriter(memory, "/probe-lake", uri_prefix="s3://bucket/lake"),
    ):
        writer.prove_writable()
        assert [p for p in writer.fs.find(writer.root)] == [], writer
    assert not [p for p in (tmp_path / "lake").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (FileNotFoundError("The specified bucket does not exist"), KtExportConfigError, "create it"),
        (PermissionError("Access Denied"), KtExportConfigError, "grant"),
        (OSError(30, "Read-only file system"), KtExportConfigError, "read-only"),
        (ConnectionRefusedError(111, "Connection refused"), KtExportWriteError, "retry"),
        (TimeoutError("timed out"), KtExportWriteError, "retry"),
    ],
)
def test_prove_writable_tells_a_wrong_destination_from_an_outage(
    error: Exception, kind: type[Exception], words: str
) -> None:
    class Refusing(MemoryFileSystem):
        def pipe_file(self, path: str, value: Any, **kwargs: Any) -> None:
            raise error

    writer = LakeWriter(Refusing(), "/bucket/lake", uri_prefix="s3://bucket/lake")
    with pytest.raises(KtExportError) as err:
        writer.prove_writable()
    assert type(err.value) is kind, err.value
    assert "s3://bucket/lake" in str(err.value) and words in str(err.value)
    assert type(error).__name__ in str(err.value)


def test_prove_writable_refuses_a_store_that_reads_back_other_bytes() -> None:
    class Garbling(MemoryFileSystem):
        def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> bytes:
            return b"something else"

    fs = Garbling()
    writer = LakeWriter(fs, "/garbled", uri_prefix="s3://bucket/garbled")
    with pytest.raises(KtExportWriteError, match="differ"):
        writer.prove_writable()
    assert fs.find("/garbled") == []  # the probe was removed


def test_prove_writable_refuses_a_zonal_gcs_bucket_as_a_setting() -> None:
    class ZonalBuckets(MemoryFileSystem):
        def _sync_lookup_bucket_type(self, bucket: str) -> str:
            return "ZONAL_HIERARCHICAL"

        def split_path(self, path: str) -> tuple[str, str, None]:
            bucket, _, key = path.lstrip("/").partition("/")
            return bucket, key, None

    writer = LakeWriter(ZonalBuckets(), "/zonal/lake", uri_prefix="gs://zonal/lake")
    with pytest.raises(KtExportConfigError, match="zonal"):
        writer.prove_writable()
