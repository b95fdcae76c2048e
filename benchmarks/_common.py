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

#: Record shapes the benchmark can drain: emulator options, and the same as RecordGenerator arguments
#: (issue 24's table):
#:
#: - ``mix``: the emulator's realistic mix (about 840 bytes a record, six types);
#: - ``small``: every record a driver log (about 290 bytes): fixed per-record costs;
#: - ``trips100``: every record a trip carrying a 100-point GPS track (about 10 KB of JSON, 200
#:   brackets): the nesting-depth screen and the list columns;
#: - ``one_type``: every record telemetry (about 870 bytes): the mix without its type spread;
#: - ``types50``: the same telemetry records spread over 50 record types (``telemetry_<k>``): the
#:   per-file costs (50 files per day and flush instead of one).
SHAPES: dict[str, dict[str, Any]] = {
    "mix": {},
    "small": {"record_types": ("driverlog",)},
    "trips100": {"record_types": ("trip",), "track_points": 100},
    "one_type": {"record_types": ("telemetry",)},
    "types50": {"record_types": ("telemetry",), "type_names": 50},
}


def emulator_args(shape: str) -> list[str]:
    """The ``ktexport-emulator`` options that serve ``shape``."""
    args: list[str] = []
    options = SHAPES[shape]
    if "record_types" in options:
        args += ["--record-types", ",".join(options["record_types"])]
    if "track_points" in options:
        args += ["--track-points", str(options["track_points"])]
    if "type_names" in options:
        args += ["--type-names", str(options["type_names"])]
    return args
