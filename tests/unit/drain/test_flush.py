"""A flush: built, landed and verified before any acknowledgement; one bad record never stops the
queue (it is kept as a reject with its exact text)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.drain import flush as flush_module
from airflow_provider_ktexport.exceptions import (
    KtExportError,
    KtExportRejectsError,
    KtExportWriteError,
)
from airflow_provider_ktexport.lake.keys import record_key
from airflow_provider_ktexport.lake.rejects import (
    read_rejects,
)
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake, read_lake_table
from airflow_provider_ktexport.testing.records import RecordGenerator
from tests.unit.drain.support import (
    BAD_TYPES,
    HOSTILE,
    FakeClient,
    MaskingClient,
    batch_of,
    good_records,
    lake_seqs,
    make_batch,
    rejected_files,
    run,
    writer_for,
)


def test_every_ack_follows_the_verified_write_of_its_records(tmp_path):
    lake = tmp_path / "lake"
    batches = [make_batch(f"b{i}", range(i * 10, i * 10 + 10)) for i in range(10)]
    client = FakeClient(batches, lake=lake)
    drain = run(client, lake, flush_records=25)
    assert sorted(client.acks) == sorted(b.id for b in batches)
    for batch in batches:
        seqs = {json.loads(r)["seq"] for r in batch.raw_items}
        assert seqs <= client.landed_at_ack[batch.id], f"{batch.id} acked before its records landed"
    assert sorted(lake_seqs(lake)) == list(range(100))
    result = drain.result
    assert result.records == 100 and result.batches == 10 and result.acked == 10
    assert result.flushes >= 4  # flush_records=25 forces several flushes
    assert result.stopped == "empty"
    assert sum(pq.read_metadata(f.removeprefix("file://")).num_rows for f in result.files) == 100


def test_write_failure_acknowledges_nothing_and_raises(tmp_path):
    lake = tmp_path / "lake"
    client = FakeClient([make_batch("b1", range(5)), make_batch("b2", range(5, 10))])

    class BrokenWriter(LakeWriter):
        def write(self, table, partition, **kwargs):
            raise KtExportWriteError("disk on fire", destination=str(lake))

    drain = Drain(
        client,
        BrokenWriter(fsspec.filesystem("file"), str(lake)),
        DrainConfig(lease_seconds=8, flush_seconds=3),
    )
    with pytest.raises(KtExportWriteError, match="disk on fire"):
        drain.run()
    assert client.acks == []


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_record_is_kept_as_a_reject_and_its_batch_is_acked(tmp_path, kind):
    lake = tmp_path / "lake"
    hostile = HOSTILE[kind]
    raws = good_records(3) + [hostile] + good_records(3, start=3)
    client = FakeClient([batch_of("b1", raws), make_batch("b2", range(10, 12))], lake=lake)
    seen_at_ack: dict[str, list[Path]] = {}
    real_ack = client.ack

    def ack(batch_id):
        seen_at_ack[batch_id] = rejected_files(lake)
        return real_ack(batch_id)

    client.ack = ack
    drain = run(client, lake)
    assert drain.result.stopped == "empty"
    assert sorted(client.acks) == ["b1", "b2"]
    # The reject was written (and verified) before the DELETE of its batch.
    assert seen_at_ack["b1"]
    rejects = read_rejects(str(lake))
    assert rejects.column("_raw").to_pylist() == [hostile.decode()]
    assert rejects.column("_batch_id").to_pylist() == ["b1"]
    assert rejects.column("_error").to_pylist()[0]
    assert drain.result.rejected == 1
    assert drain.result.records == 8
    seqs = read_lake_table(str(lake)).column("seq").to_pylist()
    assert sorted(seqs) == [0, 1, 2, 3, 4, 5, 10, 11]


def test_every_hostile_kind_in_one_flush(tmp_path):
    lake = tmp_path / "lake"
    raws = good_records(5)
    for hostile in HOSTILE.values():
        raws.append(hostile)
    raws += good_records(5, start=5)
    client = FakeClient([batch_of("mixed", raws)], lake=lake)
    drain = run(client, lake)
    assert client.acks == ["mixed"]
    kept = sorted(read_rejects(str(lake)).column("_raw").to_pylist())
    assert kept == sorted(h.decode() for h in HOSTILE.values())
    assert sorted(read_lake_table(str(lake)).column("seq").to_pylist()) == list(range(10))
    assert drain.result.rejected == len(HOSTILE)


def test_the_key_is_redacted_from_stored_rejects(tmp_path):
    lake = tmp_path / "lake"
    key = MaskingClient.key
    echoed = b'{"type":"proxy","v":1e999,"page":"https://x/v2/stream?token=' + key.encode() + b'"}'
    client = MaskingClient([batch_of("b1", [echoed])])
    run(client, lake)
    assert client.acks == ["b1"]
    stored = b"".join(p.read_bytes() for p in lake.rglob("*") if p.is_file())
    assert key.encode() not in stored
    assert read_rejects(str(lake)).column("_raw").to_pylist() == [echoed.decode().replace(key, "***")]


def test_a_valid_record_echoing_the_key_lands_masked_and_foreign_tokens_land_exactly(tmp_path):
    """Issue 18: rows, _raw and _record_key come from the masked text; other text is untouched."""
    lake = tmp_path / "lake"
    key = MaskingClient.key
    foreign = "https://files.example.com/r.csv?token=abc"
    echo = (
        b'{"type":"telemetry","seq":1,"note":"GET /v2/stream?token='
        + key.encode()
        + b'","file":"'
        + (foreign.encode() + b'"}')
    )
    client = MaskingClient([batch_of("b1", [echo])])
    run(client, lake, include_raw=True)
    assert client.acks == ["b1"]
    row = read_lake_table(str(lake)).to_pylist()[0]
    assert row["note"] == "GET /v2/stream?token=***" and row["file"] == foreign
    masked = echo.replace(key.encode(), b"***")
    assert row["_raw"] == masked.decode()
    assert row["_record_key"] == record_key(json.loads(masked))  # no hash of the key's text either
    stored = b"".join(p.read_bytes() for p in lake.rglob("*") if p.is_file())
    assert key.encode() not in stored


def test_a_record_type_echoing_the_key_gets_the_masked_types_folder(tmp_path):
    """The buffer reads each record's type as it joins and the flush reuses it, except for a record
    whose text the key mask changed: its folder comes from the masked text, never the key's."""
    lake = tmp_path / "lake"
    key = MaskingClient.key
    echo = b'{"type":"t-' + key.encode() + b'","seq":1}'
    plain = b'{"type":"plain","seq":2}'
    client = MaskingClient([batch_of("b1", [echo, plain])])
    run(client, lake)
    assert client.acks == ["b1"]
    folders = sorted(p.name for p in lake.glob("record_type=*"))
    assert folders == ["record_type=plain", "record_type=t-%2A%2A%2A"]  # the folder escape of "*"
    assert all(key not in str(p) for p in lake.rglob("*"))


def test_max_reject_share_fails_the_task_after_keeping_and_acking(tmp_path):
    lake = tmp_path / "lake"
    raws = good_records(2) + [HOSTILE["number_out_of_range"]] * 2
    client = FakeClient([batch_of("b1", raws)], lake=lake)
    with pytest.raises(KtExportRejectsError, match="max_reject_share=0.25"):
        run(client, lake, max_reject_share=0.25)
    assert client.acks == ["b1"]
    assert read_rejects(str(lake)).num_rows == 2


def test_rows_that_do_not_add_up_acknowledge_nothing(tmp_path, monkeypatch):
    """The commit point: written + rejected rows per batch must equal the batch's records."""
    real = flush_module.land_records

    def loses_one(records, batch_ids, record_types=None, **kw):
        types = None if record_types is None else record_types[:-1]
        return real(records[:-1], batch_ids[:-1], record_types=types, **kw)

    monkeypatch.setattr(flush_module, "land_records", loses_one)
    lake = tmp_path / "lake"
    client = FakeClient([make_batch("b1", range(5))], lake=lake)
    with pytest.raises(KtExportError, match="do not add up"):
        run(client, lake)
    assert client.acks == []


def test_a_file_that_fails_verification_acknowledges_nothing(tmp_path):
    lake = tmp_path / "lake"

    class ShortWriter(LakeWriter):
        """Stores a file whose footer holds one row fewer than the drain wrote."""

        def _put(self, path, data):
            if path.endswith(".parquet"):
                table = pq.read_table(pa.BufferReader(data))
                buf = pa.BufferOutputStream()
                pq.write_table(table.slice(0, table.num_rows - 1), buf)
                data = buf.getvalue().to_pybytes()
            super()._put(path, data)

    client = FakeClient([make_batch("b1", range(5))], lake=lake)
    drain = Drain(
        client, ShortWriter(writer_for(lake).fs, str(lake)), DrainConfig(lease_seconds=8, flush_seconds=3)
    )
    with pytest.raises(KtExportWriteError, match="Verifying"):
        drain.run()
    assert client.acks == []


def test_a_flush_over_many_partitions_starts_early(tmp_path):
    lake = tmp_path / "lake"
    batches = []
    for day in range(1, 13):  # a backfill: each batch is one day
        raws = [
            json.dumps(
                {"type": "telemetry", "date": f"2026-10-{day:02d}T10:00:00Z", "seq": day * 10 + i}
            ).encode()
            for i in range(3)
        ]
        batches.append(batch_of(f"d{day}", raws))
    client = FakeClient(batches, lake=lake)
    drain = run(client, lake, max_in_flight=1, max_flush_partitions=4)
    assert sorted(client.acks) == sorted(b.id for b in batches)
    assert drain.result.flushes >= 3
    assert read_lake_table(str(lake)).num_rows == 36


def test_read_rejects_of_a_lake_without_rejects_has_the_same_columns(tmp_path):
    lake = tmp_path / "lake"
    client = FakeClient([batch_of("b1", good_records(2) + [HOSTILE["not_an_object"]])])
    run(client, lake)
    some = read_rejects(str(lake))
    none = read_rejects(str(tmp_path / "empty"))
    assert none.num_rows == 0 and none.schema.names == some.schema.names
    assert some.column("record_type").to_pylist() == ["unknown"]
    assert read_rejects(str(lake), record_type="unknown").column("_raw").to_pylist() == ["[1,2,3]"]


def test_a_year_0_time_never_lands_after_a_reject_retypes_its_column(tmp_path):
    lake = tmp_path / "lake"
    raws = [
        b'{"type":"event","eventDate":"0001-01-01T00:30:00+01:00","note":"plain words","seq":1}',
        b'{"type":"event","note":"0001-01-01T00:30:00+01:00","seq":2}',
        *good_records(2, start=3),
    ]
    client = FakeClient([batch_of("b1", raws)], lake=lake)
    drain = run(client, lake)
    assert client.acks == ["b1"] and drain.result.rejected == 2
    assert sorted(read_rejects(str(lake)).column("_raw").to_pylist()) == sorted(r.decode() for r in raws[:2])
    assert sorted(read_lake_table(str(lake)).column("seq").to_pylist()) == [3, 4]


def test_record_types_that_make_bad_names_all_land(tmp_path):
    lake = tmp_path / "lake"
    at_ack: dict[str, tuple[int, int]] = {}

    class Watching(FakeClient):
        def ack(self, batch_id):
            at_ack[batch_id] = (len(rejected_files(lake)), len(list(lake.glob("record_type=*/**/*.parquet"))))
            return super().ack(batch_id)

    answers = [batch_of(f"b{i}", good_records(4, start=10 * i) + list(BAD_TYPES.values())) for i in range(2)]
    client = Watching(answers, lake=lake)
    # One flush per batch: both batches hold the same bad-type records, and two copies of a record
    # in one flush are a batch and its redelivery (landed once, lake.ledger.drop_repeats).
    drain = run(client, lake, max_in_flight=1, flush_records=5)
    assert sorted(client.acks) == ["b0", "b1"] and all(r and f for r, f in at_ack.values())
    assert drain.result.rejected == 2 and drain.result.records == 2 * 9
    rejects = read_rejects(str(lake))
    assert rejects.column("_raw").to_pylist() == [BAD_TYPES["lone_surrogate"].decode()] * 2
    tables = read_lake(str(lake))
    for kind, raw in BAD_TYPES.items():
        if kind != "lone_surrogate":
            rtype = json.loads(raw)["type"]
            (table,) = [t for t in tables.values() if rtype in t.column("type").to_pylist()]
            assert table.column("type").to_pylist() == [rtype] * 2  # the exact type, in its own folder
            assert read_lake(str(lake), record_type=rtype)  # found by its type
    names = [p.name for p in lake.rglob("*")]
    assert max(len(n.encode("utf-8")) for n in names) <= 200 + len("record_type=")
    assert not (lake / "record_type=_rejected").exists() and not (lake / "_schema" / "_rejected").exists()


def test_each_record_is_screened_for_nesting_once(tmp_path, monkeypatch):
    """The buffer decides which records nest too deep as a batch joins; the flush carries that
    decision instead of screening every record again (1.5 s per 100k 100-point trips)."""
    from airflow_provider_ktexport.lake import record_limits
    from airflow_provider_ktexport.lake import rejects as rejects_module

    screened: Counter[bytes] = Counter()
    real = record_limits.nests_deeper_than

    def counting(raw: bytes, limit: int) -> bool:
        screened[bytes(raw)] += 1
        return real(raw, limit)

    for module in (record_limits, rejects_module):
        monkeypatch.setattr(module, "nests_deeper_than", counting, raising=False)
    trips = [
        json.dumps(r).encode()
        for r in RecordGenerator(2, record_types=("trip",), track_points=100).records(1, 6)
    ]
    lake = tmp_path / "lake"
    client = FakeClient(
        [batch_of("b1", trips[:3] + [HOSTILE["object_1000_deep"]]), batch_of("b2", trips[3:])]
    )
    run(client, lake)
    assert sorted(client.acks) == ["b1", "b2"]
    assert {raw: screened[raw] for raw in trips} == {raw: 1 for raw in trips}
    assert read_lake_table(lake.as_uri()).num_rows == 6 and len(read_rejects(str(lake))) == 1
