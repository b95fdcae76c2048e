"""The ``ktexport`` command's unit tests run with a key in ``KTEXPORT_KEY``, as a user's shell has."""

from __future__ import annotations

import pytest

KEY = "unit-cli-key-0123456789"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTEXPORT_KEY", KEY)
