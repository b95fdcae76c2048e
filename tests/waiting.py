"""Waiting for a condition, the one way tests wait: poll it on the real clock, with a generous
deadline, never a fixed sleep (the suite must pass on a loaded machine)."""

from __future__ import annotations

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
