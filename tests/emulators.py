"""The one way tests start an emulator and build a client for it (issue 19).

:func:`client_for` is the client builder: the emulator's URL and key, its long poll, and whatever
retry settings the test names. The ``emulator`` and ``emulator_factory`` fixtures in
tests/conftest.py start emulators through :func:`started`; a module sets its emulator's settings
once with ``pytestmark = pytest.mark.emulator(lease_seconds=1, ...)``, a test overrides them with
its own ``@pytest.mark.emulator(...)`` or ``@pytest.mark.parametrize("emulator", [{...}],
indirect=True)``.
"""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_ktexport.testing.emulator import Emulator
from airflow_provider_ktexport.transport.sync_client import KtExportClient


def client_for(emu: Emulator, **settings: Any) -> KtExportClient:
    """A client of ``emu`` with its key, long polling as long as it holds an empty GET; ``settings``
    (any ``KtExportClient`` keyword) win."""
    return KtExportClient(emu.url, emu.api_key, **({"long_poll_seconds": emu.long_poll_seconds} | settings))


def emulator_settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The settings a test asks for: the module's and then the test's ``emulator`` marks (the
    closest wins), then an indirect parameter."""
    settings: dict[str, Any] = {}
    for mark in reversed(list(request.node.iter_markers("emulator"))):
        settings |= mark.kwargs
    return settings | (getattr(request, "param", None) or {})


def started(**settings: Any) -> Emulator:
    """A running emulator with these constructor settings (the emulator's own defaults otherwise)."""
    return Emulator(**settings).start()
