"""Hostile records and broken envelopes from the emulator, through the Drain and `airflow dags test`.

Each hostile kind that cannot be a row must end in the rejects table with its exact text, each
that can (a record type that makes a bad folder name: 120 CJK characters, ``_rejected``...) as a
row, while every ordinary record lands once, the queue ends empty and no DELETE comes before both
tables hold the batch. Batches served with an id but no readable items must never be acknowledged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.lake.layout import REJECTED_DIR
from airflow_provider_ktexport.lake.rejects import read_rejects
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.testing.emulator import Emulator
from airflow_provider_ktexport.testing.records import HOSTILE_KINDS, HOSTILE_ROW_KINDS, KEY_TEXT_KINDS
from airflow_provider_ktexport.transport.sync_client import KtExportClient
from tests.integration.conftest import ktexport_conn

pytestmark = pytest.mark.integration

_duck = threading.Lock()


def landed_seqs(lake: Path) -> list[int]:
    if not list(lake.glob("record_type=*/**/*.parquet")):
        return []
    with _duck, duckdb.connect() as con:
        return [
            r[0]
            for r in con.sql(
                f"SELECT emulator_seq FROM read_parquet('{lake}/record_type=*/**/*.parquet', "
                "hive_partitioning=true, union_by_name=true)"
            ).fetchall()
        ]


def assert_row_kinds_keep_their_type(emu: Emulator, lake: Path) -> None:
    """Hostile types that are valid records landed as rows holding their exact type, under folders
    every file system can name."""
    with _duck, duckdb.connect() as con:
        types = dict(
            con.sql(
                f"SELECT emulator_seq, type FROM read_parquet('{lake}/record_type=*/**/*.parquet', "
                "hive_partitioning=false, union_by_name=true)"
            ).fetchall()
        )
    rows = {seq: raw for seq, (kind, raw) in emu.hostile_records().items() if kind in HOSTILE_ROW_KINDS}
    assert rows and all(types[seq] == json.loads(raw)["type"] for seq, raw in rows.items())
    names = [p.name for p in lake.rglob("*")]
    assert max(len(n.encode()) for n in names) <= 200 + len("record_type=")


def rejected_texts(lake: Path) -> list[str]:
    if not (lake / "_rejected").exists():
        return []
    return read_rejects(str(lake)).column("_raw").to_pylist()


#: Poison kinds that are valid records and must land as rows: record types that make bad names,
#: and records holding token= text (served only when named in ``poison_kinds``).
ROW_KINDS = frozenset(HOSTILE_ROW_KINDS) | frozenset(KEY_TEXT_KINDS)


def must_reject(emu: Emulator) -> dict[int, tuple[str, bytes]]:
    """The hostile records that cannot be rows (the others must land as rows)."""
    return {seq: h for seq, h in emu.hostile_records().items() if h[0] not in ROW_KINDS}


#: What a destination holds: the ``emulator_seq`` of every row, the exact text of every reject.
View = Callable[[], tuple[list[int], list[str]]]


def parquet_view(lake: Path) -> View:
    return lambda: (landed_seqs(lake), rejected_texts(lake))


def iceberg_view(catalog: Any) -> View:
    def view() -> tuple[list[int], list[str]]:
        seqs: list[int] = []
        texts: list[str] = []
        for ident in catalog.list_tables("ktexport"):
            table = catalog.load_table(ident).scan().to_arrow()
            if ident[-1] == REJECTED_DIR:
                texts += table.column("_raw").to_pylist()
            elif "emulator_seq" in table.schema.names:
                seqs += table.column("emulator_seq").to_pylist()
        return seqs, texts

    return view


def guard_acks(emu: Emulator, view: View, violations: list[str]) -> None:
    """Veto (and record) a DELETE of a batch whose rows and rejects are not both landed yet."""
    hostile = must_reject(emu)

    def on_ack(batch_id: str, records: list[dict]) -> None:
        try:
            landed, kept = view()
        except Exception as exc:  # a lake no reader can read is a failure, not just a vetoed DELETE
            violations.append(f"{batch_id}: the lake could not be read at DELETE time: {exc!r}")
            raise
        rows, rejects = set(landed), set(kept)
        for r in records:
            seq = r["emulator_seq"]
            if seq in hostile:
                if hostile[seq][1].decode() not in rejects:
                    violations.append(f"{batch_id}: hostile {seq} not in the rejects table at DELETE time")
            elif seq not in rows:
                violations.append(f"{batch_id}: record {seq} not in the lake at DELETE time")
        if violations:
            raise AssertionError(violations[-1])

    emu.on_ack = on_ack


def assert_everything_kept(emu: Emulator, view: View, emitted: int) -> None:
    assert {kind for kind, _ in emu.hostile_records().values()} == set(HOSTILE_KINDS)  # all served
    hostile = must_reject(emu)
    ordinary = [s for s in range(1, emitted + 1) if s not in hostile]
    landed, kept = view()
    assert sorted(landed) == ordinary  # every record that can be a row, once
    assert sorted(kept) == sorted(raw.decode() for _, raw in hostile.values())  # each exact text, once
    stats = emu.stats()
    assert stats["queued"] == 0 and stats["leased"] == 0, stats


def assert_tables_are_named_by_the_rule(catalog: Any) -> None:
    """Every table name is short, and only the sink's own tables start with ``_``."""
    names = [ident[-1] for ident in catalog.list_tables("ktexport")]
    assert all(len(n.encode()) <= 200 for n in names)
    assert [n for n in names if n.startswith("_")] == [REJECTED_DIR]


def destination(tmp_path: Path, kind: str) -> tuple[Any, View, Callable[[Emulator], None]]:
    """A sink, what it holds, and the check of its names, for the Parquet lake or Iceberg."""
    if kind == "parquet":
        lake = tmp_path / "lake"
        return _writer(lake), parquet_view(lake), lambda emu: assert_row_kinds_keep_their_type(emu, lake)
    pytest.importorskip("pyiceberg")
    from airflow_provider_ktexport.lake.iceberg import IcebergSink
    from tests.unit.lake.test_iceberg import catalog_for

    catalog = catalog_for(tmp_path)
    return (
        IcebergSink(catalog, "ktexport"),
        iceberg_view(catalog),
        lambda _: assert_tables_are_named_by_the_rule(catalog),
    )


@pytest.mark.parametrize("kind", ["parquet", "iceberg"])
def test_every_hostile_kind_through_the_drain(tmp_path, kind):
    sink, view, check_names = destination(tmp_path, kind)
    violations: list[str] = []
    with Emulator(
        api_key="poison-test-key-0123456789",
        lease_seconds=30,
        long_poll_seconds=1,
        batch_size=100,
        poison=0.05,
        seed=11,
    ) as emu:
        emu.generate(1500)
        guard_acks(emu, view, violations)
        with KtExportClient(emu.url, emu.api_key, long_poll_seconds=1.0) as client:
            result = Drain(client, sink, DrainConfig(max_runtime=60, flush_records=400)).run()
        assert violations == []
        assert_everything_kept(emu, view, 1500)
        check_names(emu)
        assert result.rejected == len(must_reject(emu)) and result.stopped == "empty"


def _writer(lake: Path) -> LakeWriter:
    import fsspec

    return LakeWriter(fsspec.filesystem("file"), str(lake))


def test_broken_envelopes_are_never_acknowledged_and_their_records_come_back(tmp_path):
    lake = tmp_path / "lake"
    with Emulator(
        api_key="poison-test-key-0123456789", lease_seconds=5, long_poll_seconds=1, batch_size=50, seed=12
    ) as emu:
        emu.generate(600)
        emu.set_faults(items_missing=0.1, items_null=0.1, items_renamed=0.1)
        threading.Timer(4.0, emu.clear_faults).start()  # later deliveries are whole
        with KtExportClient(emu.url, emu.api_key, long_poll_seconds=1.0) as client:
            config = DrainConfig(
                max_runtime=60, lease_seconds=5, flush_seconds=2, drain_until=time.time() + 12
            )
            result = Drain(client, _writer(lake), config).run()
        stats = emu.stats()
    assert stats["broken_envelopes"] > 0 and stats["acked_broken_envelopes"] == 0, stats
    assert result.quarantined == stats["broken_envelopes"]
    assert sorted(set(landed_seqs(lake))) == list(range(1, 601))  # redelivered whole, then landed


def test_hostile_records_through_airflow_dags_test(run_dag, tmp_path):
    lake = tmp_path / "lake"
    violations: list[str] = []
    with Emulator(
        api_key="it-poison-key-0123456789",
        lease_seconds=120,
        long_poll_seconds=1,
        batch_size=150,
        poison=0.04,
        seed=13,
    ) as emu:
        emu.generate(1200)
        guard_acks(emu, parquet_view(lake), violations)
        result = run_dag(
            "ktexport_it_drain",
            connections={"ktexport_default": ktexport_conn(emu)},
            variables={"ktexport_lake": lake.as_uri()},
        )
        assert result.returncode == 0, result.output[-5000:]
        assert violations == []
        assert_everything_kept(emu, parquet_view(lake), 1200)
        summary = result.xcom("drain")
        assert summary["rejected"] == len(must_reject(emu)) > 0
        assert summary["records"] == 1200 - summary["rejected"]
        assert summary["rejected_files"] and all("/_rejected/" in f for f in summary["rejected_files"])
        assert "could not be rows" in result.output  # the flush warned, naming the rejects table


def test_100_point_trips_and_too_deep_records_through_the_drain(tmp_path):
    """Issue 18's shape: long bracket-heavy records land whole (the track as canonical JSON text,
    the key as docs/architecture.md defines it) beside records nested too deep, which are kept as rejects."""
    import json

    import pyarrow.dataset as ds

    from airflow_provider_ktexport.lake.keys import record_key

    lake = tmp_path / "lake"
    violations: list[str] = []
    with Emulator(
        api_key="trips-test-key-0123456789",
        lease_seconds=30,
        long_poll_seconds=1,
        batch_size=50,
        seed=5,
        record_types=["trip"],
        track_points=100,
        poison=0.05,
        poison_kinds=["deep_list", "deep_object"],
    ) as emu:
        trips = emu.generate(400)
        guard_acks(emu, parquet_view(lake), violations)
        with KtExportClient(emu.url, emu.api_key, long_poll_seconds=1.0) as client:
            result = Drain(client, _writer(lake), DrainConfig(max_runtime=60, flush_records=150)).run()
        hostile = emu.hostile_records()
    assert violations == [] and result.stopped == "empty"
    assert hostile and sorted(rejected_texts(lake)) == sorted(raw.decode() for _, raw in hostile.values())
    table = ds.dataset(lake / "record_type=trip", format="parquet", partitioning="hive").to_table(
        columns=["emulator_seq", "track", "_record_key"]
    )
    landed = {row["emulator_seq"]: row for row in table.to_pylist()}
    assert sorted(landed) == sorted(t["emulator_seq"] for t in trips)
    for trip in trips:
        row = landed[trip["emulator_seq"]]
        assert row["track"] == json.dumps(trip["track"], sort_keys=True, separators=(",", ":"))
        assert row["_record_key"] == record_key(trip)
