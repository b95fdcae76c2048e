"""Arrow's default memory pool, chosen before pyarrow loads (docs/performance.md, "Memory allocator").

Arrow picks its default pool once, when pyarrow loads, from ``ARROW_DEFAULT_MEMORY_POOL``; the
Parquet writer and other C++ paths allocate from that pool whatever pyarrow is told later. On
Linux that pool is mimalloc, which hands a flush's memory back to the kernel and faults it in anew
for the next one: measured against jemalloc in one run (benchmarks/versus.py), the drain spent
about a quarter more CPU on the ordinary mix and a third more on 100-point trips. So importing
this package asks Arrow for jemalloc, on x86-64 Linux (where pyarrow's wheels carry it), when
nobody chose a pool and pyarrow has not loaded yet. A user's ``ARROW_DEFAULT_MEMORY_POOL`` always
stands; when pyarrow loaded first, :func:`airflow_provider_ktexport.lake.memory.use_engine_memory_pool`
switches pyarrow's own pool instead (the writer then keeps the pool it started with).

No import here: this runs from the package's ``__init__``.
"""

from __future__ import annotations

import os
import platform
import sys

__all__ = ["ENV_VAR", "POOL", "ask_for_jemalloc", "set_by_provider"]

#: Arrow's own setting.
ENV_VAR = "ARROW_DEFAULT_MEMORY_POOL"
#: The pool asked for.
POOL = "jemalloc"
_set_here = False


def ask_for_jemalloc() -> bool:
    """Set ``ARROW_DEFAULT_MEMORY_POOL=jemalloc`` if nobody chose and pyarrow has not loaded; True if set."""
    global _set_here
    if ENV_VAR in os.environ or "pyarrow" in sys.modules:
        return False
    if not sys.platform.startswith("linux") or platform.machine() not in ("x86_64", "AMD64"):
        return False
    os.environ[ENV_VAR] = POOL
    _set_here = True
    return True


def set_by_provider() -> bool:
    """Whether the variable holds this package's choice (not the user's)."""
    return _set_here and os.environ.get(ENV_VAR) == POOL
