"""Every store the README names, proven: local folder, S3 (moto), GCS (gcp-storage-emulator), Azure (Azurite).

The same tests run on each store (see tests/integration/stores.py): writes read back whole,
a failed write leaves nothing under the final name, a damaged write is caught by verification
and removed, undecodable bodies are quarantined, a drain from the emulator lands every record
once and acknowledges no batch before its files are verified, and compaction merges files.
On the object stores the upload itself is checked: one request per file, and a chunked upload
that breaks off leaves no object behind.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.compact import compact_lake
from airflow_provider_ktexport.lake.writer import read_lake_table
from airflow_provider_ktexport.testing.emulator import Emulator
from tests.emulators import client_for
from tests.integration.stores import (  # noqa: F401 - the fixtures, found by pytest by name
    Store,
    azure_endpoint_fixture,
    bucket_name,
    gcs_endpoint_fixture,
    gcs_filesystem,
    http_requests,
    object_store_fixture,
    store_fixture,
    writes,
)
from tests.integration.test_crash_recovery import simple_records
from tests.lake_support import land

pytestmark = pytest.mark.integration

DAY = "2026-11-25"


def telemetry(seqs: range, **extra) -> list[dict]:
    return [{"type": "telemetry", "date": f"{DAY}T10:00:00Z", "seq": i, **extra} for i in seqs]


def read_file(on: Store, path: str) -> pa.Table:
    with on.fs.open(path, "rb") as fh:
        return pq.read_table(fh)


# -- the writer ----------------------------------------------------------------------------------------


def test_write_verify_and_read_back(store: Store) -> None:
    writer = store.writer(writer_id="w1")
    records = [
        {"type": "telemetry", "date": f"{DAY}T10:11:12Z", "location": {"speed": 5, "lat": -33.9}},
        {"type": "telemetry", "date": f"{DAY}T10:12:00Z", "location": {"speed": 7}, "io": {"in1": True}},
        {"type": "event", "eventDate": "2026-11-24T00:00:00Z", "details": {"asset": {"id": 1}}},
    ]
    written = land(writer, records)
    assert {w.uri.rsplit("/", 1)[0] for w in written} == {
        f"{store.uri}/record_type=telemetry/event_date={DAY}",
        f"{store.uri}/record_type=event/event_date=2026-11-24",
    }
    for w in written:
        assert store.fs.info(w.path)["size"] == w.bytes
        assert read_file(store, w.path).num_rows == w.rows
    assert sorted(store.data_files()) == sorted(w.path for w in written)
    assert store.fs.find(f"{store.root}/_schema/telemetry/columns")  # one file per published column
    telemetry_rows = read_lake_table(store.fs, store.root, record_type="telemetry").to_pylist()
    assert sorted((r["location__speed"], r["location__lat"], r["io__in1"]) for r in telemetry_rows) == [
        (5, -33.9, None),
        (7, None, True),
    ]
    assert read_lake_table(store.fs, store.root).num_rows == 3


def test_a_failed_write_leaves_nothing_under_the_final_name(store: Store, monkeypatch) -> None:
    writer = store.writer()
    land(writer, telemetry(range(3)))  # publishes the schema: the next write is the data file alone
    before = store.files()
    if store.name == "local":
        # The bytes are in the temporary file when the fsync fails.
        def broken_fsync(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", broken_fsync)
        with pytest.raises(KtExportWriteError, match="Input/output error"):
            land(writer, telemetry(range(3, 6)))
    else:
        with http_requests(fail=lambda method, url, calls: method in ("PUT", "POST")) as calls:
            with pytest.raises(KtExportWriteError, match="injected fault"):
                land(writer, telemetry(range(3, 6)))
        # One request (retried as a whole by botocore) broke; no other write reached the server.
        assert len({c for c in calls if c[0].startswith("FAILED")}) == 1, calls
        assert not writes(calls), calls
    assert store.files() == before  # nothing new: no temporary file, no object
    assert sorted(read_lake_table(store.fs, store.root).column("seq").to_pylist()) == [0, 1, 2]


def test_verification_catches_a_damaged_object_and_removes_it(store: Store, monkeypatch) -> None:
    writer = store.writer()
    land(writer, telemetry(range(3)))
    before = store.data_files()
    put = writer._put

    def truncating_put(path: str, data: bytes) -> None:
        # The store kept fewer bytes than were sent (a proxy or client that cut the body short).
        put(path, data[:-9] if path.endswith(".parquet") else data)

    monkeypatch.setattr(writer, "_put", truncating_put)
    with pytest.raises(KtExportWriteError, match="Verifying .* failed .*size") as err:
        land(writer, telemetry(range(3, 6)))
    assert err.value.destination.startswith(f"{store.uri}/record_type=telemetry/")
    assert store.data_files() == before  # the damaged object was removed


def test_quarantine_stores_the_body_once_and_counts_sightings(store: Store) -> None:
    writer = store.writer()
    body = b'{"id": "b7", "items": [{"type": "telemetry", "date": '  # cut short
    first = writer.quarantine(body, reason="truncated JSON", batch_id="b7")
    second = writer.quarantine(body, reason="truncated JSON", batch_id="b7")
    assert first == second and first.startswith(f"{store.uri}/_quarantine/")
    assert store.fs.cat_file(store.root + first[len(store.uri) :]) == body
    assert writer.quarantine_sightings(body) == 2
    # Redelivered under a new id: the same body, one stored copy, read back before an ack.
    assert writer.quarantine(body.replace(b"b7", b"b8"), reason="truncated JSON", batch_id="b8") == first
    assert writer.quarantine_sightings(body) == 3 and writer.quarantine_kept(body.replace(b"b7", b"b9"))
    assert [p.rsplit(".", 1)[1] for p in store.files()] == ["body", "json", "seen"]
    assert store.data_files() == []


def test_one_request_per_file(object_store: Store) -> None:
    """A data file is one PUT/POST: no multipart or resumable session that could be left half-done.

    The single-request limits are s3fs 100 MiB (2 x its 50 MiB chunk), gcsfs 50 MiB, Azure 64 MiB;
    the flush size keeps files far below them (see the next test for what happens above).
    """
    writer = object_store.writer()
    land(writer, telemetry(range(3), note="x"))  # the schema is published: the next write is data only
    rows = 60_000  # about 1 MB of Parquet
    with http_requests() as calls:
        written = land(writer, telemetry(range(rows), note="x" * 20))
    assert len(written) == 1 and written[0].bytes > 500_000
    assert len(writes(calls)) == 1, calls
    assert read_file(object_store, written[0].path).num_rows == rows


def test_a_data_file_is_not_read_back_over_the_network(object_store: Store) -> None:
    """A backfill writes thousands of files on a remote store: each costs its upload and the
    metadata request that proves it is there at its size (on S3 one PUT and one HEAD; gcsfs's
    ``info`` asks twice, as object and as folder), never a download of its footer."""
    writer = object_store.writer()
    land(writer, telemetry(range(3), note="x"))  # the schema is published: the next write is data only
    with http_requests() as calls:
        written = land(writer, telemetry(range(3, 6), note="x"))
    assert len(written) == 1
    downloads = [
        c
        for c in calls
        if c[0] == "GET" and "part-" in c[1] and ("alt=media" in c[1] or "/storage/v1/" not in c[1])
    ]
    assert downloads == [], calls
    if object_store.name == "s3":
        assert [c[0] for c in calls if "part-" in c[1]] == ["PUT", "HEAD"], calls


def _chunked(store: Store) -> tuple[dict, str]:
    """pipe() keyword arguments that force the store's chunked upload, and the request that adds a chunk."""
    if store.name == "s3":
        return {"chunksize": 5 * 2**20}, "partNumber="  # multipart upload: UploadPart requests
    if store.name == "gcs":
        return {"chunksize": 2**18}, "upload_id="  # resumable upload: one PUT per chunk
    # Azure: block blob, Put Block per chunk, committed by Put Block List
    config = store.fs.service_client._config
    config.max_single_put_size = config.max_block_size = 2**18
    return {}, "comp=block&"


def test_a_chunked_upload_that_breaks_off_leaves_no_object(object_store: Store) -> None:
    """Above the single-request size each store uploads in chunks and commits at the end: a break
    after some chunks were accepted leaves nothing under the final name (forced with small chunks)."""
    kwargs, chunk_marker = _chunked(object_store)
    path = f"{object_store.root}/record_type=t/event_date={DAY}/part-big.parquet"
    data = os.urandom(11 * 2**20 if object_store.name == "s3" else 2**20)

    def second_chunk(method: str, url: str, calls: list) -> bool:
        return chunk_marker in url and sum(chunk_marker in u for _, u in calls) >= 1

    # botocore wraps the fault in its HTTPClientError (after retrying that chunk); the others raise it.
    with http_requests(fail=second_chunk) as calls, pytest.raises(Exception, match="injected fault"):
        object_store.fs.pipe(path, data, **kwargs)
    assert [u for m, u in calls if chunk_marker in u and not m.startswith("FAILED")], calls  # one chunk went
    assert not object_store.fs.exists(path)
    assert object_store.files() == []
    object_store.fs.pipe(path, data, **kwargs)  # and the same upload, unbroken, commits whole
    assert object_store.fs.cat_file(path) == data


# -- the drain -----------------------------------------------------------------------------------------


def test_drain_lands_every_record_once_and_acks_only_verified_files(store: Store) -> None:
    records = simple_records(240)
    violations: list[str] = []
    landed: set[int] = set()
    seen: set[str] = set()
    lock = threading.Lock()

    def on_ack(batch_id: str, batch: list[dict]) -> None:
        # Runs in the emulator before it applies the ack: the batch's records must be readable in
        # the store already, in files that read whole.
        with lock:
            for path in store.data_files():
                if path not in seen:
                    landed.update(read_file(store, path).column("emulator_seq").to_pylist())
                    seen.add(path)
            missing = [r["emulator_seq"] for r in batch if r["emulator_seq"] not in landed]
        if missing:
            violations.append(f"{batch_id}: {len(missing)} records acknowledged before they landed")
            raise AssertionError("ack before write")

    with Emulator(
        api_key="ops-test-key", lease_seconds=10, long_poll_seconds=0.3, batch_size=40, seed=5
    ) as emu:
        emu.enqueue(records)
        emu.on_ack = on_ack
        config = DrainConfig(
            lease_seconds=10, flush_seconds=1, flush_records=80, max_in_flight=2, source="stores"
        )
        with client_for(emu, long_poll_seconds=0.3) as client:
            result = Drain(client, store.writer(), config).run()
        stats = emu.stats()
    assert not violations, violations
    assert stats["queued"] == 0 and stats["leased"] == 0 and stats["acked_records"] == 240, stats
    assert result.records == 240 and result.acked == 6 and result.ack_failed == 0
    assert result.flushes >= 2  # several flushes, so acks interleave with later writes
    assert all(uri.startswith(store.uri + "/record_type=") for uri in result.files)
    seqs = Counter(read_lake_table(store.fs, store.root).column("emulator_seq").to_pylist())
    assert set(seqs) == set(range(1, 241)) and max(seqs.values()) == 1
    assert not [p for p in store.files() if ".tmp" in p]


# -- compaction ----------------------------------------------------------------------------------------


def test_compaction_merges_dedups_and_keeps_types(store: Store) -> None:
    writer = store.writer(writer_id="drain")
    land(writer, telemetry(range(0, 100), ignition=1))
    land(writer, telemetry(range(100, 200), ignition="on"))  # "on" goes to the variant ignition___string
    land(writer, telemetry(range(150, 200), ignition="on"))  # 50 duplicates
    before = store.data_files()
    assert len(before) == 3

    result = compact_lake(store.fs, store.root, uri_prefix=store.uri, now=time.time() + 3600)

    after = store.data_files()
    assert len(after) == 1 and not set(after) & set(before)
    assert (result.files_in, result.files_out, result.duplicates_removed) == (3, 1, 50)
    assert result.files == [store.uri + after[0][len(store.root) :]]
    table = read_file(store, after[0])
    assert table.schema.field("ignition").type == pa.int64()  # the published type stays
    assert sorted(v for v in table.column("ignition___string").to_pylist() if v) == ["on"] * 100
    assert sorted(table.column("seq").to_pylist()) == list(range(200))
    assert sorted(read_lake_table(store.fs, store.root).column("seq").to_pylist()) == list(range(200))
    assert not [p for p in store.files() if ".tmp" in p]


# -- GCS through the class users get -------------------------------------------------------------------


@pytest.mark.parametrize("zonal", [False, True], ids=["standard-bucket", "zonal-bucket"])
def test_gcs_through_gcsfs_default_class_and_zonal_buckets_are_refused(
    gcs_endpoint: str, monkeypatch, zonal: bool
) -> None:
    """Airflow's Google provider builds ``gcsfs.GCSFileSystem``, today ``ExtendedGcsFileSystem``.

    It asks a gRPC API (which no emulator serves) for the bucket type; the answer is faked here.
    A standard bucket writes through the same JSON-API upload as above; a zonal bucket, where
    gcsfs writes appendable objects visible before they are complete, is refused before any byte.
    """
    from gcsfs.extended_gcsfs import BucketType, ExtendedGcsFileSystem

    kind = BucketType.ZONAL_HIERARCHICAL if zonal else BucketType.NON_HIERARCHICAL

    async def lookup(self, bucket: str) -> BucketType:
        return kind

    monkeypatch.setattr(ExtendedGcsFileSystem, "_lookup_bucket_type", lookup)
    asked: list[str] = []

    def sync_lookup(self, bucket: str) -> BucketType:
        if sys._getframe(1).f_code.co_name == "_refuse_zonal_gcs_bucket":  # the writer asks, not gcsfs
            asked.append(bucket)
        return kind

    monkeypatch.setattr(ExtendedGcsFileSystem, "_sync_lookup_bucket_type", sync_lookup)
    bucket = bucket_name()
    gcs_filesystem(gcs_endpoint).mkdir(bucket)
    fs = ExtendedGcsFileSystem(
        endpoint_url=gcs_endpoint, token="anon", project="ktexport-test", skip_instance_cache=True
    )
    store = Store("gcs", fs, f"{bucket}/lake", f"gs://{bucket}/lake")
    writer = store.writer()
    if zonal:
        with http_requests() as calls, pytest.raises(KtExportWriteError, match="zonal") as err:
            writer._put(f"{store.root}/record_type=t/part-x.parquet", b"PAR1")
        assert err.value.destination == f"gs://{bucket}"
        assert not writes(calls)
        assert gcs_filesystem(gcs_endpoint).find(bucket) == []
    else:
        written = land(writer, telemetry(range(3))) + land(writer, telemetry(range(3, 5), extra=1))
        assert [w.rows for w in written] == [3, 2]
        assert asked == [bucket]  # schema and data uploads of two flushes, one question from the writer
        assert sorted(read_lake_table(fs, store.root).column("seq").to_pylist()) == [0, 1, 2, 3, 4]
