"""The envelope rules through the whole drain: a batch served with an id but no readable items is
quarantined and never acknowledged, and its records land after redelivery (design.md section 3)."""

from __future__ import annotations

import pytest

from airflow_provider_ktexport.testing.emulator import ENVELOPE_FAULTS
from tests.integration.test_crash_recovery import audit
from tests.integration.test_faults import LEASE, drain, emulator

pytestmark = pytest.mark.integration


def test_broken_envelopes_are_quarantined_never_acknowledged_and_their_records_land_later(tmp_path):
    lake = tmp_path / "lake"
    with emulator(batch_size=20) as emu:
        emitted = emu.generate(200)
        emu.set_faults(**dict.fromkeys(ENVELOPE_FAULTS, 0.1))  # ~30 % of GETs, each kind
        first = drain(emu, lake, until=LEASE + 1.5)
        broken = emu.stats()["broken_envelopes"]
        emu.clear_faults()
        drain(emu, lake, until=LEASE + 1.5)  # the redelivered records
        stats = emu.stats()
        audit(emu, lake, emitted)  # every record in the lake, copies only of real redeliveries
    assert broken > 0 and first.quarantined == broken
    assert stats["acked_broken_envelopes"] == 0  # no DELETE for a body whose records were unread
    assert len(list((lake / "_quarantine").glob("*.body"))) == broken
