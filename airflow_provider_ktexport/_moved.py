"""The warning an old import path gives for one release, after its module moved."""

from __future__ import annotations

import warnings


def warn_moved(old: str, new: str) -> None:
    """Warn that ``old`` is a deprecated alias of ``new`` (removed in the next release)."""
    warnings.warn(
        f"{old} moved to {new}; the old path is an alias kept for one release: import from {new}",
        DeprecationWarning,
        stacklevel=3,
    )
