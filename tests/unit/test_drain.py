"""The drain engine with a fake client and the real lake writer on a local folder."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.client import Batch
from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportConfigError,
    KtExportProtocolError,
    KtExportTransientError,
    KtExportWriteError,
)
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table

EMPTY = object()


def make_batch(batch_id: str, seqs: range) -> Batch:
    raw = [
        json.dumps(
            {"type": "telemetry", "date": "2026-11-25T10:00:00Z", "seq": s, "location": {"lat": 1.5}}
        ).encode()
        for s in seqs
    ]
    return Batch(id=batch_id, raw_items=raw, leased_at=time.monotonic(), body_size=sum(map(len, raw)))


class FakeClient:
    """Serves scripted answers; records every ack with what the lake held at that moment."""

    long_poll_seconds = 0.2

    def __init__(self, answers, lake: Path | None = None, ack_result: bool = True) -> None:
        self.answers = deque(answers)
        self.lake = lake
        self.ack_result = ack_result
        self.acks: list[str] = []
        self.landed_at_ack: dict[str, set[int]] = {}
        self.lock = threading.Lock()
        self.gets = 0

    def get_batch(self, *, deadline=None):
        with self.lock:
            self.gets += 1
            answer = self.answers.popleft() if self.answers else EMPTY
        if answer is EMPTY:
            wait = self.long_poll_seconds
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            time.sleep(wait)
            return None
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer()
        answer.leased_at = time.monotonic()
        return answer

    def ack(self, batch_id: str) -> bool:
        with self.lock:
            self.acks.append(batch_id)
            if self.lake is not None:
                self.landed_at_ack[batch_id] = set(lake_seqs(self.lake))
        return self.ack_result


def lake_seqs(lake: Path) -> list[int]:
    if not any(lake.rglob("*.parquet")):
        return []
    return read_lake_table(lake.as_uri()).column("seq").to_pylist()


def writer_for(lake: Path) -> LakeWriter:
    return LakeWriter(fsspec.filesystem("file"), str(lake))


def run(client, lake: Path, **cfg) -> Drain:
    cfg.setdefault("max_runtime", 20)
    cfg.setdefault("lease_seconds", 8)
    cfg.setdefault("flush_seconds", 3)
    cfg.setdefault("max_in_flight", 2)
    drain = Drain(client, writer_for(lake), DrainConfig(**cfg))
    drain.run()
    return drain


class TestConfig:
    def test_defaults_are_valid(self):
        cfg = DrainConfig()
        assert (cfg.flush_seconds, cfg.lease_seconds, cfg.flush_records) == (60, 120, 50_000)

    def test_short_test_settings_are_accepted(self):
        DrainConfig(lease_seconds=8, flush_seconds=3)

    @pytest.mark.parametrize("flush", [100, 119, 120, 200])
    def test_flush_too_close_to_the_lease_is_refused_with_the_limit(self, flush):
        with pytest.raises(KtExportConfigError, match=r"flush_seconds=.* at most 90 s"):
            DrainConfig(flush_seconds=flush, lease_seconds=120)

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"max_runtime": 0},
            {"flush_records": 0},
            {"max_in_flight": 0},
            {"partition_by": ("record_type", "hour")},
            {"partition_by": ()},
        ],
    )
    def test_bad_values_name_the_setting(self, kwargs):
        with pytest.raises(KtExportConfigError, match=next(iter(kwargs))):
            DrainConfig(**kwargs)


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


def test_undecodable_body_is_quarantined_and_not_acked_by_default(tmp_path):
    lake = tmp_path / "lake"
    body = b'{"id": "bad1", "items": [{"type": "tele'
    client = FakeClient(
        [KtExportProtocolError("truncated", body=body, batch_id="bad1"), make_batch("ok", range(2))]
    )
    drain = run(client, lake, max_in_flight=1)
    assert drain.result.quarantined == 1
    assert client.acks == ["ok"]
    stored = [p for p in (lake / "_quarantine").iterdir() if p.read_bytes() == body]
    assert len(stored) == 1


def test_ack_quarantined_acknowledges_only_a_body_that_keeps_failing(tmp_path):
    lake = tmp_path / "lake"
    body = b'{"id": "bad2", "items": [1, 2'
    for attempt in (1, 2):  # a transient truncation heals by redelivery: no ack yet
        client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad2")])
        drain = run(client, lake, ack_quarantined=True)
        assert client.acks == [], attempt
        assert drain.result.quarantined == 1
    client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad2")])
    drain = run(client, lake, ack_quarantined=True)
    assert client.acks == ["bad2"]
    assert drain.result.acked == 1


def test_ack_quarantined_counts_a_body_redelivered_under_new_ids(tmp_path):
    """The service redelivers under a new id: the sightings are of the body, not of the id."""
    lake = tmp_path / "lake"
    for n in (1, 2, 3):
        batch_id = f"lease-{n}"
        body = b'{"id":"%b","items":[{"a":1}],"items":[]}' % batch_id.encode()
        client = FakeClient([KtExportProtocolError("items twice", body=body, batch_id=batch_id)])
        run(client, lake, ack_quarantined=True)
        assert client.acks == ([] if n < 3 else ["lease-3"]), n
    assert len(list((lake / "_quarantine").glob("*.body"))) == 1


def test_ack_quarantined_waits_for_a_stored_copy_that_reads_back(tmp_path):
    lake = tmp_path / "lake"
    body = b'{"id": "bad4", "items": [1, 2'
    run(
        FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad4")]),
        lake,
        ack_quarantined=True,
    )
    (stored,) = (lake / "_quarantine").glob("*.body")
    stored.write_bytes(b"damaged")
    client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad4")])
    drain = run(client, lake, ack_quarantined=True, ack_quarantined_after=1)
    assert client.acks == [] and drain.result.acked == 0
    assert stored.read_bytes() == body  # stored again: the next sighting may acknowledge
    client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad4")])
    run(client, lake, ack_quarantined=True, ack_quarantined_after=1)
    assert client.acks == ["bad4"]


@pytest.mark.parametrize("bad_id", ["", ".", "..", "a/b", "x\ty", "a?b"])
def test_ack_quarantined_never_deletes_an_unsafe_id(tmp_path, bad_id):
    lake = tmp_path / "lake"
    body = b'{"id": "?", "items": [1, 2'
    for _ in range(3):
        client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id=bad_id)])
        run(client, lake, ack_quarantined=True, ack_quarantined_after=1)
        assert client.acks == []


def test_a_failing_quarantine_ack_does_not_fail_the_run(tmp_path):
    lake = tmp_path / "lake"
    body = b'{"id": "bad3", "items": [1, 2'

    class AckRaises(FakeClient):
        def ack(self, batch_id):
            raise KtExportTransientError("503 on DELETE", status_code=503)

    client = AckRaises([KtExportProtocolError("truncated", body=body, batch_id="bad3")])
    drain = run(client, lake, ack_quarantined=True, ack_quarantined_after=1)
    assert drain.result.stopped == "empty"
    assert drain.result.ack_failed == 1


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


def test_failed_acks_are_counted_not_raised(tmp_path):
    lake = tmp_path / "lake"
    client = FakeClient([make_batch("x", range(2)), make_batch("y", range(2, 4))], ack_result=False)
    drain = run(client, lake)
    assert drain.result.ack_failed == 2 and drain.result.acked == 0
    assert drain.result.records == 4


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


def test_the_xcom_summary_lists_at_most_500_files_and_counts_them_all():
    from airflow_provider_ktexport.drain import DrainResult

    result = DrainResult(files=[f"file:///lake/f{i}.parquet" for i in range(510)], rejected_files=["r"])
    summary = result.summary()
    assert summary["files"] == result.files[:500] and summary["file_count"] == 510
    assert summary["rejected_files"] == ["r"] and summary["rejected_file_count"] == 1
    assert summary["files_truncated"] is True
    assert len(json.dumps(summary)) < 40_000
    whole = result.summary(max_files=None)
    assert whole["files"] == result.files and whole["files_truncated"] is False
