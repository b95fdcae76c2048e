"""Acknowledgements: counted when they fail, never sent for a lease that ran out on our clock."""

from __future__ import annotations

import time

from airflow_provider_ktexport.drain import Acknowledger, DrainConfig, DrainResult, HeldBatch, NoMetrics
from airflow_provider_ktexport.drain.metrics import MetricsReporter
from airflow_provider_ktexport.exceptions import KtExportTransientError
from airflow_provider_ktexport.lake.writer import read_lake_table
from tests.unit.drain.support import (
    FakeClient,
    make_batch,
    run,
)


def test_failed_acks_are_counted_not_raised(tmp_path):
    lake = tmp_path / "lake"
    client = FakeClient([make_batch("x", range(2)), make_batch("y", range(2, 4))], ack_result=False)
    drain = run(client, lake)
    assert drain.result.ack_failed == 2 and drain.result.acked == 0
    assert drain.result.records == 4


def test_no_delete_for_a_lease_that_ran_out_on_our_clock(tmp_path):
    lake = tmp_path / "lake"
    old = make_batch("stale", range(3))

    def stale():
        old.leased_at = time.monotonic() - 30  # held past the 8 s lease before the flush
        return old

    client = FakeClient([stale, make_batch("fresh", range(3, 5))], lake=lake)
    drain = run(client, lake, max_in_flight=1)
    assert client.acks == ["fresh"]
    assert drain.result.lease_expired == 1
    # Not written either: the server may have redelivered it already (exactly once as landed).
    assert sorted(read_lake_table(str(lake)).column("seq").to_pylist()) == [3, 4]


class _Client:
    """Answers DELETEs: True, False, or a KtExportError for the ids in ``raises``."""

    long_poll_seconds = 0.1

    def __init__(self, raises=()):
        self.raises = set(raises)
        self.deleted: list[str] = []

    def get_batch(self, *, deadline=None):
        return None

    def ack(self, batch_id):
        self.deleted.append(batch_id)
        if batch_id in self.raises:
            raise KtExportTransientError("503 on DELETE", status_code=503)
        return batch_id != "refused"


def test_the_acknowledger_sends_no_delete_past_the_lease_and_counts_every_outcome(caplog):
    client = _Client(raises={"broken"})
    result = DrainResult()
    acks = Acknowledger(
        client, DrainConfig(lease_seconds=8, flush_seconds=3), result, MetricsReporter(NoMetrics())
    )
    now = time.monotonic()
    batches = [
        HeldBatch("ok", now, [b"{}"]),
        HeldBatch("refused", now, [b"{}"]),
        HeldBatch("broken", now, [b"{}"]),
        HeldBatch("late", now - 7.7, [b"{}"]),  # inside the lease, not inside its margin
    ]
    try:
        with caplog.at_level("WARNING"):
            assert acks.ack_landed(batches) == (1, 1)
    finally:
        acks.close()
    assert sorted(client.deleted) == ["broken", "ok", "refused"]
    assert (result.acked, result.ack_failed, result.lease_expired) == (1, 2, 1)
    assert "Acknowledging batch broken failed" in caplog.text and "lease had run out" in caplog.text
