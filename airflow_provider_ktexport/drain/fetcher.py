"""Fetcher threads: keep GETs outstanding while the drain's main thread writes and acknowledges.

Plain Python, no Airflow (docs/architecture.md section 2, section 6: pipelining is the lever when the
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

__all__ = ["HANDOFF_BATCHES", "HANDOFF_BYTES", "BatchSource", "Fetcher", "HandoffQueue", "handoff_bytes"]

log = logging.getLogger(__name__)

#: Leased batches the fetchers may hand over while the main thread is busy flushing. The main
#: thread moves them into the buffer (lease clock included) as soon as it is free, so this only
#: keeps the network busy during a flush.
HANDOFF_BATCHES = 64
#: The most decoded body bytes (``Batch.body_size``) the hand-off may hold, whatever the flush
#: settings. A count alone bounds nothing when batches are large: 64 bodies near
#: ``max_body_bytes`` (64 MiB) would be 4 GiB. Past the budget (:func:`handoff_bytes`) a fetcher
#: waits before leasing more (and a batch already leased waits for room), so memory stays near
#: the budget. One batch is always admitted to an empty hand-off, however large, or a single big
#: batch could never pass.
HANDOFF_BYTES = 256 * 1024 * 1024
#: How often a waiting fetcher looks at stop/abandon/deadline even if nobody wakes it.
_WAIT_STEP = 0.2


def handoff_bytes(flush_bytes: int) -> int:
    """The hand-off's byte budget for a drain whose flushes hold at most ``flush_bytes``: a quarter flush.

    The hand-off only keeps the network busy while the main thread lands a flush; what it holds
    then joins the next flush. Every byte it holds adds to the peak, on top of the flush being
    built and the bytes the fetchers are decoding, so it holds little: half a flush measured
    13 MB more peak RSS on the mix than a quarter (306 against 293 MB at 100k records), at the
    same CPU (docs/performance.md, memory).
    """
    return max(1, min(HANDOFF_BYTES, flush_bytes // 4))


def _size(item: tuple[str, Any]) -> int:
    kind, value = item
    return int(getattr(value, "body_size", 0) or 0) if kind == "batch" else 0


class HandoffQueue(queue.Queue[tuple[str, Any]]):
    """The fetchers' hand-off: bounded by item count (``maxsize``) and by body bytes (``max_bytes``).

    ``get``/``get_nowait``/``empty`` are the plain :class:`queue.Queue` ones the drain uses;
    ``put`` also waits while the bytes held plus the new batch's would pass ``max_bytes``.
    """

    def __init__(self, maxsize: int, max_bytes: int) -> None:
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        #: Batches the fetchers may hold leased ahead of the writer, here and in GETs still
        #: outstanding (None: only the bounds above). The drain sets it (:meth:`set_lease_ahead`)
        #: from the pace it measured, so no batch waits here past its lease.
        self.lease_ahead: int | None = None
        #: GETs a fetcher has started (:meth:`reserve`) and not handed over yet (:meth:`release`).
        self.in_flight = 0
        #: Body bytes of the batches held now (read without the lock for logs and tests only).
        self.bytes = 0
        self._wakes = 0

    def _no_room(self, size: int) -> bool:
        # Caller holds the mutex. An empty queue takes any batch: it must be able to pass alone.
        # Errors and empty answers weigh nothing and wait for the count bound only.
        if 0 < self.maxsize <= self._qsize():
            return True
        return size > 0 and bool(self._qsize()) and self.bytes + size > self.max_bytes

    def put(self, item: tuple[str, Any], block: bool = True, timeout: float | None = None) -> None:
        """Put ``item``, waiting up to ``timeout`` for room by count and by bytes; else ``queue.Full``."""
        size = _size(item)
        with self.not_full:
            end = None if timeout is None else time.monotonic() + timeout
            wakes = self._wakes
            while self._no_room(size):
                remaining = None if end is None else end - time.monotonic()
                if not block or (remaining is not None and remaining <= 0) or self._wakes != wakes:
                    raise queue.Full  # also after wake(): the caller looks at stop/abandon again
                self.not_full.wait(remaining)
            self._put(item)
            self.bytes += size
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def _get(self) -> tuple[str, Any]:
        item = super()._get()
        self.bytes -= _size(item)
        if item[0] == "batch" and self.lease_ahead:
            # The batch leaves the hand-off for the drain's buffer, still leased: it keeps its
            # slot until the drain counts it as held (set_lease_ahead), or a fetcher would lease
            # one more in between.
            self.lease_ahead -= 1
        # Room by bytes may let several waiting fetchers on (Queue.get wakes only one).
        self.not_full.notify_all()
        return item

    def set_lease_ahead(self, batches: int | None) -> None:
        """Let the fetchers hold ``batches`` leased ahead of the writer; wakes the waiting ones."""
        with self.not_full:
            self.lease_ahead = batches
            self.not_full.notify_all()

    def budget_spent(self) -> bool:
        """True while the held bytes fill the byte budget, or the batches held and being leased
        reach ``lease_ahead``: a fetcher should not lease more yet."""
        with self.mutex:
            return self._spent()

    def _spent(self) -> bool:
        # Caller holds the mutex. A GET under way counts: its batch is leased when it answers, and
        # four fetchers that each saw room would otherwise lease four batches for one slot.
        ahead = self.lease_ahead
        return self.bytes >= self.max_bytes or (ahead is not None and self._qsize() + self.in_flight >= ahead)

    def reserve(self) -> bool:
        """Take a slot for one GET when the budget allows it (then :meth:`release` it once its
        answer is handed over); False, taking nothing, while the budget is spent."""
        with self.mutex:
            if self._spent():
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        """A GET's answer was handed over (or dropped): its slot is free."""
        with self.not_full:
            self.in_flight -= 1
            self.not_full.notify_all()

    def wait_for_room(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for a ``get`` (or :meth:`wake`)."""
        with self.not_full:
            if self._spent():
                self.not_full.wait(timeout)

    def wake(self) -> None:
        """Wake every fetcher waiting for room (stop and abandon call it); a waiting ``put``
        then raises ``queue.Full`` at once, so its caller can see why it was woken."""
        with self.not_full:
            self._wakes += 1
            self.not_full.notify_all()


class BatchSource(Protocol):
    """What the drain needs of a client (``KtExportClient`` satisfies it)."""

    long_poll_seconds: float

    def get_batch(self, *, deadline: float | None = None) -> Any: ...

    def ack(self, batch_id: str) -> bool: ...


class Fetcher:
    """Keeps up to ``n`` GETs outstanding and hands results to the main thread.

    Results are ``("batch", Batch)``, ``("empty", None)``, ``("error", exc)``.
    The hand-off queue is bounded by count (``HANDOFF_BATCHES``) and by body bytes (``max_bytes``,
    the drain passes :func:`handoff_bytes` of its flush cap; at most ``HANDOFF_BYTES``) so fetchers
    cannot run far ahead of the writer: memory stays set by the flush size and the hand-off, not
    by the queue length or the size of its batches.
    """

    def __init__(
        self,
        client: BatchSource,
        n: int,
        run_deadline: float,
        keep_polling: Callable[[], bool],
        *,
        max_bytes: int | None = None,
    ) -> None:
        self._client = client
        self._deadline = run_deadline
        self._keep_polling = keep_polling
        self._stop = threading.Event()
        self._abandon = threading.Event()
        budget = HANDOFF_BYTES if max_bytes is None else max_bytes
        self.results = HandoffQueue(maxsize=max(n, HANDOFF_BATCHES), max_bytes=budget)
        self._threads = [
            threading.Thread(target=self._loop, name=f"ktexport-fetch-{i}", daemon=True) for i in range(n)
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        self.results.wake()

    def alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def _put(self, item: tuple[str, Any]) -> None:
        # A leased batch waits for room while the run goes on; once the run has stopped and nobody
        # reads any more, it is abandoned and the server delivers it again after its lease.
        while True:
            try:
                self.results.put(item, timeout=_WAIT_STEP)
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
        self.results.wake()

    def _wait_for_budget(self) -> bool:
        """Wait, leasing nothing, until the hand-off's budget gives this fetcher a slot for one GET
        (:meth:`HandoffQueue.reserve`); False, with no slot, once the run stops."""
        while not self._stop.is_set():
            if time.monotonic() >= self._deadline:
                return False
            if self.results.reserve():
                return True
            self.results.wait_for_room(_WAIT_STEP)
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() >= self._deadline:
                return
            if not self._wait_for_budget():
                return
            try:
                go_on = self._lease_one()
            finally:
                self.results.release()
            if not go_on:
                return

    def _lease_one(self) -> bool:
        """One GET, its answer handed over; whether this fetcher goes on."""
        try:
            batch = self._client.get_batch(deadline=self._deadline)
        except KtExportError as exc:
            self._put(("error", exc))
            return isinstance(exc, KtExportProtocolError)
        except Exception as exc:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self._put(("error", exc))
            return False
        if batch is None:
            if time.monotonic() >= self._deadline:
                return False  # the deadline cut the long poll short: not an empty answer
            self._put(("empty", None))
            if not self._keep_polling():
                self._stop.set()  # the run ends on this answer: lease nothing more
                return False
            return True
        self._put(("batch", batch))
        return True
