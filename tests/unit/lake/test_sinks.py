"""ParquetSink: a flush's files written concurrently, and nothing landing after a flush failed."""

from __future__ import annotations

import threading

import fsspec
import pyarrow as pa
import pytest

from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.schema import PartitionTable
from airflow_provider_ktexport.lake.sinks import FlushInfo, ParquetSink
from airflow_provider_ktexport.lake.writer import LakeWriter

INFO = FlushInfo(batch_ids=["b"], records=3, rejected=0, source="s", ingest_day="2026-12-01")


def part(rtype: str) -> PartitionTable:
    table = pa.table({"x": [1], "_batch_id": ["b"]})
    return PartitionTable(rtype, {"record_type": rtype}, table, frozenset({"b"}))


#: How long a test waits for a condition that holds at once when the code is right.
DEADLINE = 60.0


def test_a_failed_flush_returns_only_after_its_other_writes_ended(tmp_path):
    started: list[str] = []
    in_flight = [0]
    lock = threading.Lock()
    both_started = threading.Barrier(3)  # the two slow writes and the failing one
    failed = threading.Event()

    class Writer(LakeWriter):
        def write(self, table, partition, **kwargs):
            if partition["record_type"] == "bad":
                both_started.wait(DEADLINE)
                failed.set()
                raise KtExportWriteError("no bucket", destination="x")
            with lock:
                started.append(partition["record_type"])
                in_flight[0] += 1
            try:
                both_started.wait(DEADLINE)
                # A slow PUT still in flight when the other one failed: it goes on after the failure.
                assert failed.wait(DEADLINE)
                return super().write(table, partition, **kwargs)
            finally:
                with lock:
                    in_flight[0] -= 1

    sink = ParquetSink(Writer(fsspec.filesystem("file"), str(tmp_path)), concurrency=4)
    with pytest.raises(KtExportWriteError, match="no bucket"):
        sink.land([part("slow1"), part("bad"), part("slow2")], {}, INFO)
    # Nothing of the failed flush is still being written once land() has raised: a write that
    # started is over (counted in the writer itself, not guessed from a pause afterwards).
    assert started and in_flight[0] == 0
    sink.close()


def test_files_of_a_flush_go_up_at_once(tmp_path):
    active, peak = [0], [0]
    lock = threading.Lock()

    overlap = threading.Condition(lock)

    class Writer(LakeWriter):
        def write(self, table, partition, **kwargs):
            with overlap:
                active[0] += 1
                peak[0] = max(peak[0], active[0])
                overlap.notify_all()
                # Hold this write until another is under way too; written one at a time, it
                # would wait out the deadline alone and the peak would stay 1.
                overlap.wait_for(lambda: peak[0] > 1, timeout=DEADLINE)
            try:
                return super().write(table, partition, **kwargs)
            finally:
                with lock:
                    active[0] -= 1

    sink = ParquetSink(Writer(fsspec.filesystem("file"), str(tmp_path)), concurrency=4)
    landed = sink.land([part(f"t{i}") for i in range(8)], {}, INFO)
    assert len(landed) == 8 and peak[0] > 1
    sink.close()


def test_object_stores_write_many_files_at_once_by_default(tmp_path):
    """A file on an object store waits on round trips, not on the disk: 64 at once, 8 locally."""
    local = ParquetSink(LakeWriter(fsspec.filesystem("file"), str(tmp_path)))
    remote = ParquetSink(LakeWriter(fsspec.filesystem("memory"), "/lake-default"))
    chosen = ParquetSink(LakeWriter(fsspec.filesystem("memory"), "/lake-chosen"), concurrency=3)
    try:
        assert (local.concurrency, remote.concurrency, chosen.concurrency) == (8, 64, 3)
    finally:
        for sink in (local, remote, chosen):
            sink.close()


def test_a_small_s3_connection_pool_is_pointed_out(caplog):
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(key="k", secret="s", skip_instance_cache=True)
    with caplog.at_level("INFO", logger="airflow_provider_ktexport.lake.sinks"):
        ParquetSink(LakeWriter(fs, "bucket/lake")).close()
    assert "max_pool_connections" in caplog.text and "10 at a time" in caplog.text
    caplog.clear()
    fs = s3fs.S3FileSystem(
        key="k", secret="s", skip_instance_cache=True, config_kwargs={"max_pool_connections": 64}
    )
    with caplog.at_level("INFO", logger="airflow_provider_ktexport.lake.sinks"):
        ParquetSink(LakeWriter(fs, "bucket/lake")).close()
    assert "max_pool_connections" not in caplog.text
