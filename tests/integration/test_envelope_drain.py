"""The envelope rules through the whole drain: a batch served with an id but no readable items is
quarantined and never acknowledged, and its records land after redelivery (docs/architecture.md section 3)."""

from __future__ import annotations

import json

import pytest

from airflow_provider_ktexport.exceptions import KtExportBodyTooLargeError
from airflow_provider_ktexport.testing.emulator import ENVELOPE_FAULTS, FIRST_DELIVERY_FAULTS, Emulator
from tests.integration.test_crash_recovery import audit
from tests.integration.test_faults import FAULT_EMULATOR, LEASE, client_for, drain, land_the_rest
from tests.integration.test_poison import guard_acks, parquet_view
from tests.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.emulator(**FAULT_EMULATOR)]


@pytest.mark.emulator(batch_size=20)
def test_broken_envelopes_are_quarantined_never_acknowledged_and_their_records_land_later(emulator, tmp_path):
    lake = tmp_path / "lake"
    emitted = emulator.generate(200)
    emulator.set_faults(**dict.fromkeys(ENVELOPE_FAULTS, 0.1))  # ~30 % of GETs, each kind
    first = drain(emulator, lake, until=LEASE + 1.5)
    broken = emulator.stats()["broken_envelopes"]
    emulator.clear_faults()
    land_the_rest(emulator, lake)  # the redelivered records
    stats = emulator.stats()
    audit(emulator, lake, emitted)  # every record in the lake, copies only of real redeliveries
    assert broken > 0 and first.quarantined == broken
    assert stats["acked_broken_envelopes"] == 0  # no DELETE for a body whose records were unread
    # Each broken delivery is a sighting; bodies alike but for their id ({"id":"..."}) are stored once.
    assert sightings(lake) == broken
    assert len(list((lake / "_quarantine").glob("*.body"))) < broken


def sightings(lake) -> int:
    return sum(json.loads(p.read_text())["count"] for p in (lake / "_quarantine").glob("*.seen"))


def wait_for_leases_to_end(emu: Emulator, seconds: float = 30.0) -> None:
    wait_until(lambda: not emu.stats()["leased"], seconds, what="the leases' end")


@pytest.mark.emulator(batch_size=20)
def test_first_delivery_faults_are_quarantined_once_each_and_land_after_the_lease(emulator, tmp_path):
    """A body read last-key-wins (items twice, items escaped, two ids) must never be acknowledged
    as an empty batch; zero bytes after the gzip end (within max_body_bytes) change nothing."""
    lake = tmp_path / "lake"
    violations: list[str] = []
    emitted = emulator.generate(400)
    guard_acks(
        emulator, parquet_view(lake), violations
    )  # vetoes (and records) a DELETE before the records are in
    emulator.set_faults(**dict.fromkeys(FIRST_DELIVERY_FAULTS, 0.15), gzip_trailer_bytes=256 * 1024)
    first = drain(emulator, lake)
    stats = emulator.stats()
    broken = stats["broken_envelopes"]
    land_the_rest(emulator, lake)  # faults stay on: a redelivery is served whole
    final = emulator.stats()
    audit(emulator, lake, emitted)  # every record in the lake, copies only of real redeliveries
    assert violations == []
    assert all(stats["faults"][name] >= 1 for name in FIRST_DELIVERY_FAULTS), stats["faults"]
    assert broken == sum(stats["faults"][n] for n in ("items_twice", "items_escaped", "id_twice"))
    assert first.quarantined == broken and final["acked_broken_envelopes"] == 0
    assert len(list((lake / "_quarantine").glob("*.body"))) == broken  # one copy each
    assert sightings(lake) == broken
    assert final["queued"] == 0 and final["leased"] == 0


@pytest.mark.emulator(batch_size=20)
def test_a_gzip_trailer_past_max_body_bytes_is_refused_and_its_batch_comes_back_whole(emulator):
    emitted = emulator.generate(20)
    emulator.set_faults(gzip_trailer=1.0, gzip_trailer_bytes=4 * 1024 * 1024)
    with client_for(emulator, max_body_bytes=1024 * 1024) as client:
        with pytest.raises(KtExportBodyTooLargeError, match="max_body_bytes"):
            client.get_batch()
        wait_for_leases_to_end(emulator)
        seqs: list[int] = []
        while (batch := client.get_batch()) is not None:  # a redelivery may regroup the records
            seqs += [r["emulator_seq"] for r in batch.items]
            assert client.ack(batch.id)
    assert sorted(seqs) == [r["emulator_seq"] for r in emitted]
    assert emulator.stats()["faults"]["gzip_trailer"] == 1 and emulator.stats()["queued"] == 0
