"""The drain loop with a fake client and the real lake writer on a local folder: when it leases,
flushes, stops and fails."""

from __future__ import annotations

import json
import threading
import time

import fsspec
import pytest

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportConfigError,
    KtExportTransientError,
    KtExportWriteError,
)
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.transport.sync_client import Batch
from tests.unit.drain.support import (
    EMPTY,
    FakeClient,
    lake_seqs,
    make_batch,
    run,
    writer_for,
)


@pytest.mark.parametrize("queued", [True, False], ids=["data-queued", "queue-empty"])
def test_a_lake_under_a_regular_file_fails_before_the_first_get(tmp_path, queued):
    (tmp_path / "file").write_text("not a folder")
    lake = tmp_path / "file" / "lake"
    client = FakeClient([make_batch("b1", range(5))] if queued else [])
    with pytest.raises(KtExportConfigError, match="regular file") as err:
        run(client, lake)
    assert str(lake) in str(err.value)
    assert client.gets == 0 and client.acks == []


def test_an_unreachable_store_fails_before_the_first_get_as_an_outage(tmp_path):
    client = FakeClient([make_batch("b1", range(5))])

    class UnreachableStore(LakeWriter):
        def _put(self, path, data):
            raise ConnectionRefusedError(111, "Connection refused")

    drain = Drain(
        client,
        UnreachableStore(fsspec.filesystem("memory"), "/lake"),
        DrainConfig(lease_seconds=8, flush_seconds=3),
    )
    with pytest.raises(KtExportWriteError, match="ConnectionRefusedError") as err:
        drain.run()
    assert not isinstance(err.value, KtExportConfigError)
    assert client.gets == 0


def test_stops_at_max_runtime_and_lands_what_it_holds(tmp_path):
    lake = tmp_path / "lake"
    counter = iter(range(10_000))

    def endless():
        i = next(counter)
        time.sleep(0.02)
        return make_batch(f"e{i}", range(i * 3, i * 3 + 3))

    client = FakeClient([endless] * 10_000, lake=lake)
    drain = run(client, lake, max_runtime=1.0)
    assert drain.result.stopped == "max_runtime"
    assert drain.result.batches == len(client.acks) > 0
    assert len(lake_seqs(lake)) == drain.result.records == 3 * drain.result.batches


def test_flushes_on_lease_age_while_a_get_is_still_outstanding(tmp_path):
    lake = tmp_path / "lake"
    late_served = threading.Event()

    def late():
        time.sleep(1.5)  # a long poll that holds the only GET slot
        late_served.set()
        return make_batch("late", range(3, 6))

    client = FakeClient([make_batch("old", range(3)), late], lake=lake)
    acked_before_late: list[bool] = []
    real_ack = client.ack

    def ack(batch_id):
        acked_before_late.append(batch_id == "old" and not late_served.is_set())
        return real_ack(batch_id)

    client.ack = ack
    drain = run(client, lake, lease_seconds=3, flush_seconds=0.5, max_in_flight=1)
    # "old" was flushed on its age (0.5 s), not at the end of the run or the next answer.
    assert acked_before_late[0] is True
    assert client.landed_at_ack["old"] >= {0, 1, 2}
    assert drain.result.max_ack_lease_age_s < 3
    assert sorted(client.acks) == ["late", "old"]


def test_drain_until_keeps_polling_through_empty_answers(tmp_path):
    lake = tmp_path / "lake"
    client = FakeClient([EMPTY, EMPTY, EMPTY, make_batch("probed", range(4))], lake=lake)
    drain = run(client, lake, drain_until=time.time() + 0.8)
    assert client.acks == ["probed"]
    assert drain.result.stopped == "empty"


def test_without_drain_until_the_first_empty_answer_ends_the_run(tmp_path):
    lake = tmp_path / "lake"
    more = [make_batch(f"later{i}", range(i * 4, i * 4 + 4)) for i in range(5)]
    client = FakeClient([EMPTY, *more], lake=lake)
    drain = run(client, lake, max_in_flight=1)
    assert drain.result.stopped == "empty"
    # The empty answer ends leasing: no GET after it.
    assert client.gets == 1
    assert client.acks == []


def test_auth_error_lands_what_is_held_then_raises(tmp_path):
    lake = tmp_path / "lake"
    client = FakeClient(
        [make_batch("held", range(3)), KtExportAuthError("bad key", status_code=401)], lake=lake
    )
    with pytest.raises(KtExportAuthError):
        run(client, lake, max_in_flight=1)
    assert client.acks == ["held"]
    assert sorted(lake_seqs(lake)) == [0, 1, 2]


def _storm(*, out_of_time: bool) -> KtExportTransientError:
    return KtExportTransientError("GET answered 503", status_code=503, out_of_time=out_of_time)


def test_a_failure_in_the_runs_last_seconds_ends_the_run_not_the_task(tmp_path):
    # The server answered, then failed with no time left to retry: land, ack, end like max_runtime.
    lake = tmp_path / "lake"
    client = FakeClient([make_batch("held", range(3)), _storm(out_of_time=True)], lake=lake)
    drain = run(client, lake, max_in_flight=1)
    assert drain.result.stopped == "max_runtime"
    assert client.acks == ["held"]
    assert sorted(lake_seqs(lake)) == [0, 1, 2]


@pytest.mark.parametrize(
    "answers",
    [
        [_storm(out_of_time=True)],  # the server never answered in this run: an outage, not a blip
        [make_batch("held", range(3)), _storm(out_of_time=False)],  # retries ran out
    ],
    ids=["no-answer-yet", "retries-exhausted"],
)
def test_other_transient_failures_still_fail_the_task(tmp_path, answers):
    lake = tmp_path / "lake"
    client = FakeClient(answers, lake=lake)
    with pytest.raises(KtExportTransientError):
        run(client, lake, max_in_flight=1)
    assert client.acks == [a.id for a in answers if isinstance(a, Batch)]  # what was held still landed


def test_should_stop_stops_leasing_at_once(tmp_path):
    lake = tmp_path / "lake"
    stop = threading.Event()

    def slow():
        time.sleep(0.05)
        return make_batch(f"s{time.monotonic_ns()}", range(1))

    client = FakeClient([slow] * 1000, lake=lake)
    drain = Drain(
        client, writer_for(lake), DrainConfig(lease_seconds=8, flush_seconds=3), should_stop=stop.is_set
    )
    threading.Timer(0.5, stop.set).start()
    t0 = time.monotonic()
    drain.run()
    assert time.monotonic() - t0 < 5
    assert drain.result.stopped == "stopped"
    assert client.gets < 1000
    # What was held was young enough to land: every held batch acked.
    assert len(client.acks) == drain.result.batches


def test_a_flush_holds_no_more_record_bytes_than_the_pace_allows(tmp_path):
    """Records of 10 KB at the default 50,000 a flush would hold 500 MB: bytes bound it too."""
    lake = tmp_path / "lake"
    batches = [make_batch(f"b{i}", range(i * 4, i * 4 + 4)) for i in range(6)]
    batch_bytes = max(sum(map(len, b.raw_items)) for b in batches)
    client = FakeClient(batches, lake=lake)
    drain = Drain(client, writer_for(lake), DrainConfig(max_runtime=20, lease_seconds=8, flush_seconds=3))
    drain.pace.flush_bytes = 2 * batch_bytes
    held_bytes: list[int] = []
    real_flush = drain.flusher.flush

    def flush(batches, reason):
        held_bytes.append(sum(len(raw) for b in batches for raw in b.raw_items))
        real_flush(batches, reason)

    drain.flusher.flush = flush
    drain.run()
    assert sorted(lake_seqs(lake)) == list(range(24))
    # A flush starts once the cap is reached: it holds the cap plus at most the batch that passed it.
    assert len(held_bytes) >= 2 and max(held_bytes) <= 2 * batch_bytes + batch_bytes


def test_many_record_types_share_a_larger_flush_than_one_type_gets(tmp_path):
    """Building lands one record type at a time, so the byte cap holds per type (pace.flush_bytes);
    all types together stop at pace.flush_total_bytes. Batches of four types of equal size pass
    flush_bytes in all long before any one type reaches it."""
    lake = tmp_path / "lake"

    def mixed(batch_id: str, seqs: range) -> Batch:
        raws = [
            json.dumps({"type": f"t{s % 4}", "date": "2026-11-25T10:00:00Z", "seq": s}).encode() for s in seqs
        ]
        return Batch(id=batch_id, raw_items=raws, leased_at=time.monotonic(), body_size=sum(map(len, raws)))

    batches = [mixed(f"b{i}", range(i * 8, i * 8 + 8)) for i in range(12)]
    batch_bytes = max(sum(map(len, b.raw_items)) for b in batches)
    client = FakeClient(batches, lake=lake)
    drain = Drain(client, writer_for(lake), DrainConfig(max_runtime=20, lease_seconds=8, flush_seconds=3))
    drain.pace.flush_bytes = batch_bytes  # a quarter of each batch is one type's
    drain.pace.flush_total_bytes = 5 * batch_bytes // 2
    held: list[tuple[int, int]] = []
    real_flush = drain.flusher.flush

    def flush(taken, reason):
        held.append((len(taken), sum(len(raw) for b in taken for raw in b.raw_items)))
        real_flush(taken, reason)

    drain.flusher.flush = flush
    drain.run()
    assert sorted(lake_seqs(lake)) == list(range(96))
    # Past flush_bytes in all (the old cap), up to the total: 3 batches a flush, not 1.
    assert max(n for n, _ in held) == 3 and max(b for _, b in held) <= 3 * batch_bytes
