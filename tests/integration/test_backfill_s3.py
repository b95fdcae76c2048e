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
from collections.abc import Iterator

import pytest

from tests.integration.backfill import BATCH, DAYS, LAKE, LEASE, backfill_records, day_span, run_backfill
from tests.integration.slow_s3_server import running

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DELAY = 0.04  # per S3 request, as a store in another region
TYPES = 2
BATCHES = 8


@pytest.fixture
def slow_s3() -> Iterator[str]:
    """The endpoint of moto's S3 server in its own process, DELAY seconds added to each request."""
    with running(DELAY) as endpoint:
        yield endpoint


def test_backfill_over_hundreds_of_days_acks_every_batch_in_its_lease(slow_s3):
    endpoint = slow_s3
    records = backfill_records(BATCHES, TYPES)
    assert min(day_span(records[i : i + BATCH]) for i in range(0, len(records), BATCH)) >= 300
    # The settings: flush_records far above the backfill, the other limits default.
    run = run_backfill(endpoint, batches=BATCHES, types=TYPES)
    result, stats, requests, files = run.result, run.stats, run.requests, run.files
    print(json.dumps(run.figures()))
    assert result.lease_expired == 0 and result.ack_failed == 0 and result.wide_batches == 0
    assert result.acked == BATCHES and stats["acked"] == BATCHES
    assert result.max_ack_lease_age_s is not None and result.max_ack_lease_age_s < LEASE
    assert stats["redelivered"] == 0
    assert stats["queued"] == 0 and stats["leased"] == 0
    assert files >= DAYS  # hundreds of partition files: the backfill really spans the days
    assert requests["data"] <= 2 * files  # one PUT and one HEAD per data file
    # The schema store (one create-if-absent file per column, each read once) and listings cost
    # requests per column, never per data file.
    columns = len(run.fs.find(f"{LAKE}/_schema"))
    assert 0 < columns and requests["other"] <= 4 * columns + 10 * TYPES, (columns, requests)
    # Reading hundreds of files back need not wait like the writes.
    assert sorted(run.landed_numbers(endpoint)) == list(range(BATCHES * BATCH))  # every record once
