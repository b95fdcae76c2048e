"""What compaction reads of a lake: its partitions and their files, and each file's row keys.

Nothing is changed here. :func:`check_root` refuses a folder that is not a lake root, and
:func:`find_partitions` a lake where a folder holding files is not a pure partition path
(:func:`.layout.is_partition_segment`), before :mod:`.compact` touches anything.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.lake.layout import (
    INGESTED_AT_COLUMN,
    PARTITION_KEYS,
    PROBE_DIR,
    QUARANTINE_DIR,
    RECORD_KEY_COLUMN,
    RESERVED_PREFIX,
    SCHEMA_DIR,
    SOURCE_COLUMN,
    is_partition_segment,
    parse_hive_path,
)

__all__ = [
    "LakeFile",
    "Pair",
    "check_root",
    "find_partitions",
    "is_data",
    "key_rows",
    "partition_of",
    "read_schema",
    "read_table",
]

_KEY = RECORD_KEY_COLUMN
_SOURCE = SOURCE_COLUMN
_INGESTED = INGESTED_AT_COLUMN
#: A row's identity: ``(_source, _record_key)``.
Pair = tuple[str | None, str]


@dataclass
class LakeFile:
    """A file below a partition folder: its path, size and modification time (epoch seconds)."""

    path: str
    size: int
    mtime: float | None


def _mtime(info: dict[str, Any]) -> float | None:
    """Modification time (epoch seconds) from an fsspec info dict, whatever the backend calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "mtime_ns", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return value / 1e9 if key == "mtime_ns" else float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def check_root(fs: fsspec.AbstractFileSystem, root: str) -> bool:
    """True for a lake root with data; False for an empty or missing one; raises for anything else."""
    try:
        entries = fs.ls(root, detail=True)
    except FileNotFoundError:
        return False
    names = [posixpath.basename(str(e["name"]).rstrip("/")) for e in entries]
    # A drain that found its queue empty leaves only the (empty) folder of its destination probe.
    names = [n for n in names if n != PROBE_DIR]
    if not names:
        return False
    if SCHEMA_DIR in names or any(is_partition_segment(n) for n in names):
        return True
    below = []
    for e in entries:
        if e.get("type") == "directory":
            try:
                inner = fs.ls(e["name"], detail=False)
            except FileNotFoundError:
                continue
            if any(is_partition_segment(posixpath.basename(p.rstrip("/"))) for p in inner):
                below.append(str(e["name"]))
    hint = f" Lakes found one level below: {', '.join(sorted(below))}; pass one of them." if below else ""
    raise KtExportConfigError(
        f"Refusing to compact {root}: it is not a lake root (no {SCHEMA_DIR}/ and no record_type=... "
        f"partition folders directly below it). Pass the folder the drain writes to (its destination).{hint}"
    )


def find_partitions(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, list[LakeFile]]:
    """Every partition directory under ``root`` with all its files; refuses impure directories."""
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out: dict[str, list[LakeFile]] = defaultdict(list)
    bad: set[str] = set()
    for path, info in found.items():
        rel = path[len(root) :].strip("/")
        first = rel.split("/", 1)[0]
        if (
            "/" not in rel
            or first in (SCHEMA_DIR, QUARANTINE_DIR)
            or first.startswith((".", RESERVED_PREFIX))
        ):
            continue
        directory = posixpath.dirname(path)
        segments = directory[len(root) :].strip("/").split("/")
        keys = [s.partition("=")[0] for s in segments]
        if not all(is_partition_segment(s) for s in segments) or len(set(keys)) != len(keys):
            bad.add(directory)
            continue
        out[directory].append(LakeFile(path, int(info.get("size") or 0), _mtime(info)))
    if bad:
        raise KtExportConfigError(
            f"Refusing to compact {root}: {', '.join(sorted(bad)[:5])} "
            f"{'is not a partition path' if len(bad) == 1 else 'are not partition paths'} of this lake "
            f"(only {'/'.join(k + '=...' for k in PARTITION_KEYS[:2])} folders may hold files below the "
            "root). Nothing was changed; move those files out of the lake or pass the right root."
        )
    return dict(out)


def partition_of(root: str, directory: str) -> dict[str, str]:
    """``{"record_type": "telemetry", ...}`` from the path, values as stored (already sanitised)."""
    return parse_hive_path(directory[len(root) :])


def is_data(f: LakeFile) -> bool:
    name = posixpath.basename(f.path)
    return name.endswith(".parquet") and not name.startswith(".")


def read_table(fs: fsspec.AbstractFileSystem, path: str, columns: list[str] | None = None) -> pa.Table:
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh, columns=columns)


def read_schema(fs: fsspec.AbstractFileSystem, path: str) -> pa.Schema:
    with fs.open(path, "rb") as fh:
        return pq.read_schema(fh)


def key_rows(
    fs: fsspec.AbstractFileSystem, f: LakeFile, schema: pa.Schema
) -> Iterable[tuple[Pair | None, float]]:
    """``((_source, _record_key), ingested epoch)`` of each row; the pair is None without a key."""
    cols = [c for c in (_SOURCE, _KEY, _INGESTED) if c in schema.names]
    if _KEY not in cols:
        with fs.open(f.path, "rb") as fh:
            return [(None, 0.0)] * pq.ParquetFile(fh).metadata.num_rows
    t = read_table(fs, f.path, cols)
    n = t.num_rows
    sources = t.column(_SOURCE).to_pylist() if _SOURCE in cols else [None] * n
    keys = t.column(_KEY).to_pylist()
    times = (
        [float("inf") if v is None else v.timestamp() for v in t.column(_INGESTED).to_pylist()]
        if _INGESTED in cols
        else [float("inf")] * n
    )
    return [(None if k is None else (s, k), ts) for s, k, ts in zip(sources, keys, times, strict=True)]
