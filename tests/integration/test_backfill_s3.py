"""A backfill over many days on a slow S3 server: every batch is acknowledged inside its lease.

Each partition file costs several round trips (PUT, then HEAD and footer reads to verify it). A
flush over hundreds of ``event_date`` partitions written one file at a time outlives a 120 s lease
on a remote store; then every acknowledgement is late, the batches come back and the drain loops
writing duplicates. Here the S3 server (moto's, over HTTP) adds a delay to every request and the
lease is short, so only concurrent writes plus early flushes keep every ack in time.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_ktexport.client import KtExportClient
from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from airflow_provider_ktexport.testing.emulator import Emulator
from tests.integration.conftest import S3_KEY, s3_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELAY = 0.05  # per S3 request, as a store in another region
DAYS = 240
LEASE = 24.0


class _Delayed:
    """WSGI middleware: every request waits ``delay`` seconds before the S3 app answers it."""

    def __init__(self, app: Any, delay: float) -> None:
        self.app = app
        self.delay = delay
        self.requests = 0
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        with self._lock:
            self.requests += 1
        time.sleep(self.delay)
        return self.app(environ, start_response)


@pytest.fixture
def slow_s3() -> Iterator[tuple[str, _Delayed]]:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = _Delayed(DomainDispatcherApplication(create_backend_app), DELAY)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", app
    finally:
        server.shutdown()
        thread.join()


def backfill_records() -> list[dict[str, Any]]:
    """Four telemetry records a day over DAYS days, oldest first (a queue catching up)."""
    out = []
    for day in range(DAYS):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + day * 86_400))
        for i in range(4):
            out.append({"type": "telemetry", "date": stamp, "day": day, "i": i, "location": {"lat": 1.0 + i}})
    return out


def test_backfill_over_many_days_acks_every_batch_in_its_lease(slow_s3, tmp_path):
    import s3fs

    endpoint, delayed = slow_s3
    s3_client(endpoint).create_bucket(Bucket="backfill")
    fs = s3fs.S3FileSystem(
        key=S3_KEY, secret=S3_KEY, endpoint_url=endpoint, client_kwargs={"region_name": "us-east-1"}
    )
    writer = LakeWriter(fs, "backfill/lake")
    records = backfill_records()
    with Emulator(lease_seconds=LEASE, long_poll_seconds=1.0, batch_size=80) as emu:
        emu.enqueue(records)
        with KtExportClient(emu.url, emu.api_key, long_poll_seconds=1.0, pool_size=24) as client:
            config = DrainConfig(
                max_runtime=240,
                lease_seconds=LEASE,
                flush_seconds=10,
                max_flush_partitions=60,
                max_in_flight=2,
            )
            t0 = time.monotonic()
            result = Drain(client, writer, config).run()
            elapsed = time.monotonic() - t0
        stats = emu.stats()
    print(
        json.dumps(
            {
                "files": len(result.files),
                "flushes": result.flushes,
                "s3_requests": delayed.requests,
                "seconds": round(elapsed, 1),
                "max_ack_lease_age_s": round(result.max_ack_lease_age_s or 0, 1),
            }
        )
    )
    assert result.lease_expired == 0 and result.ack_failed == 0
    assert result.max_ack_lease_age_s is not None and result.max_ack_lease_age_s < LEASE
    assert len(result.files) >= DAYS  # one file per day at least: the backfill really spans them
    assert stats["redelivered"] == 0
    assert stats["queued"] == 0 and stats["leased"] == 0
    landed = read_lake_table(fs, "backfill/lake")
    assert sorted(zip(landed.column("day").to_pylist(), landed.column("i").to_pylist(), strict=True)) == [
        (r["day"], r["i"]) for r in records
    ]
