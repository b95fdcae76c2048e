"""Waiting for a condition, the one way tests wait: poll it on the real clock, with a generous
deadline, never a fixed sleep (the suite must pass on a loaded machine)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any


def wait_until(condition: Callable[[], Any], seconds: float = 60.0, *, what: str = "condition") -> None:
    """Return once ``condition()`` is true; fail after ``seconds``."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not met in {seconds:g} s")
        time.sleep(0.01)


def slowdown() -> float:
    """How many times slower than on a quiet machine this one runs now: the 1-minute load average
    per core, between 1 and 4 (``KTEXPORT_TEST_SLOWDOWN`` overrides it).

    For the few scenarios whose subject is a short lease (crash recovery, several drains on one
    queue): a 3 s lease is about a second of CPU with four CPU-bound processes beside the suite,
    and what it then tests is the machine. Multiplying such a lease keeps the scenario (a lease
    much shorter than a run, leases that run out, redeliveries) on any machine.
    """
    if "KTEXPORT_TEST_SLOWDOWN" in os.environ:
        return float(os.environ["KTEXPORT_TEST_SLOWDOWN"])
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average on this platform
        return 1.0
    return min(4.0, max(1.0, load / (os.cpu_count() or 1)))
