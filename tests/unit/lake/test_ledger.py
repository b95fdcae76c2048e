"""The flush ledger (lake/ledger.py, lake/iceberg_ledger.py): a redelivery lands once, on both sinks.

A redelivered batch comes back under a new id and regrouped (as the emulator and the real API do),
so these tests redeliver the records of an unacknowledged flush under new ids, mixed with new ones.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pytest

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.lake.layout import FLUSH_DIR
from airflow_provider_ktexport.lake.ledger import drop_landed, new_flush_id
from tests.unit.drain.support import FakeClient, batch_of, good_records, lake_seqs, writer_for

CFG = {"max_runtime": 20, "lease_seconds": 8, "flush_seconds": 3, "max_in_flight": 1}


def drain(sink_or_writer, answers, *, ack_result: bool = True, **cfg) -> Drain:
    d = Drain(FakeClient(answers, ack_result=ack_result), sink_or_writer, DrainConfig(**(CFG | cfg)))
    d.run()
    return d


def manifests(lake: Path) -> list[Path]:
    return sorted((lake / FLUSH_DIR).rglob("*.json"))


def test_drop_landed_drops_only_the_given_keys():
    table = pa.table({"_record_key": ["a", "b", None, "c"], "x": [1, 2, 3, 4]})
    kept, dropped = drop_landed(table, pa.array(["b", "c", "z"]))
    assert dropped == 2 and kept.column("x").to_pylist() == [1, 3]
    assert drop_landed(table, pa.array([], pa.string())) == (table, 0)


def test_a_batch_and_its_redelivery_in_one_flush_land_once(tmp_path):
    """A GET answered late in its lease: the server redelivered part of it (regrouped) to this
    drain's next GET while the drain's own clock still counted, and both sit in one flush."""
    lake = tmp_path / "lake"
    d = drain(writer_for(lake), [batch_of("b1", good_records(5)), batch_of("b2", good_records(5, 3))])
    assert sorted(lake_seqs(lake)) == list(range(8)) and d.result.deduped == 2
    assert d.client.acks == ["b1", "b2"]


def test_copies_inside_one_batch_are_left_alone(tmp_path):
    lake = tmp_path / "lake"
    d = drain(writer_for(lake), [batch_of("b1", good_records(2) * 2)])
    assert sorted(lake_seqs(lake)) == [0, 0, 1, 1] and d.result.deduped == 0


def test_flush_ids_are_unique_and_sort_by_time():
    ids = [new_flush_id() for _ in range(100)]
    assert len(set(ids)) == 100 and ids[0][:15] <= ids[-1][:15]


def test_a_settled_flush_leaves_no_manifest(tmp_path):
    lake = tmp_path / "lake"
    d = drain(writer_for(lake), [batch_of("b1", good_records(5))])
    assert d.result.acked == 1 and d.result.deduped == 0
    assert (lake / FLUSH_DIR).is_dir() and manifests(lake) == []


def test_parquet_a_redelivery_under_new_ids_lands_once(tmp_path):
    lake = tmp_path / "lake"
    # The acks fail: the flush stays in doubt, its manifest names its files.
    first = drain(writer_for(lake), [batch_of("b1", good_records(10))], ack_result=False)
    assert first.result.ack_failed == 1
    [manifest] = manifests(lake)
    doc = json.loads(manifest.read_text())
    assert doc["source"] == "ktexport_default" and len(doc["files"]) == 1
    assert (lake / doc["files"][0]).exists()

    # Redelivered regrouped, with new records: only the new ones are written.
    redelivered = [batch_of("r1", good_records(5) + good_records(5, 10)), batch_of("r2", good_records(5, 5))]
    second = drain(writer_for(lake), redelivered)
    assert second.result.deduped == 10 and second.result.acked == 2
    assert sorted(lake_seqs(lake)) == list(range(15))
    assert manifests(lake) == [manifest]  # the first stays in doubt (for the window); the second settled
    assert second.result.summary()["deduped"] == 10


def test_a_compaction_keeps_an_in_doubt_flush_findable(tmp_path):
    from airflow_provider_ktexport.lake.compact import compact_lake

    lake = tmp_path / "lake"
    for i in range(3):  # three small files; the last flush's acks fail
        drain(writer_for(lake), [batch_of(f"b{i}", good_records(4, 4 * i))], ack_result=i < 2)
    [manifest] = manifests(lake)
    before = json.loads(manifest.read_text())["files"]
    result = compact_lake(writer_for(lake).fs, str(lake), min_age_seconds=0, now=time.time() + 60)
    assert result.files_in == 3
    after = json.loads(manifest.read_text())["files"]
    assert after != before and all((lake / f).exists() for f in after)

    second = drain(writer_for(lake), [batch_of("r1", good_records(4, 8) + good_records(2, 20))])
    assert second.result.deduped == 4 and sorted(lake_seqs(lake)) == [*range(12), 20, 21]


def test_another_source_is_not_deduplicated_against(tmp_path):
    lake = tmp_path / "lake"
    drain(writer_for(lake), [batch_of("b1", good_records(4))], ack_result=False, source="a")
    second = drain(writer_for(lake), [batch_of("r1", good_records(4))], source="b")
    assert second.result.deduped == 0 and len(lake_seqs(lake)) == 8


def test_a_manifest_past_the_window_is_removed_and_no_longer_deduplicates(tmp_path):
    lake = tmp_path / "lake"
    drain(writer_for(lake), [batch_of("b1", good_records(4))], ack_result=False)
    [manifest] = manifests(lake)
    doc = json.loads(manifest.read_text())
    doc["created"] = time.time() - 3600
    manifest.write_text(json.dumps(doc))
    second = drain(writer_for(lake), [batch_of("r1", good_records(4))], redelivery_window=1800)
    assert second.result.deduped == 0 and manifests(lake) == []


def test_a_manifest_whose_files_never_appeared_is_removed_after_its_deadline(tmp_path):
    lake = tmp_path / "lake"
    drain(writer_for(lake), [batch_of("b1", good_records(4))], ack_result=False)
    [manifest] = manifests(lake)
    doc = json.loads(manifest.read_text())
    for rel in doc["files"]:
        (lake / rel).unlink()  # as if killed after the manifest, before the data
    doc["deadline"] = time.time() - 3600  # its lease ended long ago: no file of it can appear any more
    manifest.write_text(json.dumps(doc))
    second = drain(writer_for(lake), [batch_of("r1", good_records(4))])
    assert second.result.deduped == 0 and sorted(lake_seqs(lake)) == list(range(4))
    assert manifests(lake) == []


def test_redelivery_window_shorter_than_the_lease_is_refused():
    with pytest.raises(Exception, match="redelivery_window must be at least the lease"):
        DrainConfig(redelivery_window=10, lease_seconds=120)


# -- Iceberg -------------------------------------------------------------------------------------------


def iceberg_rows(catalog, table: str = "telemetry") -> list[int]:
    return sorted(catalog.load_table(f"ktexport.{table}").scan().to_arrow().column("seq").to_pylist())


def test_iceberg_a_redelivery_under_new_ids_lands_once(tmp_path):
    pytest.importorskip("pyiceberg")
    from airflow_provider_ktexport.lake.iceberg import IcebergSink
    from airflow_provider_ktexport.lake.iceberg_ledger import DEDUPED, FLUSH_ID, in_doubt_snapshots
    from tests.unit.lake.test_iceberg import catalog_for

    catalog = catalog_for(tmp_path)
    first = drain(IcebergSink(catalog), [batch_of("b1", good_records(10))], ack_result=False)
    assert first.result.ack_failed == 1
    table = catalog.load_table("ktexport.telemetry")
    assert len(in_doubt_snapshots(table, "ktexport_default", own="", window=3600)) == 1

    redelivered = [batch_of("r1", good_records(5) + good_records(5, 10)), batch_of("r2", good_records(5, 5))]
    second = drain(IcebergSink(catalog_for(tmp_path)), redelivered)
    assert second.result.deduped == 10
    assert iceberg_rows(catalog) == list(range(15))
    summary = catalog.load_table("ktexport.telemetry").current_snapshot().summary.additional_properties
    assert summary[DEDUPED] == "10" and summary[FLUSH_ID]


def test_iceberg_settled_flushes_are_not_in_doubt(tmp_path):
    pytest.importorskip("pyiceberg")
    from airflow_provider_ktexport.lake.iceberg import IcebergSink
    from airflow_provider_ktexport.lake.iceberg_ledger import SETTLED, in_doubt_snapshots
    from tests.unit.lake.test_iceberg import catalog_for

    catalog = catalog_for(tmp_path)
    answers = [batch_of("b1", good_records(3)), batch_of("b2", good_records(3, 3))]
    # Two flushes (one batch each, flush_records=3): the second commit says the first is settled,
    # and the run's end records the second in the table property.
    drain(IcebergSink(catalog), answers, flush_records=3)
    table = catalog.load_table("ktexport.telemetry")
    assert any(SETTLED in s.summary.additional_properties for s in table.snapshots())
    assert in_doubt_snapshots(table, "ktexport_default", own="", window=3600) == {}
    again = drain(IcebergSink(catalog), [batch_of("r1", good_records(6))])
    assert again.result.deduped == 0 and iceberg_rows(catalog) == sorted(list(range(6)) * 2)


def test_iceberg_snapshot_expiry_keeps_an_in_doubt_flush_findable(tmp_path):
    pytest.importorskip("pyiceberg")
    from datetime import UTC, datetime, timedelta

    from airflow_provider_ktexport.lake.iceberg import IcebergSink
    from airflow_provider_ktexport.lake.iceberg_maintenance import maintain_namespace
    from tests.unit.lake.test_iceberg import catalog_for

    catalog = catalog_for(tmp_path)
    drain(IcebergSink(catalog), [batch_of("b1", good_records(4))], ack_result=False)  # in doubt
    for i in (1, 2):  # later flushes, settled: the in-doubt one is no longer the table's head
        drain(IcebergSink(catalog), [batch_of(f"b{i + 1}", good_records(4, 4 * i))])
    later = datetime.now(UTC) + timedelta(hours=1)
    [report] = maintain_namespace(catalog, "ktexport", expire_older_than=timedelta(0), now=later)
    assert report.snapshots_expired > 0
    again = drain(IcebergSink(catalog), [batch_of("r1", good_records(4) + good_records(2, 20))])
    assert again.result.deduped == 4 and iceberg_rows(catalog) == [*range(12), 20, 21]
