"""The flush pace: limits learnt from the run's writes, and the drain keeping its acks in the lease.

The drain tests run on a fake clock that only the store moves: every file written costs it a
fixed time, so a flush's length (and whether a lease ran out) does not depend on the machine.
"""

from __future__ import annotations

import json
import threading
import time
import types
from typing import Any

import pytest

from airflow_provider_ktexport.drain import Drain, DrainConfig, acks, flush, loop
from airflow_provider_ktexport.drain.buffer import HeldBatch
from airflow_provider_ktexport.drain.pace import FIRST_FILE_SECONDS, FIRST_LEASE_AHEAD, FLUSH_BYTES, FlushPace
from airflow_provider_ktexport.exceptions import KtExportError
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from airflow_provider_ktexport.transport.sync_client import Batch
from tests.unit.drain.support import FakeClient, writer_for
from tests.waiting import wait_until


def held(batch_id: str, leased_at: float, days: range) -> HeldBatch:
    return HeldBatch(batch_id, leased_at, [b"{}"] * len(days), frozenset(("t", f"d{d}") for d in days))


class TestFlushPace:
    def test_the_byte_cap_starts_at_its_default_and_halves_with_the_other_limits(self):
        pace = FlushPace(flush_records=100, max_partitions=50, lease_seconds=30)
        assert pace.flush_bytes == FLUSH_BYTES
        pace.shrink(records=100, partitions=50)
        assert (pace.flush_records, pace.max_partitions, pace.flush_bytes) == (50, 25, FLUSH_BYTES // 2)

    def test_before_a_measured_flush_a_file_costs_the_assumed_time(self):
        pace = FlushPace(flush_records=100, max_partitions=5000, lease_seconds=30)
        assert pace.partition_limit(30.0) == int(15 / FIRST_FILE_SECONDS)  # half of 30 s at the guess
        assert pace.partition_limit(1.0) == 10
        assert pace.next_step([held("a", 0, range(5)), held("b", 0, range(5, 10))], 1.0) == 2  # 10 fit
        assert pace.next_step([held("a", 0, range(40)), held("b", 0, range(40, 80))], 1.0) == 1
        assert FlushPace(100, 50, 30).partition_limit(30.0) == 50  # the setting stays a bound

    def test_a_table_sink_keeps_the_settings_bound_once_measured(self):
        pace = FlushPace(flush_records=100, max_partitions=50, lease_seconds=30)
        pace.note_flush(files=0, batches=4, land_seconds=10.0, total_seconds=12.0)  # no cost per file
        assert pace.partition_limit(1.0) == 50
        assert pace.next_step([held("a", 0, range(40)), held("b", 0, range(40, 80))], 1.0) == 2

    def test_before_a_measured_flush_the_fetchers_lease_four_ahead_unless_what_is_held_is_wide(self):
        pace = FlushPace(flush_records=50_000, max_partitions=2000, lease_seconds=30)
        assert pace.lease_ahead() == 1  # nothing known: one batch tells how wide they are
        # An ordinary first flush: many batches, few files; the fetchers keep four GETs going.
        assert pace.lease_ahead(held=1, files=5) == FIRST_LEASE_AHEAD
        assert pace.lease_ahead(held=60, files=10) == FIRST_LEASE_AHEAD
        # A backfill's batch writes 440 files, 22 s at the guess: a second would wait for it.
        assert pace.lease_ahead(held=1, files=440) == 0
        assert pace.lease_ahead(held=1, files=120) == 1  # 6 s a batch: two fit in half a lease

    def test_a_measured_pace_bounds_the_files_by_the_time_left(self):
        pace = FlushPace(flush_records=100, max_partitions=500, lease_seconds=30)
        pace.note_flush(files=100, batches=4, land_seconds=10.0, total_seconds=12.0)  # 0.1 s a file
        assert pace.partition_limit(20.0) == 100  # half of 20 s at 0.1 s a file
        assert pace.partition_limit(0.0) == 1
        assert pace.lease_ahead() == 5  # half of 30 s at 3 s a batch
        assert pace.lease_ahead(held=3) == 2
        # What the writer holds (taken, landing) fills half a lease: a batch leased now would wait.
        assert pace.lease_ahead(held=5) == 0 and pace.lease_ahead(held=9) == 0

    def test_a_flush_that_would_not_fit_is_split_oldest_first_and_shared_files_are_free(self):
        pace = FlushPace(flush_records=100, max_partitions=500, lease_seconds=30)
        pace.note_flush(files=10, batches=1, land_seconds=1.0, total_seconds=1.0)  # 0.1 s a file
        pending = [held("a", 0, range(30)), held("b", 0, range(30)), held("c", 0, range(30, 60))]
        assert pace.next_step(pending, 10.0) == 2  # 50 files fit: a and b share theirs, c adds 30
        assert pace.next_step(pending[2:], 0.5) == 1  # never less than one batch

    def test_shrink_halves_what_the_late_flush_held_down_to_one(self):
        pace = FlushPace(flush_records=50_000, max_partitions=2000, lease_seconds=30)
        pace.shrink(20_000, 3000)  # held fewer records than the limit, wrote more files than it
        assert (pace.flush_records, pace.max_partitions, pace.shrinks) == (10_000, 1000, 1)
        pace.shrink(3, 1)
        assert (pace.flush_records, pace.max_partitions, pace.shrinks) == (1, 1, 2)


LEASE = 4.0
FILE_SECONDS = 0.1  # what each file costs on the fake clock


class SlowStore:
    """The drain's clock (monotonic, moved on by writes) and a writer that spends it."""

    def __init__(self, lake: Any, file_seconds: float = FILE_SECONDS) -> None:
        self.offset = 0.0
        self.lock = threading.Lock()
        clock = self

        class Writer(LakeWriter):
            def write(self, table: Any, partition: Any, **kwargs: Any) -> Any:
                with clock.lock:
                    clock.offset += file_seconds
                return super().write(table, partition, **kwargs)

        base = writer_for(lake)
        self.writer = Writer(base.fs, base.root)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def leased(self, batch: Batch) -> Any:
        """An answer for FakeClient whose lease starts on this clock when it is served."""

        def serve() -> Batch:
            batch.leased_at = self.monotonic()
            return batch

        return serve


def day_batch(batch_id: str, first_day: int, days: int) -> Batch:
    """A backfill batch: one record on each of ``days`` days (one partition file each)."""
    raws = [
        json.dumps(
            {
                "type": "t",
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + d * 86_400)),
                "seq": d,
            }
        ).encode()
        for d in range(first_day, first_day + days)
    ]
    return Batch(id=batch_id, raw_items=raws, leased_at=0.0, body_size=sum(map(len, raws)))


def on_the_store_clock(store: SlowStore, monkeypatch: pytest.MonkeyPatch) -> SlowStore:
    clock = types.SimpleNamespace(monotonic=store.monotonic, time=time.time)
    for module in (loop, flush, acks):  # every drain module that reads the lease clock
        monkeypatch.setattr(module, "time", clock)
    return store


@pytest.fixture
def slow_store(tmp_path, monkeypatch):
    return on_the_store_clock(SlowStore(tmp_path / "lake"), monkeypatch)


def config(**kwargs: Any) -> DrainConfig:
    kwargs.setdefault("max_runtime", 120)
    kwargs.setdefault("max_in_flight", 1)
    return DrainConfig(lease_seconds=LEASE, flush_seconds=2, write_concurrency=1, **kwargs)


def test_a_drain_that_saw_leases_expire_shrinks_its_next_flushes(tmp_path, monkeypatch, caplog):
    """Ten 4-day batches in one flush cost 4.8 s of a 4 s lease (the store's 0.12 s a file is 2.4
    times what a first flush assumes, FIRST_FILE_SECONDS): none can be acknowledged. (At 0.1 s a
    file the flush cost exactly the lease, and only a loaded machine's real time made it late.)
    The drain then halves its limits (and budgets by the measured pace), so the next ten land in
    steps that are each acknowledged in time instead of failing the same way."""
    slow_store = on_the_store_clock(SlowStore(tmp_path / "lake", file_seconds=0.12), monkeypatch)
    first = [day_batch(f"a{i}", i * 4, 4) for i in range(10)]
    later = [day_batch(f"b{i}", 100 + i * 4, 4) for i in range(10)]
    client = FakeClient([])
    drain = Drain(client, slow_store.writer, config(flush_records=50))
    gate = slow_store.leased(later[0])

    def after_first_flush() -> Batch:
        wait_until(lambda: drain.result.flushes >= 1)  # lease the rest once the first flush is over
        return gate()

    client.answers.extend([slow_store.leased(b) for b in first] + [after_first_flush])
    client.answers.extend(slow_store.leased(b) for b in later[1:])
    with caplog.at_level("WARNING"):
        result = drain.run()
    assert result.lease_expired == 10 and not set(client.acks) & {b.id for b in first}
    assert sorted(client.acks) == sorted(b.id for b in later)
    assert result.flush_shrinks >= 1 and result.summary()["flush_shrinks"] == result.flush_shrinks
    assert drain.pace.flush_records <= 25
    assert "flushes hold at most" in caplog.text
    seqs = read_lake_table(str(tmp_path / "lake")).column("seq").to_pylist()
    # The later batches all landed; of the first, those written late (a batch whose lease ran out
    # before its step began is left to the server), each record once.
    assert len(seqs) == len(set(seqs)) and set(range(100, 140)) <= set(seqs) <= set(range(40)) | set(
        range(100, 140)
    )


def test_a_batch_too_wide_for_its_lease_is_never_acked_and_a_second_stops_the_run(
    slow_store, tmp_path, caplog
):
    """60 partition files at 0.1 s each outlive a 4 s lease even alone: the batch is written,
    not acknowledged, counted and warned about; a second such batch stops the run with advice
    instead of writing such batches for as long as it runs."""
    client = FakeClient([slow_store.leased(day_batch("w1", 0, 60))])
    drain = Drain(client, slow_store.writer, config())
    # Other records: a redelivery of w1 would be dropped as already landed (its flush is in doubt).
    second = slow_store.leased(day_batch("w2", 60, 60))

    def after_first_flush() -> Batch:
        wait_until(lambda: drain.result.flushes >= 1)  # after the first landed
        return second()

    client.answers.append(after_first_flush)
    with caplog.at_level("WARNING"), pytest.raises(KtExportError, match="write_concurrency") as err:
        drain.run()
    assert "Stopping the run" in str(err.value)
    assert client.acks == []
    assert drain.result.wide_batches == 2
    assert "alone writes 60 partition files" in caplog.text


def test_the_redelivery_of_a_batch_too_wide_for_its_lease_is_dropped_as_landed(slow_store, tmp_path):
    """The wide batch was written but not acknowledged, so its flush stays in doubt: its
    redelivery (a new id, the same records) writes no file, is acknowledged in its lease, and
    the lake holds each record once (each delivery used to write another copy, never acked)."""
    client = FakeClient([slow_store.leased(day_batch("w1", 0, 60))])
    drain = Drain(client, slow_store.writer, config())
    again = slow_store.leased(day_batch("w1-again", 0, 60))

    def after_first_flush() -> Batch:
        wait_until(lambda: drain.result.flushes >= 1)
        return again()

    client.answers.append(after_first_flush)
    result = drain.run()
    assert result.wide_batches == 1 and client.acks == ["w1-again"]
    assert result.deduped == 60 and result.summary()["deduped"] == 60
    assert sorted(read_lake_table(str(tmp_path / "lake")).column("seq").to_pylist()) == list(range(60))


def test_a_backfill_is_acknowledged_in_its_leases_from_the_first_flush_on(tmp_path, monkeypatch):
    """Twenty batches of 20 days each (400 files, 8 s at 0.02 s a file) under a 4 s lease, all
    on the queue at once. Bounded by the settings alone, the first flush held all twenty and
    none was acknowledged. Now a file is assumed to cost 0.03 s until one flush was measured,
    the fetchers lease nothing while what the writer holds fills half a lease, and what is held
    lands as soon as they stop: every batch is acknowledged in its lease, in one run."""
    store = on_the_store_clock(SlowStore(tmp_path / "lake", file_seconds=0.02), monkeypatch)
    batches = [day_batch(f"b{i}", i * 20, 20) for i in range(20)]
    client = FakeClient([store.leased(b) for b in batches])
    result = Drain(client, store.writer, config(max_in_flight=4)).run()
    assert (result.lease_expired, result.ack_failed, result.flush_shrinks) == (0, 0, 0)
    assert sorted(client.acks) == sorted(b.id for b in batches)
    assert result.max_ack_lease_age_s is not None and result.max_ack_lease_age_s < LEASE
    seqs = read_lake_table(str(tmp_path / "lake")).column("seq").to_pylist()
    assert sorted(seqs) == list(range(400))  # each record once


def test_a_batch_whose_lease_ends_before_its_files_can_land_is_left_to_the_server(slow_store, tmp_path):
    """Once the pace is measured (0.1 s a file), a 20-file batch needs 2 s; one whose answer
    reached the writer with 0.8 s of its lease left is not written (it could only land late, as a
    copy) and comes back fresh; the batches that can land are written and acknowledged."""
    client = FakeClient([slow_store.leased(day_batch("a", 0, 5))])
    drain = Drain(client, slow_store.writer, config())
    stale = day_batch("stale", 10, 20)

    def served_late() -> Batch:
        wait_until(lambda: drain.result.flushes >= 1)  # after a flush measured the pace
        stale.leased_at = slow_store.monotonic() - 3.0  # 0.8 s left of its 4 s lease
        return stale

    client.answers.extend([served_late, slow_store.leased(day_batch("b", 40, 5))])
    result = drain.run()
    assert client.acks == ["a", "b"] and result.lease_expired == 1
    seqs = read_lake_table(str(tmp_path / "lake")).column("seq").to_pylist()
    assert sorted(seqs) == [*range(5), *range(40, 45)]  # nothing of the stale batch written
