"""The sensor's probed batch lands in the same run: sensor -> drain on a queue of one batch."""

from __future__ import annotations

import threading

import pytest

from airflow_provider_ktexport.lake.writer import read_lake_table
from airflow_provider_ktexport.testing.emulator import Emulator
from tests.integration.conftest import ktexport_conn

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_single_batch_probed_by_the_sensor_lands_in_the_same_run(run_dag, tmp_path, deferrable):
    lake = tmp_path / "lake"
    with Emulator(api_key="k-sensor", lease_seconds=5, long_poll_seconds=1, batch_size=500, seed=11) as emu:
        # Data arrives after the sensor has started waiting on an empty queue.
        arrival = threading.Timer(3.0, emu.generate, args=(40,))
        arrival.start()
        result = run_dag(
            "ktexport_it_sensor_drain",
            connections={"ktexport_default": ktexport_conn(emu)},
            variables={"ktexport_lake": lake.as_uri()},
            options={"lease_seconds": 5, "flush_seconds": 2, "deferrable": deferrable},
        )
        arrival.cancel()
        stats = emu.stats()
    assert result.returncode == 0, result.output[-5000:]
    # The single batch was leased twice (the sensor's probe, then the drain after the lease ended)
    # and acknowledged once, by the drain, in this same run.
    assert stats["emitted"] == 40
    assert stats["redelivered"] == 40
    assert stats["acked_records"] == 40 and stats["queued"] == 0 and stats["leased"] == 0
    assert sorted(read_lake_table(lake.as_uri()).column("emulator_seq").to_pylist()) == list(range(1, 41))
    probe = result.xcom("wait_for_data")
    assert set(probe) == {"lease_ends_at", "record_count"} and probe["record_count"] == 40
    assert result.xcom("drain")["records"] == 40
