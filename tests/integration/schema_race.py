"""One side of a schema race: a writer process that lands a record type's first rows at a barrier.

Used by ``tests/integration/test_schema_race.py``: two processes run :func:`race` with the same
barrier; in each round both build and write a new record type at once, with the same new key
paths at different first types and with case twins, as two drains meeting one new field do.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_ktexport.lake.writer import LakeWriter
from tests.lake_support import land

#: What each side sends in every round: same key paths, different first types, case twins.
SIDES: dict[str, dict[str, Any]] = {
    "a": {"x": 1, "Speed": 1, "n": {"v": 1}, "y": 2.5, "eventDate": "2026-11-25T10:00:00Z"},
    "b": {"x": "one", "speed": 2, "n": {"v": "a"}, "y": 2, "eventdate": "soon"},
}


def record_type(round_no: int) -> str:
    return f"race{round_no}"


def race(store: dict[str, str], side: str, rounds: int, barrier: Any) -> None:
    """Land ``SIDES[side]`` as a new record type per round, each round starting at ``barrier``."""
    fs = filesystem(store)
    for r in range(rounds):
        barrier.wait(timeout=120)
        writer = LakeWriter(fs, store["root"], writer_id=f"{side}{r}")
        land(writer, [{"type": record_type(r), "side": side, **SIDES[side]}])


def filesystem(store: dict[str, str]) -> Any:
    """The filesystem a :class:`tests.integration.stores.Store` uses, rebuilt in this process."""
    from fsspec.implementations.local import LocalFileSystem

    from tests.integration.conftest import s3_filesystem
    from tests.integration.stores import azure_filesystem, gcs_filesystem

    name, endpoint = store["name"], store.get("endpoint", "")
    if name == "local":
        return LocalFileSystem()
    if name == "s3":
        return s3_filesystem(endpoint)
    if name == "gcs":
        return gcs_filesystem(endpoint)
    return azure_filesystem(endpoint)
