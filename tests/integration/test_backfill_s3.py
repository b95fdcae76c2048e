"""A backfill over hundreds of days on a slow S3 server: every batch is acknowledged inside its lease.

A backfill's batch spreads its records over hundreds of days, so each batch alone writes hundreds
of ``event_date`` partition files, and a flush of several writes thousands. Here every batch
covers about the whole 400 days (the records are shuffled, as a queue catching up serves them),
the S3 server (moto's, over HTTP) adds 40 ms to every request, and the lease is 30 s: the drain
must count a flush's files exactly, spend two requests per file (PUT and HEAD), write many at once
and pace its flushes, or its acknowledgements come too late and the queue never empties.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from airflow_provider_ktexport.testing.emulator import Emulator
from tests.emulators import client_for
from tests.integration.conftest import S3_KEY, s3_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELAY = 0.04  # per S3 request, as a store in another region
DAYS = 400
TYPES = 2
BATCH = 500
BATCHES = 8
LEASE = 30.0


@pytest.fixture
def slow_s3() -> Iterator[str]:
    """The endpoint of moto's S3 server in its own process, DELAY seconds added to each request."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.slow_s3_server", str(DELAY)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())  # printed once it listens
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3_requests(endpoint: str) -> dict[str, int]:
    """What the server counted: requests on data files (``data``) and on anything else (``other``)."""
    with urllib.request.urlopen(f"{endpoint}/_requests", timeout=30) as resp:
        counts: dict[str, int] = json.loads(resp.read())
    return counts


def set_delay(endpoint: str, seconds: float) -> None:
    req = urllib.request.Request(f"{endpoint}/_delay?seconds={seconds}", method="POST")
    urllib.request.urlopen(req, timeout=30).close()


def backfill_records() -> list[dict[str, Any]]:
    """BATCHES x BATCH records of TYPES types over DAYS days, shuffled: each batch spans ~all days."""
    rng = random.Random(18)
    out = []
    for n in range(BATCHES * BATCH):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + rng.randrange(DAYS * 86_400)))
        out.append({"type": f"type{n % TYPES}", "date": stamp, "n": n, "location": {"lat": 1.0}})
    rng.shuffle(out)
    return out


def day_span(records: list[dict[str, Any]]) -> int:
    days = sorted(r["date"][:10] for r in records)
    first, last = (time.mktime(time.strptime(d, "%Y-%m-%d")) for d in (days[0], days[-1]))
    return round((last - first) / 86_400)


def test_backfill_over_hundreds_of_days_acks_every_batch_in_its_lease(slow_s3, tmp_path):
    import s3fs

    endpoint = slow_s3
    s3_client(endpoint).create_bucket(Bucket="backfill")
    fs = s3fs.S3FileSystem(
        key=S3_KEY,
        secret=S3_KEY,
        endpoint_url=endpoint,
        client_kwargs={"region_name": "us-east-1"},
        config_kwargs={"max_pool_connections": 64},  # as docs/performance.md advises for S3
        skip_instance_cache=True,
    )
    writer = LakeWriter(fs, "backfill/lake")
    records = backfill_records()
    assert min(day_span(records[i : i + BATCH]) for i in range(0, len(records), BATCH)) >= 300
    with Emulator(lease_seconds=LEASE, long_poll_seconds=1.0, batch_size=BATCH) as emu:
        emu.enqueue(records)
        with client_for(emu, long_poll_seconds=1.0, pool_size=24) as client:
            # The settings: flush_records far above the backfill, the other limits default.
            config = DrainConfig(max_runtime=300, lease_seconds=LEASE, flush_seconds=15, flush_records=50_000)
            t0 = time.monotonic()
            result = Drain(client, writer, config).run()
            elapsed = time.monotonic() - t0
        stats = emu.stats()
    files = len(result.files)
    requests = s3_requests(endpoint)
    print(
        json.dumps(
            {
                "files": files,
                "flushes": result.flushes,
                "flush_shrinks": result.flush_shrinks,
                "s3_requests": requests,
                "requests_per_file": round(requests["data"] / files, 2),
                "seconds": round(elapsed, 1),
                "max_ack_lease_age_s": round(result.max_ack_lease_age_s or 0, 1),
            }
        )
    )
    assert result.lease_expired == 0 and result.ack_failed == 0 and result.wide_batches == 0
    assert result.acked == BATCHES and stats["acked"] == BATCHES
    assert result.max_ack_lease_age_s is not None and result.max_ack_lease_age_s < LEASE
    assert stats["redelivered"] == 0
    assert stats["queued"] == 0 and stats["leased"] == 0
    assert files >= DAYS  # hundreds of partition files: the backfill really spans the days
    assert requests["data"] <= 2 * files  # one PUT and one HEAD per data file
    # The schema store (one create-if-absent file per column, each read once) and listings cost
    # requests per column, never per data file.
    columns = len(fs.find("backfill/lake/_schema"))
    assert 0 < columns and requests["other"] <= 4 * columns + 10 * TYPES, (columns, requests)
    set_delay(endpoint, 0.0)  # reading hundreds of files back need not wait like the writes
    landed = read_lake_table(fs, "backfill/lake")
    assert sorted(landed.column("n").to_pylist()) == list(range(BATCHES * BATCH))  # every record once
