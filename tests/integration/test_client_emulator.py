"""KtExportClient against the export API emulator: leases, long poll, keep-alive, gzip, faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportBodyTooLargeError,
    KtExportProtocolError,
)
from airflow_provider_ktexport.testing.emulator import ENVELOPE_FAULTS, Emulator
from airflow_provider_ktexport.testing.records import HOSTILE_KINDS
from airflow_provider_ktexport.transport.sync_client import Batch, KtExportClient
from tests.emulators import client_for

LONG_POLL = 0.3

pytestmark = [
    pytest.mark.integration,
    pytest.mark.emulator(lease_seconds=30.0, long_poll_seconds=LONG_POLL, batch_size=10, seed=7),
]


def make_client(emu: Emulator, auth_location: str = "header", **kwargs: Any) -> KtExportClient:
    """A client retrying fast, so a test of retries takes milliseconds."""
    fast = {
        "read_timeout": emu.long_poll_seconds + 5,
        "max_retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.1,
    }
    return client_for(emu, auth_location=auth_location, **(fast | kwargs))


def drain(client: KtExportClient) -> list[Batch]:
    """Lease and acknowledge until the queue answers empty."""
    batches = []
    while (batch := client.get_batch()) is not None:
        assert client.ack(batch.id) is True
        batches.append(batch)
    return batches


@pytest.mark.parametrize("auth_location", ["header", "query"])
def test_drain_happy_path(emulator: Emulator, auth_location: str) -> None:
    records = emulator.generate(25)
    with make_client(emulator, auth_location) as client:
        batches = drain(client)
    assert [len(b) for b in batches] == [10, 10, 5]
    got = [item["emulator_seq"] for b in batches for item in b.items]
    assert got == [r["emulator_seq"] for r in records]
    assert [item for b in batches for item in b.items] == records
    stats = emulator.stats()
    assert stats["acked"] == 3 and stats["acked_records"] == 25
    assert stats["queued"] == 0 and stats["leased"] == 0
    assert sorted(emulator.acked_seqs()) == sorted(got)


def test_keep_alive_one_connection(emulator: Emulator) -> None:
    emulator.generate(60)
    with make_client(emulator) as client:
        batches = drain(client)
    assert len(batches) == 6
    stats = emulator.stats()
    assert stats["requests"] >= 13  # 7 GETs + 6 DELETEs
    assert stats["connections"] == 1


def test_gzip_is_used(emulator: Emulator) -> None:
    emulator.generate(10)
    with make_client(emulator) as client:
        batch = client.get_batch()
        assert batch is not None and len(batch) == 10
        client.ack(batch.id)
    assert emulator.stats()["gzip_responses"] >= 1
    assert batch.body_size > 0 and batch.items[0]["emulator_seq"] >= 1


def test_long_poll_empty_is_none(emulator: Emulator) -> None:
    with make_client(emulator) as client:
        start = time.monotonic()
        assert client.get_batch() is None
        assert time.monotonic() - start < LONG_POLL + 5  # the long poll's 500, not a read timeout
    assert emulator.stats()["empty_polls"] == 1


def test_long_poll_answers_when_data_arrives(emulator: Emulator) -> None:
    emulator.long_poll_seconds = 10.0
    with make_client(emulator, long_poll_seconds=10.0, read_timeout=20.0) as client:
        timer = _later(0.3, lambda: emulator.generate(3))
        start = time.monotonic()
        batch = client.get_batch()
        timer.join()
    assert batch is not None and len(batch) == 3
    assert time.monotonic() - start < 8  # well before the 10 s long poll ends


def test_deadline_ends_a_long_poll_early(emulator: Emulator) -> None:
    emulator.long_poll_seconds = 10.0
    with make_client(emulator, long_poll_seconds=10.0, read_timeout=20.0) as client:
        start = time.monotonic()
        assert client.get_batch(deadline=start + 0.5) is None
        assert time.monotonic() - start < 8


def test_unacked_lease_is_redelivered(emulator: Emulator) -> None:
    emulator.lease_seconds = 0.5
    emulator.generate(5)
    with make_client(emulator) as client:
        first = client.get_batch()
        assert first is not None
        time.sleep(1.0)  # let the lease end without an ack
        second = client.get_batch()
        assert second is not None
        assert [i["emulator_seq"] for i in second.items] == [i["emulator_seq"] for i in first.items]
        assert client.ack(first.id) is False  # the old lease is gone
        assert client.ack(second.id) is True
    stats = emulator.stats()
    assert stats["redelivered"] == 5 and stats["ack_unknown"] == 1 and stats["acked_records"] == 5


@pytest.mark.parametrize("auth_location", ["header", "query"])
def test_faults_are_retried_until_success(emulator: Emulator, auth_location: str) -> None:
    emulator.set_faults(
        reset=0.15, status_429=0.1, status_502=0.1, status_503=0.1, status_504=0.1, retry_after=0.02
    )
    records = emulator.generate(100)
    with make_client(emulator, auth_location, max_retries=15) as client:
        batches = drain(client)
    got = sorted(item["emulator_seq"] for b in batches for item in b.items)
    assert got == sorted(r["emulator_seq"] for r in records)
    stats = emulator.stats()
    assert stats["acked_records"] == 100
    assert sum(stats["faults"].values()) > 0  # the faults did happen


def test_undecodable_body_keeps_id_and_comes_back(emulator: Emulator) -> None:
    emulator.lease_seconds = 0.5
    emulator.set_faults(invalid_utf8=1.0)
    emulator.generate(4)
    with make_client(emulator) as client:
        with pytest.raises(KtExportProtocolError) as info:
            client.get_batch()
        assert info.value.batch_id and info.value.body
        emulator.set_faults(invalid_utf8=0.0)
        time.sleep(1.0)
        batch = client.get_batch()
        assert batch is not None and len(batch) == 4  # nothing lost: the lease ran out and came back
        assert client.ack(batch.id)


def test_wrong_key_fails_fast(emulator: Emulator) -> None:
    emulator.generate(3)
    with KtExportClient(emulator.url, "wrong-key", long_poll_seconds=LONG_POLL) as client:
        with pytest.raises(KtExportAuthError):
            client.get_batch()
        with pytest.raises(KtExportAuthError):
            client.check()
    stats = emulator.stats()
    assert stats["unauthorized"] == 2 and stats["served"] == 0


def test_check_never_leases(emulator: Emulator) -> None:
    emulator.generate(3)
    with make_client(emulator) as client:
        client.check()
    stats = emulator.stats()
    assert stats["served"] == 0 and stats["queued"] == 3


def _later(delay: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(delay, action)
    timer.start()
    return timer


# -- hostile records, broken envelopes, huge bodies (issue 11) ------------------------------------


def test_hostile_records_come_out_raw_and_exact_never_as_errors(emulator: Emulator) -> None:
    # Every kind in every batch (poison=1): the client hands each record over byte for byte for
    # the record level to keep or reject; the deep object and the lone surrogate no longer cost
    # their batch (they used to be a RecursionError and a "truncated" quarantine).
    emulator.set_poison(0.5)
    emulator.generate(60)
    raw_by_seq: dict[int, bytes] = {}
    with make_client(emulator) as client:
        while (batch := client.get_batch()) is not None:
            for raw in batch.raw_items:
                raw_by_seq[int(raw.rsplit(b'"emulator_seq":', 1)[1].rstrip(b"}"))] = raw
            assert client.ack(batch.id) is True
    hostile = emulator.hostile_records()
    assert len(raw_by_seq) == 60 and {kind for kind, _ in hostile.values()} == set(HOSTILE_KINDS)
    assert all(raw_by_seq[seq] == raw for seq, (_, raw) in hostile.items())
    assert emulator.stats()["queued"] == 0


@pytest.mark.parametrize("fault", ENVELOPE_FAULTS)
def test_a_broken_envelope_is_a_protocol_error_and_never_acknowledged(emulator: Emulator, fault: str) -> None:
    emulator.generate(30)  # three batches of 10, each served broken
    emulator.set_faults(**{fault: 1.0})
    with make_client(emulator) as client:
        for _ in range(3):
            with pytest.raises(KtExportProtocolError) as info:
                client.get_batch()
            assert info.value.batch_id and b'"items":[' not in info.value.body
        stats = emulator.stats()
    assert stats["broken_envelopes"] == 3 and stats["acked"] == 0 and stats["acked_broken_envelopes"] == 0


def test_a_gzip_bomb_from_the_emulator_is_abandoned_not_kept(emulator: Emulator) -> None:
    import gzip

    bomb = gzip.compress(b'{"id":"$ID","items":[{"pad":"' + b"a" * (40 * 1024 * 1024) + b'"}]}', 9)
    emulator.generate(3)
    emulator.script(200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, lease=True)
    with make_client(emulator, max_body_bytes=4 * 1024 * 1024) as client:
        with pytest.raises(KtExportBodyTooLargeError, match="max_body_bytes"):
            client.get_batch()
        stats = emulator.stats()
    assert stats["leased"] == 1 and stats["acked"] == 0  # the lease is simply abandoned
