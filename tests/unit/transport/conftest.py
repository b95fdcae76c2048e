"""Fixtures of the transport tests: the scripted loopback server both transports talk to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.transport.stub_server import Stub


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    server.thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()
