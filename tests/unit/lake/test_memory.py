"""The engine's Arrow memory pool: jemalloc (or the system allocator), unless the user chose one."""

from __future__ import annotations

import platform
from collections.abc import Iterator
from datetime import UTC, datetime

import pyarrow as pa
import pytest

from airflow_provider_ktexport.lake import memory
from airflow_provider_ktexport.lake.schema import build_tables


@pytest.fixture
def fresh_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process whose engine has not chosen its pool yet; the pool is put back afterwards."""
    before = pa.default_memory_pool()
    monkeypatch.setattr(memory, "_done", False)
    pa.set_memory_pool(pa.mimalloc_memory_pool())  # pyarrow's default on Linux
    yield
    pa.set_memory_pool(before)


def test_building_tables_moves_arrow_off_mimalloc(fresh_pool: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(memory.ENV_VAR, raising=False)
    build_tables([b'{"type":"t","a":1}'], ["b1"], source="s", ingested_at=datetime.now(UTC))
    assert pa.default_memory_pool().backend_name in ("jemalloc", "system")


def test_a_pool_the_user_chose_is_left_alone(fresh_pool: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(memory.ENV_VAR, "mimalloc")
    memory.use_engine_memory_pool()
    assert pa.default_memory_pool().backend_name == "mimalloc"


def test_the_heap_threshold_is_fixed_once_unless_the_user_set_glibcs_own(monkeypatch):
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt only")
    monkeypatch.setattr(memory, "_capped", False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert memory.cap_heap_retention() is False  # the user's choice stands
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    assert memory.cap_heap_retention() is True
    assert memory.cap_heap_retention() is True  # once per process: nothing more to do


def _pool_in_a_fresh_process(code: str, **env: str) -> str:
    """What ``code`` prints in a new interpreter with ``env`` (and no Arrow pool setting of ours)."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k != memory.ENV_VAR}
    out = subprocess.run(
        [sys.executable, "-c", code], env=base | env, capture_output=True, text=True, check=True, timeout=120
    )
    return out.stdout.strip()


_IMPORT_THEN_ARROW = (
    "import airflow_provider_ktexport, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
)


@pytest.mark.skipif(
    not (platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")),
    reason="the package asks for jemalloc on x86-64 Linux only",
)
def test_importing_the_package_first_gives_arrows_c_plus_plus_paths_jemalloc() -> None:
    """The Parquet writer allocates from the pool Arrow chose when it loaded: only the variable,
    set before pyarrow loads, reaches it (pa.set_memory_pool does not)."""
    assert _pool_in_a_fresh_process(_IMPORT_THEN_ARROW) == "jemalloc"


def test_the_users_arrow_pool_setting_stands_and_a_late_import_sets_nothing() -> None:
    assert _pool_in_a_fresh_process(_IMPORT_THEN_ARROW, ARROW_DEFAULT_MEMORY_POOL="mimalloc") == "mimalloc"
    late = "import os, pyarrow, airflow_provider_ktexport; print(os.environ.get('ARROW_DEFAULT_MEMORY_POOL'))"
    assert _pool_in_a_fresh_process(late) == "None"  # pyarrow loaded first: lake.memory switches instead
