"""The trigger's prober against the emulator over real HTTP: the body cap and the envelope rules."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc

import pytest

from airflow_provider_ktexport.exceptions import KtExportBodyTooLargeError
from airflow_provider_ktexport.testing.emulator import ENVELOPE_FAULTS, Emulator
from airflow_provider_ktexport.triggers.ktexport import AsyncProber

pytestmark = pytest.mark.integration

LIMIT = 8 * 1024 * 1024


def _settings(emu: Emulator, **extra: object) -> dict[str, object]:
    return {
        "base_url": emu.url,
        "api_key": emu.api_key,
        "long_poll_seconds": 0.3,
        "conn_label": "connection 'kt'",
    } | extra


async def _probe(emu: Emulator, **extra: object):
    async with AsyncProber(_settings(emu, **extra), lease_seconds=30) as prober:
        return await prober.probe_once()


def test_a_gzip_bomb_stops_the_probe_near_max_body_bytes() -> None:
    # ~300 MB of padding in ~300 KB of gzip: read whole, it would cost the triggerer 300 MB+.
    bomb = gzip.compress(b'{"id":"$ID","items":[{"pad":"' + b"a" * (300 * 1024 * 1024) + b'"}]}', 9)
    assert len(bomb) < 400_000
    with Emulator(long_poll_seconds=0.3) as emu:
        emu.generate(2)
        emu.script(200, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, lease=True)
        del bomb
        tracemalloc.start()
        try:
            with pytest.raises(KtExportBodyTooLargeError, match="max_body_bytes") as info:
                asyncio.run(_probe(emu, max_body_bytes=LIMIT))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        stats = emu.stats()
    assert info.value.limit == LIMIT
    assert peak < 4 * LIMIT, f"peak {peak / 2**20:.0f} MiB for a {LIMIT / 2**20:.0f} MiB limit"
    assert stats["acked"] == 0  # abandoned, never acknowledged


@pytest.mark.parametrize("fault", ENVELOPE_FAULTS)
def test_a_broken_envelope_is_data_for_the_drain_never_acknowledged(fault: str) -> None:
    with Emulator(long_poll_seconds=0.3) as emu:
        emu.generate(3)
        emu.set_faults(**{fault: 1.0})
        probe = asyncio.run(_probe(emu))
        stats = emu.stats()
    assert probe is not None and probe.record_count is None and probe.batch_id
    assert stats["broken_envelopes"] == 1 and stats["acked"] == 0
