"""Settings shared by the harness (``drain_bench``) and the cases it runs in child processes (``cases``).

Both sides must agree on them: the harness starts the emulator with this API key, batch size and
lease, and the child's clients talk to it with the same key and long poll.
"""

from __future__ import annotations

API_KEY = "bench-key"
BATCH_SIZE = 500
#: The emulator reuses the content of this many records (fresh emulator_seq each): its CPU stays low.
DISTINCT = 5000
LONG_POLL_SECONDS = 1.0
LEASE_SECONDS = 120.0
CHILD_TIMEOUT = 3600.0
