"""The fetchers' hand-off (drain/fetcher.py): bounded by batch count and by body bytes, and never stuck."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass

import pytest

from airflow_provider_ktexport.drain import fetcher as fetcher_module
from airflow_provider_ktexport.drain.fetcher import Fetcher, HandoffQueue


@dataclass
class FakeBatch:
    id: str
    body_size: int


class EndlessSource:
    """A queue that always has a batch of ``size`` bytes; counts the leases (GETs) taken."""

    long_poll_seconds = 1.0

    def __init__(self, size: int) -> None:
        self.size = size
        self.leased = 0
        self.lock = threading.Lock()

    def get_batch(self, *, deadline: float | None = None) -> FakeBatch:
        with self.lock:
            self.leased += 1
            return FakeBatch(f"b-{self.leased}", self.size)

    def ack(self, batch_id: str) -> bool:
        return True


def _settle(source: EndlessSource, seconds: float = 0.6) -> int:
    """Wait until the lease count stops moving; return it."""
    last = -1
    end = time.monotonic() + 5
    while time.monotonic() < end:
        time.sleep(seconds)
        if source.leased == last:
            return last
        last = source.leased
    return last


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(fetcher_module, "HANDOFF_BYTES", 1000)
    return 1000


def test_the_hand_off_holds_no_more_bytes_than_its_budget(small_budget: int) -> None:
    source = EndlessSource(size=300)
    f = Fetcher(source, 4, time.monotonic() + 30, keep_polling=lambda: True)
    f.start()
    try:
        leased = _settle(source)
        # 3 x 300 fit in 1000, a 4th does not: the fetchers that leased more wait with it.
        assert f.results.qsize() == 3 and f.results.bytes == 900
        assert leased <= 3 + 4  # what is held + at most one lease per waiting fetcher
        f.results.get_nowait()  # the drain takes one: room for exactly one more
        time.sleep(0.5)
        assert f.results.qsize() == 3 and f.results.bytes == 900
    finally:
        f.abandon()
    end = time.monotonic() + 2
    while f.alive() and time.monotonic() < end:
        time.sleep(0.02)
    assert not f.alive()


def test_a_spent_budget_stops_new_leases_and_stop_wakes_the_waiters(
    small_budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetcher_module, "_WAIT_STEP", 10.0)  # only abandon()'s wake can end a wait soon
    source = EndlessSource(size=600)  # two never fit: one batch is held, the budget is spent
    f = Fetcher(source, 3, time.monotonic() + 30, keep_polling=lambda: True)
    f.start()
    try:
        leased = _settle(source)
        assert f.results.qsize() == 1
        # Only fetchers that leased before the budget was spent hold a batch; none leases again.
        assert leased <= 1 + 3
        assert _settle(source) == leased
    finally:
        started = time.monotonic()
        f.abandon()
        while f.alive() and time.monotonic() - started < 2:
            time.sleep(0.01)
    assert not f.alive()
    assert time.monotonic() - started < 1.0  # woken, not left to a long wait


def test_one_batch_larger_than_the_budget_still_passes(small_budget: int) -> None:
    q = HandoffQueue(maxsize=8, max_bytes=small_budget)
    q.put(("batch", FakeBatch("huge", 5000)), timeout=0.1)
    with pytest.raises(queue.Full):
        q.put(("batch", FakeBatch("next", 1)), timeout=0.1)
    q.put(("error", RuntimeError("x")), timeout=0.1)  # an error weighs nothing: never held back
    assert q.get_nowait()[1].id == "huge" and q.bytes == 0
    q.put(("batch", FakeBatch("next", 1)), timeout=0.1)


def test_the_count_bound_still_holds() -> None:
    q = HandoffQueue(maxsize=2, max_bytes=10**9)
    q.put(("empty", None), timeout=0.1)
    q.put(("empty", None), timeout=0.1)
    with pytest.raises(queue.Full):
        q.put(("empty", None), timeout=0.1)


def test_the_hand_off_holds_a_quarter_flush_and_never_more_than_its_ceiling():
    assert fetcher_module.handoff_bytes(32 * 2**20) == 8 * 2**20
    assert fetcher_module.handoff_bytes(10 * fetcher_module.HANDOFF_BYTES) == fetcher_module.HANDOFF_BYTES
    assert fetcher_module.handoff_bytes(1) == 1  # a budget of 0 would still admit one batch only


def test_a_fetcher_takes_the_budget_it_is_given() -> None:
    f = Fetcher(EndlessSource(size=1), 2, time.monotonic() + 30, keep_polling=lambda: True, max_bytes=1234)
    assert f.results.max_bytes == 1234
    assert Fetcher(EndlessSource(size=1), 2, 0.0, keep_polling=lambda: True).results.max_bytes == (
        fetcher_module.HANDOFF_BYTES
    )


class SlowSource(EndlessSource):
    """An endless queue whose GETs take ``seconds`` to answer; counts the GETs under way at once."""

    def __init__(self, seconds: float) -> None:
        super().__init__(size=1)
        self.seconds = seconds
        self.under_way = 0
        self.most_under_way = 0

    def get_batch(self, *, deadline: float | None = None) -> FakeBatch:
        with self.lock:
            self.under_way += 1
            self.most_under_way = max(self.most_under_way, self.under_way)
        time.sleep(self.seconds)
        with self.lock:
            self.under_way -= 1
        return super().get_batch(deadline=deadline)


def test_gets_under_way_count_against_how_far_the_fetchers_may_lease_ahead() -> None:
    """With room for one batch ahead of the writer, four fetchers lease one batch, not one each:
    every batch leased beyond what the writer can take waits for it with its lease running."""
    source = SlowSource(seconds=0.3)
    f = Fetcher(source, 4, time.monotonic() + 30, keep_polling=lambda: True)
    f.results.set_lease_ahead(1)
    f.start()
    try:
        assert _settle(source) == 1 and source.most_under_way == 1
        f.results.set_lease_ahead(3)  # the writer landed what it held: two more may come
        assert _settle(source) == 3 and f.results.qsize() == 3
        f.results.set_lease_ahead(0)  # what is held fills the lease: nobody leases
        f.results.get_nowait()
        assert _settle(source) == 3
    finally:
        f.abandon()
    end = time.monotonic() + 2
    while f.alive() and time.monotonic() < end:
        time.sleep(0.02)
    assert not f.alive() and f.results.in_flight == 0


def test_a_batch_the_drain_takes_keeps_its_slot_until_the_drain_counts_it() -> None:
    """Taking a batch frees no room to lease ahead: the drain holds it, still leased, and says so
    with its next set_lease_ahead; a fetcher that leased in between would lease one too many."""
    q = HandoffQueue(maxsize=8, max_bytes=10**9)
    q.set_lease_ahead(2)
    assert q.reserve() and q.reserve() and not q.reserve()
    q.put(("batch", FakeBatch("a", 1)))
    q.release()
    q.get_nowait()  # into the drain's buffer: two batches are still leased
    assert not q.reserve()
    q.set_lease_ahead(2 - 1)  # the drain holds one: one more may be leased beside the GET under way
    assert not q.reserve()
    q.put(("batch", FakeBatch("b", 1)))
    q.release()
    q.get_nowait()
    q.set_lease_ahead(2)  # the writer landed both
    assert q.reserve()
