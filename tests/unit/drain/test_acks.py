"""Acknowledgements: counted when they fail, never sent for a lease that ran out on our clock."""

from __future__ import annotations

import time

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
    assert sorted(read_lake_table(str(lake)).column("seq").to_pylist()) == [0, 1, 2, 3, 4]
