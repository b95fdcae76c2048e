"""Which allocator Arrow uses while the lake builds tables (docs/performance.md).

pyarrow's default pool on Linux is mimalloc. A drain allocates a flush's worth of fresh Arrow
memory (the reader's buffers, the columns, a ``take`` per partition) and frees it, flush after
flush; mimalloc hands that memory back to the kernel and takes it again, and each time every
page faults in anew. Measured in the benchmark (2 shared cores, Linux 6.18, transparent huge
pages on ``madvise``): a cold ``land_records`` of 5,000 100-point trips spent 12-25 s of system
CPU per 100k records with mimalloc and 2-3 s with jemalloc or the system allocator. So the
engine switches pyarrow's default pool to jemalloc (the system allocator where a build of
pyarrow lacks it), once, the first time it builds tables, unless the user chose a pool with
Arrow's own ``ARROW_DEFAULT_MEMORY_POOL`` environment variable, which is then left alone.

What this cannot reach: allocations inside Arrow's C++ that do not take pyarrow's pool, the
Parquet writer's above all, stay on the pool Arrow chose at start-up, which only that environment
variable sets (before pyarrow is imported). So the package's ``__init__`` sets it to jemalloc
when pyarrow has not loaded yet (:mod:`airflow_provider_ktexport._arrow_env`); this switch is for
a process that loaded pyarrow first (docs/configuration.md, "Arrow's memory allocator").

The drain's other large buffers (response bodies of megabytes, their records, Parquet bytes)
come from glibc's malloc, whose mmap threshold rises to the largest block freed (up to 32 MiB):
after the first body is freed, later ones are carved from the heap and their pages are kept
after they are freed, flush after flush. :func:`cap_heap_retention` fixes the threshold at
:data:`MMAP_THRESHOLD`, so blocks that large go back to the kernel when freed (measured on 100-point
trips: peak RSS 380 -> 302 MB, CPU within the noise).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

import pyarrow as pa

from airflow_provider_ktexport._arrow_env import ENV_VAR, set_by_provider

__all__ = ["ENV_VAR", "MMAP_THRESHOLD", "cap_heap_retention", "use_engine_memory_pool"]

log = logging.getLogger(__name__)

_lock = threading.Lock()
_done = False
#: Blocks at least this large are mapped apart and unmapped when freed (glibc's default start).
MMAP_THRESHOLD = 1024 * 1024
#: glibc's ``mallopt`` parameter number for the mmap threshold (malloc.h).
_M_MMAP_THRESHOLD = -3
#: glibc's environment setting for it: when set, the user's choice stands.
_GLIBC_ENV = "MALLOC_MMAP_THRESHOLD_"
_capped = False


def cap_heap_retention() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD`, once per process; True if it is set.

    Nothing happens off glibc (musl, macOS) or when ``MALLOC_MMAP_THRESHOLD_`` is set. Setting the
    threshold also stops glibc raising it, which is the point: a drain frees a body of megabytes
    every batch, and with the rising threshold each one stays in the heap after it is freed.
    """
    global _capped
    with _lock:
        if _capped:
            return True
        if os.environ.get(_GLIBC_ENV):
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # not glibc
            return False
        _capped = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
        return _capped


def _engine_pool() -> pa.MemoryPool:
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        return pa.system_memory_pool()


def use_engine_memory_pool() -> None:
    """Make jemalloc (else the system allocator) Arrow's default pool, once per process.

    Cheap after the first call. Buffers remember the pool they came from, so arrays made
    before the switch are freed correctly. Nothing changes when ``ARROW_DEFAULT_MEMORY_POOL``
    is set.
    """
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        _done = True
        if os.environ.get(ENV_VAR) and not set_by_provider():
            return  # the user's choice stands
        pool = _engine_pool()
        if pa.default_memory_pool().backend_name != pool.backend_name:
            log.debug(
                "Arrow memory pool: %s instead of %s",
                pool.backend_name,
                pa.default_memory_pool().backend_name,
            )
            pa.set_memory_pool(pool)
