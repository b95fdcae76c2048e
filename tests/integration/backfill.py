"""Issue 18's backfill on a slow S3 server, shared by its test and its benchmark.

Records shuffled over hundreds of days (as a queue catching up serves them, so each batch covers
about all of them), drained by one :class:`~airflow_provider_ktexport.drain.Drain` run with the
issue's settings into a Parquet lake on the server of :mod:`tests.integration.slow_s3_server`.
``tests/integration/test_backfill_s3.py`` runs 8 batches of 2 types in CI;
``benchmarks/backfill_s3.py`` runs the issue's 40 batches of 5 types and prints the figures.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from airflow_provider_ktexport.drain import Drain, DrainConfig, DrainResult
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from airflow_provider_ktexport.testing.emulator import Emulator
from tests.emulators import client_for
from tests.integration.conftest import S3_KEY, s3_client
from tests.integration.slow_s3_server import s3_requests, set_delay

DAYS = 400
BATCH = 500
LEASE = 30.0
BUCKET = "backfill"
LAKE = f"{BUCKET}/lake"


def backfill_records(batches: int, types: int, days: int = DAYS) -> list[dict[str, Any]]:
    """``batches`` x :data:`BATCH` records of ``types`` types over ``days`` days, shuffled: each
    batch spans about all the days."""
    rng = random.Random(18)
    out = []
    for n in range(batches * BATCH):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + rng.randrange(days * 86_400)))
        out.append({"type": f"type{n % types}", "date": stamp, "n": n, "location": {"lat": 1.0}})
    rng.shuffle(out)
    return out


def day_span(records: list[dict[str, Any]]) -> int:
    """Days between the first and the last record's date."""
    days = sorted(r["date"][:10] for r in records)
    first, last = (time.mktime(time.strptime(d, "%Y-%m-%d")) for d in (days[0], days[-1]))
    return round((last - first) / 86_400)


def slow_fs(endpoint: str) -> Any:
    """s3fs on ``endpoint`` with the connection pool docs/performance.md advises for S3."""
    import s3fs

    return s3fs.S3FileSystem(
        key=S3_KEY,
        secret=S3_KEY,
        endpoint_url=endpoint,
        client_kwargs={"region_name": "us-east-1"},
        config_kwargs={"max_pool_connections": 64},
        skip_instance_cache=True,
    )


@dataclass
class Backfill:
    """One drain run of a backfill and what the emulator and the S3 server counted."""

    batches: int
    result: DrainResult
    stats: dict[str, Any]
    requests: dict[str, int]
    seconds: float
    fs: Any

    @property
    def files(self) -> int:
        return len(self.result.files)

    def figures(self) -> dict[str, Any]:
        """What docs/performance.md's backfill table reports."""
        r = self.result
        return {
            "batches": self.batches,
            "files": self.files,
            "flushes": r.flushes,
            "flush_shrinks": r.flush_shrinks,
            "s3_requests": self.requests,
            "requests_per_file": round(self.requests.get("data", 0) / max(1, self.files), 2),
            "seconds": round(self.seconds, 1),
            "acked_in_lease": r.acked,
            "lease_expired": r.lease_expired,
            "ack_failed": r.ack_failed,
            "wide_batches": r.wide_batches,
            "deduped": r.deduped,
            "redelivered": self.stats["redelivered"],
            "queued_after": self.stats["queued"] + self.stats["leased"],
            "max_ack_lease_age_s": round(r.max_ack_lease_age_s or 0, 1),
        }

    def landed_numbers(self, endpoint: str) -> list[int]:
        """Every record's ``n`` as the lake holds it (read without the delay)."""
        set_delay(endpoint, 0.0)
        column: list[int] = read_lake_table(self.fs, LAKE).column("n").to_pylist()
        return column


def run_backfill(
    endpoint: str, *, batches: int, types: int, days: int = DAYS, max_runtime: float = 300
) -> Backfill:
    """Queue the backfill, drain it in one run with the issue's settings (``flush_records=50000``,
    other limits default, a :data:`LEASE` s lease) and return what it did."""
    fs = slow_fs(endpoint)
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    writer = LakeWriter(fs, LAKE)
    with Emulator(lease_seconds=LEASE, long_poll_seconds=1.0, batch_size=BATCH) as emu:
        emu.enqueue(backfill_records(batches, types, days))
        with client_for(emu, long_poll_seconds=1.0, pool_size=24) as client:
            config = DrainConfig(
                max_runtime=max_runtime, lease_seconds=LEASE, flush_seconds=15, flush_records=50_000
            )
            t0 = time.monotonic()
            result = Drain(client, writer, config).run()
            seconds = time.monotonic() - t0
        stats = emu.stats()
    return Backfill(batches, result, stats, s3_requests(endpoint), seconds, fs)
