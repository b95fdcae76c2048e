"""Iceberg commit cost over a table's life: does a commit stay as cheap after 500 as after 10?

One table of pyiceberg's SQL catalog on SQLite, one small flush (100 telemetry records, one
event day) landed through :class:`~airflow_provider_ktexport.lake.iceberg.IcebergSink` per
commit, as a drain flushing every minute would. The CPU of each commit (``time.process_time``:
every thread of this process, pyiceberg's pool included) is recorded; after ``--commits`` commits
one maintenance run (compaction, expiry of every snapshot but the current one, orphans) stands
for the daily job, and ten more commits are timed in a fresh process after three untimed ones,
as the next drain run would make them (a drain run is a new task process; timing them in this
process would also time the garbage of 500 commits and of the maintenance run). The median of
each set of ten is reported (a shared machine's stray pauses move a mean). The document printed (and written to
``benchmarks/results/iceberg_commits.json``) gives:

- ``cpu_at_10_s``: median CPU of commits 6-15;
- ``cpu_before_maintenance_s``: median CPU of the last ten commits before maintenance;
- ``cpu_after_maintenance_s``: median CPU of the ten commits after it;
- ``ratio_after_maintenance``: the last over the first; the goal (issue 22) is at most 1.5;
- metadata and data bytes under the table's folder, ``metadata.json`` files, manifests in the
  current snapshot, and what maintenance reported.

``--pyiceberg-defaults`` runs the same with the table properties at pyiceberg's defaults (no
metadata deletion, no manifest merging) for comparison. Not a test: figures move with the
machine's load; read them, compare runs on the same machine.

    .venv/bin/python -m benchmarks.iceberg_commits --commits 500
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
#: Table properties at pyiceberg's own defaults, for ``--pyiceberg-defaults``.
PYICEBERG_DEFAULTS = {
    "write.metadata.delete-after-commit.enabled": "false",
    "write.metadata.previous-versions-max": "100",
    "commit.manifest-merge.enabled": "false",
    "commit.manifest.min-count-to-merge": "100",
}


def _flush(seq: int) -> tuple[list[Any], Any]:
    """One flush of 100 telemetry records, as the drain hands it to the sink."""
    from airflow_provider_ktexport.lake.schema import build_tables
    from airflow_provider_ktexport.lake.sinks import FlushInfo

    raws = [
        json.dumps(
            {"type": "telemetry", "date": "2026-11-25T10:00:00Z", "seq": seq * 100 + i, "speed": 1.5}
        ).encode()
        for i in range(100)
    ]
    batch = f"b{seq}"
    tables = build_tables(raws, [batch] * len(raws), source="bench", ingested_at=datetime.now(UTC))
    info = FlushInfo(
        batch_ids=[batch], records=len(raws), rejected=0, source="bench", ingest_day="2026-11-25"
    )
    return tables, info


def _commit_cpu(sink: Any, seq: int) -> float:
    tables, info = _flush(seq)
    start = time.process_time()
    sink.land(tables, {}, info)
    return time.process_time() - start


def _folder_bytes(folder: Path, pattern: str) -> tuple[int, int]:
    files = [p for p in folder.rglob(pattern) if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def _open(root: Path, pyiceberg_defaults: bool) -> tuple[Any, Any]:
    from airflow_provider_ktexport.lake.iceberg import IcebergSink, load_catalog

    catalog = load_catalog(
        "bench",
        {"type": "sql", "uri": f"sqlite:///{root}/catalog.db", "warehouse": (root / "warehouse").as_uri()},
    )
    sink = IcebergSink(
        catalog,
        "ktexport",
        catalog_name="bench",
        table_properties=PYICEBERG_DEFAULTS if pyiceberg_defaults else None,
    )
    return catalog, sink


def _next_run(root: Path, pyiceberg_defaults: bool, first_seq: int) -> list[float]:
    """Three untimed commits, then ten timed ones, in this (fresh) process: the next drain run."""
    _, sink = _open(root, pyiceberg_defaults)
    for seq in range(first_seq, first_seq + 3):
        _commit_cpu(sink, seq)
    return [_commit_cpu(sink, seq) for seq in range(first_seq + 3, first_seq + 13)]


def run(commits: int, *, pyiceberg_defaults: bool) -> dict[str, Any]:
    from airflow_provider_ktexport.lake.iceberg_maintenance import maintain_table

    root = Path(tempfile.mkdtemp(prefix="ktexport-iceberg-bench-"))
    (root / "warehouse").mkdir()
    catalog, sink = _open(root, pyiceberg_defaults)
    cpu = []
    for seq in range(commits):
        cpu.append(_commit_cpu(sink, seq))
        if (seq + 1) % 100 == 0:
            print(f"{seq + 1} commits, last {cpu[-1]:.3f} s CPU", file=sys.stderr)
    folder = root / "warehouse" / "ktexport" / "telemetry"
    before = _shape(catalog, folder)
    start = time.process_time()
    report = maintain_table(
        catalog, "ktexport.telemetry", expire_older_than=timedelta(0), orphans_older_than=timedelta(0)
    )
    maintenance_cpu = time.process_time() - start
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        after_cpu = pool.apply(_next_run, (root, pyiceberg_defaults, commits))
    at_10 = statistics.median(cpu[5:15])
    before_cpu = statistics.median(cpu[-10:])
    after = statistics.median(after_cpu)
    return {
        "commits": commits,
        "table_properties": "pyiceberg defaults" if pyiceberg_defaults else "provider defaults",
        "cpu_at_10_s": round(at_10, 4),
        "cpu_before_maintenance_s": round(before_cpu, 4),
        "cpu_after_maintenance_s": round(after, 4),
        "ratio_before_maintenance": round(before_cpu / at_10, 2),
        "ratio_after_maintenance": round(after / at_10, 2),
        "goal_ratio_at_most": 1.5,
        "maintenance_cpu_s": round(maintenance_cpu, 3),
        "maintenance": report.as_dict(),
        "before_maintenance": before,
        "after_maintenance_and_10_commits": _shape(catalog, folder),
    }


def _shape(catalog: Any, folder: Path) -> dict[str, int]:
    table = catalog.load_table("ktexport.telemetry")
    metadata_json, metadata_json_bytes = _folder_bytes(folder / "metadata", "*.metadata.json")
    _, metadata_bytes = _folder_bytes(folder / "metadata", "*")
    data_files, data_bytes = _folder_bytes(folder / "data", "*.parquet")
    return {
        "snapshots": len(table.snapshots()),
        "metadata_json_files": metadata_json,
        "metadata_json_bytes": metadata_json_bytes,
        "current_metadata_json_bytes": Path(table.metadata_location.removeprefix("file://")).stat().st_size,
        "metadata_bytes": metadata_bytes,
        "manifests_in_current_snapshot": len(table.current_snapshot().manifests(table.io)),
        "data_files_on_disk": data_files,
        "data_bytes": data_bytes,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument(
        "--pyiceberg-defaults", action="store_true", help="table properties at pyiceberg's defaults"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "iceberg_commits.json")
    args = parser.parse_args(argv)
    if args.commits < 20:
        parser.error("--commits must be at least 20 (the baseline is commits 6-15)")
    doc = run(args.commits, pyiceberg_defaults=args.pyiceberg_defaults)
    text = json.dumps(doc, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
