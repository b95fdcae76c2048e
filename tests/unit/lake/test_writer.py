"""LakeWriter on the local filesystem (and fsspec's memory filesystem as an object store)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.reader import read_lake, read_lake_table
from airflow_provider_ktexport.lake.schema import build_tables
from airflow_provider_ktexport.lake.writer import DICTIONARY_MIN_ROWS, LakeWriter
from airflow_provider_ktexport.testing.records import RecordGenerator
from tests.lake_support import INGESTED_AT, land, parquet_files


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


def test_local_write_reads_nothing_back(writer: LakeWriter, monkeypatch: pytest.MonkeyPatch) -> None:
    """The footer was checked on the bytes written; reading the file back would read the page cache."""
    reads: list[str] = []
    real_open = LocalFileSystem._open

    def spy(self: LocalFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if str(path).endswith(".parquet"):
            reads.append(mode)
        return real_open(self, path, mode, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", spy)
    written = writer.write(pa.table({"a": [1]}), {"record_type": "t"})
    assert "rb" not in reads
    assert pq.ParquetFile(written.path).metadata.num_rows == 1


def test_a_local_file_shorter_than_its_bytes_fails_verification(
    writer: LakeWriter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_put = writer._put
    monkeypatch.setattr(writer, "_put", lambda path, data: real_put(path, data[: len(data) // 2]))
    with pytest.raises(KtExportWriteError, match="size"):
        writer.write(pa.table({"a": list(range(1000))}), {"record_type": "t"})
    assert parquet_files(tmp_path) == []


def test_unsanitised_partition_is_refused(writer: LakeWriter, tmp_path: Path) -> None:
    with pytest.raises(KtExportWriteError, match="sanitised"):
        writer.write(pa.table({"a": [1]}), {"record_type": "../../etc"})
    assert not (tmp_path.parent / "etc").exists()


def test_hostile_record_type_lands_inside_the_root(writer: LakeWriter, tmp_path: Path) -> None:
    (written,) = land(writer, [{"type": "../../etc", "x": 1}])
    path = written.path
    assert Path(path).resolve().is_relative_to(tmp_path.resolve())
    assert read_lake_table(str(tmp_path)).column("record_type").to_pylist() == ["../../etc"]


def _has_dictionary_pages(path: str) -> bool:
    meta = pq.ParquetFile(path).metadata
    return any(
        meta.row_group(g).column(c).has_dictionary_page
        for g in range(meta.num_row_groups)
        for c in range(meta.num_columns)
    )


@pytest.mark.parametrize("records", [130, DICTIONARY_MIN_ROWS + 200])
def test_small_files_skip_dictionary_pages_and_read_back_the_same(
    writer: LakeWriter, tmp_path: Path, records: int
) -> None:
    """Differential: a 50-type flush's small files lose only their dictionary pages (a fixed cost
    per file): the same rows, schema and keys read back, with pyarrow and DuckDB, as from the file
    pyarrow's defaults (the writer's before) make of the same table; large files keep them."""
    generator = RecordGenerator(3, record_types=("telemetry",))
    (part,) = build_tables(
        [json.dumps(r).encode() for r in generator.records(1, records)],
        ["b"] * records,
        source="conn",
        ingested_at=INGESTED_AT,
        partition_by=("record_type",),
    )
    written = writer.write(part.table, part.partition)
    before = tmp_path / "before.parquet"
    pq.write_table(part.table, before, compression="zstd", row_group_size=128 * 1024)

    assert _has_dictionary_pages(written.path) is (records >= DICTIONARY_MIN_ROWS)
    assert _has_dictionary_pages(str(before))
    assert pq.read_table(written.path).equals(pq.read_table(before), check_metadata=True)
    assert pq.read_table(written.path).equals(part.table, check_metadata=True)
    con = duckdb.connect()
    query = "select * from read_parquet('{}', hive_partitioning = false) order by _record_key"
    assert con.sql(query.format(written.path)).fetchall() == con.sql(query.format(before)).fetchall()
