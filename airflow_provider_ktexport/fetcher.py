"""Fetcher threads: keep GETs outstanding while the drain's main thread writes and acknowledges.

Plain Python, no Airflow (design.md section 2, section 6: pipelining is the lever when the
server is far away).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from airflow_provider_ktexport.exceptions import KtExportError, KtExportProtocolError

log = logging.getLogger(__name__)

#: Leased batches the fetchers may hand over while the main thread is busy flushing. The main
#: thread moves them into the buffer (lease clock included) as soon as it is free, so this only
#: keeps the network busy during a flush; it bounds memory at about this many batches' bytes.
HANDOFF_BATCHES = 64


class BatchSource(Protocol):
    """What the drain needs of a client (``KtExportClient`` satisfies it)."""

    long_poll_seconds: float

    def get_batch(self, *, deadline: float | None = None) -> Any: ...

    def ack(self, batch_id: str) -> bool: ...


class Fetcher:
    """Keeps up to ``n`` GETs outstanding and hands results to the main thread.

    Results are ``("batch", Batch)``, ``("empty", None)``, ``("error", exc)``.
    The hand-off queue is bounded (``HANDOFF_BATCHES``) so fetchers cannot run far ahead of
    the writer: memory stays set by the flush size and the hand-off, not by the queue length.
    """

    def __init__(
        self, client: BatchSource, n: int, run_deadline: float, keep_polling: Callable[[], bool]
    ) -> None:
        self._client = client
        self._deadline = run_deadline
        self._keep_polling = keep_polling
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self.results: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=max(n, HANDOFF_BATCHES))
        self._threads = [
            threading.Thread(target=self._loop, name=f"ktexport-fetch-{i}", daemon=True) for i in range(n)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _put(self, item: tuple[str, Any]) -> None:
        # A leased batch waits for room while the run goes on; once the run has stopped and nobody
        # reads any more, it is abandoned and the server delivers it again after its lease.
        while True:
            try:
                self.results.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._stop.is_set() and (item[0] != "batch" or self._abandon.wait(0.0)):
                    if item[0] == "batch":
                        log.info("Abandoned batch %s at shutdown; it will be delivered again", item[1].id)
                    return

    def abandon(self) -> None:
        """Stop waiting to hand over results: nobody will read them."""
        self._stop.set()
        self._abandon.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() >= self._deadline:
                return
            try:
                batch = self._client.get_batch(deadline=self._deadline)
            except KtExportError as exc:
                self._put(("error", exc))
                if not isinstance(exc, KtExportProtocolError):
                    return
                continue
            except Exception as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
                self._put(("error", exc))
                return
            if batch is None:
                if time.monotonic() >= self._deadline:
                    return  # the deadline cut the long poll short: not an empty answer
                self._put(("empty", None))
                if not self._keep_polling():
                    self._stop.set()  # the run ends on this answer: lease nothing more
                    return
                continue
            self._put(("batch", batch))
