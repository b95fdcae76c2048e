"""Settings shared by the harness (``drain_bench``) and the cases it runs in child processes (``cases``).

Both sides must agree on them: the harness starts the emulator with this API key, batch size and
lease, and the child's clients talk to it with the same key and long poll.
"""

from __future__ import annotations

from typing import Any

API_KEY = "bench-key"
BATCH_SIZE = 500
#: The emulator reuses the content of this many records (fresh emulator_seq each): its CPU stays low.
DISTINCT = 5000
LONG_POLL_SECONDS = 1.0
LEASE_SECONDS = 120.0
CHILD_TIMEOUT = 3600.0

#: Record shapes the benchmark can drain: emulator options, and the same as RecordGenerator arguments.
#: ``trips100`` is issue 18's worst case: every record a trip carrying a 100-point GPS track
#: (about 10 KB of JSON, 200 brackets), which the nesting-depth screen used to walk byte by byte.
SHAPES: dict[str, dict[str, Any]] = {
    "mix": {},
    "trips100": {"record_types": ("trip",), "track_points": 100},
}


def emulator_args(shape: str) -> list[str]:
    """The ``ktexport-emulator`` options that serve ``shape``."""
    args: list[str] = []
    options = SHAPES[shape]
    if "record_types" in options:
        args += ["--record-types", ",".join(options["record_types"])]
    if "track_points" in options:
        args += ["--track-points", str(options["track_points"])]
    return args
