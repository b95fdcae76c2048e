"""The emulator's server and its threads: the listener, the lease sweeper and the record feeder.

Kept apart from :mod:`~airflow_provider_ktexport.testing.emulator` (what the API answers) so the
threads' start and orderly stop are read in one place. The HTTP layer is imported when serving
starts, not at import: it imports the emulator module, and importing the emulator alone must load
nothing from the package but the record generator.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_ktexport.testing._http import _Server
    from airflow_provider_ktexport.testing.emulator import Emulator


class Serving:
    """One emulator's listener and background threads; :attr:`stopping` wakes them all."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.server: _Server | None = None
        self._threads: list[threading.Thread] = []

    def start(self, emu: Emulator) -> int:
        """Bind ``emu``'s host and port (TLS with its certificate) and serve; returns the bound port."""
        from airflow_provider_ktexport.testing._http import _Handler, _Server

        self.stopping.clear()
        server = _Server((emu.host, emu.port), _Handler)
        server.emulator = emu
        if emu.certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(emu.certfile, emu.keyfile)
            server.tls = ctx
        self.server = server
        self._spawn(server.serve_forever, "serve", 0.05)
        self._spawn(self._sweep_loop, "sweeper", emu)
        if emu.rate > 0:
            self._spawn(self._feed_loop, "feeder", emu)
        return int(server.server_address[1])

    def _spawn(self, target: Callable[..., Any], name: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=f"ktexport-emulator-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, cond: threading.Condition) -> None:
        """Stop serving, wake held long polls (waiting on ``cond``) and drop open connections."""
        server, self.server = self.server, None
        if server is None:
            return
        self.stopping.set()
        with cond:
            cond.notify_all()
        server.shutdown()
        server.server_close()
        # Let requests already being served (long polls just woken) send their answer before the
        # idle keep-alive connections are dropped.
        server.wait_idle(timeout=2.0)
        server.drop_connections()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def _sweep_loop(self, emu: Emulator) -> None:
        # Leases also expire while nobody asks, so a waiting long poll sees the records come back.
        while not self.stopping.wait(min(0.2, max(0.01, emu.lease_seconds / 4))):
            emu.sweep()

    def _feed_loop(self, emu: Emulator) -> None:
        # Reads emu.rate on every tick: a test sets it to 0 to stop the producer.
        owed = 0.0
        last = time.monotonic()
        while not self.stopping.wait(0.1):
            now = time.monotonic()
            owed += (now - last) * emu.rate
            last = now
            if owed >= 1:
                emu.feed(int(owed))
                owed -= int(owed)
