"""Iceberg maintenance against a live drain: two processes on one SQLite catalog, real files."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

pytest.importorskip("pyiceberg")

from airflow_provider_ktexport.lake.iceberg import load_catalog  # noqa: E402
from airflow_provider_ktexport.lake.iceberg_maintenance import maintain_namespace  # noqa: E402
from airflow_provider_ktexport.testing.emulator import Emulator  # noqa: E402
from tests.integration.test_iceberg_dags import catalog_props, table_seqs  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

DRAIN = textwrap.dedent(
    """
    import sys
    from airflow_provider_ktexport.transport.sync_client import KtExportClient
    from airflow_provider_ktexport.drain import Drain, DrainConfig
    from airflow_provider_ktexport.lake.iceberg import IcebergSink, load_catalog

    url, key, uri, warehouse = sys.argv[1:5]
    catalog = load_catalog("ktexport", {"type": "sql", "uri": uri, "warehouse": warehouse})
    # Generous: under load 40 commits beside maintenance passes took more than 240 s.
    config = DrainConfig(max_runtime=480, lease_seconds=60, flush_seconds=5, flush_records=60)
    with KtExportClient(url, key, long_poll_seconds=1.0) as client:
        result = Drain(client, IcebergSink(catalog), config).run()
    print("DRAINED", result.acked, flush=True)
    """
)


def live_files_by_partition(table) -> dict[tuple, int]:
    counts: dict[tuple, int] = {}
    for task in table.scan().plan_files():
        key = tuple(task.file.partition)
        counts[key] = counts.get(key, 0) + 1
    return counts


def unreferenced_data_files(table) -> list[str]:
    """Files under the table's data/ folder that no snapshot reads."""
    read = set()
    for snapshot in table.snapshots():
        for manifest in snapshot.manifests(table.io):
            read.update(
                urlsplit(e.data_file.file_path).path
                for e in manifest.fetch_manifest_entry(table.io, discard_deleted=True)
            )
    data = Path(urlsplit(table.location()).path) / "data"
    return sorted(str(p) for p in data.rglob("*") if p.is_file() and str(p) not in read)


def test_maintenance_while_a_drain_commits_loses_and_doubles_nothing(tmp_path):
    props = catalog_props(tmp_path)
    total = 1200  # 20 flushes: enough commits for maintenance passes to meet them
    passes: list[dict] = []
    with Emulator(
        api_key="ice-key-0123456789", lease_seconds=60, long_poll_seconds=1, batch_size=20, seed=4
    ) as emu:
        emu.generate(total)
        drain = subprocess.Popen(
            [sys.executable, "-c", DRAIN, emu.url, emu.api_key, props["uri"], props["warehouse"]],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            catalog = load_catalog("ktexport", props)
            deadline = time.monotonic() + 540
            # Maintenance passes for as long as the drain commits (the first waits for tables).
            while drain.poll() is None and time.monotonic() < deadline:
                if not catalog.namespace_exists("ktexport") or not catalog.list_tables("ktexport"):
                    time.sleep(0.2)
                    continue
                reports = maintain_namespace(
                    catalog, "ktexport", expire_older_than=timedelta(seconds=20), target_file_bytes=2**20
                )
                passes.append({r.table: r for r in reports})
            output, _ = drain.communicate(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if drain.poll() is None:
                drain.kill()
        stats = emu.stats()
    assert drain.returncode == 0 and "DRAINED" in output, output[-5000:]
    assert stats["queued"] == 0 and stats["leased"] == 0
    during = [p for p in passes if any(r.partitions_compacted for r in p.values())]
    assert len(passes) >= 2 and during, "maintenance was meant to compact while the drain committed"

    # Then again, with nothing running: expire everything but the current snapshot, remove orphans.
    final = maintain_namespace(
        load_catalog("ktexport", props),
        "ktexport",
        expire_older_than=timedelta(0),
        orphans_older_than=timedelta(0),
    )
    everything = sorted(s for seqs in table_seqs(props).values() for s in seqs)
    assert everything == list(range(1, total + 1))  # every record exactly once
    catalog = load_catalog("ktexport", props)
    for report in final:
        table = catalog.load_table(report.table)
        assert max(live_files_by_partition(table).values(), default=0) <= 2, report
        assert len(table.snapshots()) <= 3, report
        assert unreferenced_data_files(table) == [], report
        assert report.files_after <= report.files_before
