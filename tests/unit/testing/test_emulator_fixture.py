"""The shared ``emulator`` fixture (tests/conftest.py): whose settings win."""

from __future__ import annotations

import pytest

from airflow_provider_ktexport.testing.emulator import Emulator
from tests.emulators import client_for

pytestmark = pytest.mark.emulator(batch_size=7, seed=3, long_poll_seconds=0.2)


def test_the_modules_mark_sets_the_emulator_up(emulator: Emulator) -> None:
    assert (emulator.batch_size, emulator.seed, emulator.long_poll_seconds) == (7, 3, 0.2)


@pytest.mark.emulator(seed=4)
def test_the_tests_mark_wins_over_the_modules(emulator: Emulator) -> None:
    assert (emulator.batch_size, emulator.seed) == (7, 4)


@pytest.mark.parametrize("emulator", [{"batch_size": 2}], indirect=True)
def test_an_indirect_parameter_wins_over_the_marks(emulator: Emulator) -> None:
    assert (emulator.batch_size, emulator.seed) == (2, 3)


def test_the_client_builder_leases_from_the_emulator(emulator: Emulator) -> None:
    emulator.generate(3)
    with client_for(emulator) as client:
        assert client.long_poll_seconds == emulator.long_poll_seconds
        batch = client.get_batch()
        assert batch is not None and len(batch.raw_items) == 3
        client.ack(batch.id)
    assert emulator.stats()["acked_records"] == 3


def test_the_factory_starts_an_emulator_with_its_settings(emulator_factory) -> None:
    emu = emulator_factory(seed=9)
    assert emu.seed == 9 and emu.url.endswith(f":{emu.port}") and emu.port != 0
