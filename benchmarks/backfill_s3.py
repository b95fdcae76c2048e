"""Issue 18's backfill on slow S3: one drain run, every acknowledgement inside its lease?

```bash
.venv/bin/python -m benchmarks.backfill_s3 --batches 40 --types 5   # the issue's size, ~2-4 min loaded
```

Records shuffled over 400 days (each 500-record batch covers about all of them), ``--types``
record types, moto's S3 server in its own process adding ``--delay-ms`` to every request
(``tests/integration/slow_s3_server.py``), a 30 s lease and the issue's settings
(``flush_records=50000``, other limits default, s3fs ``max_pool_connections=64``). The scenario is
the one ``tests/integration/test_backfill_s3.py`` runs at 8 batches (``tests/integration/backfill.py``).
Prints one JSON document: files, S3 requests per data file, seconds, flushes, batches acknowledged
in their lease, late ones, the largest lease age at acknowledgement, the load average before and
after, and whether the lake holds every record exactly once (``--no-verify`` skips that read-back).
The drain's flush lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from tests.integration.backfill import BATCH, DAYS, run_backfill
from tests.integration.slow_s3_server import running


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backfill_s3", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batches", type=int, default=40, help="batches of 500 records (default 40)")
    parser.add_argument("--types", type=int, default=5, help="record types (default 5)")
    parser.add_argument(
        "--days", type=int, default=DAYS, help=f"days the records spread over (default {DAYS})"
    )
    parser.add_argument("--delay-ms", type=float, default=40.0, help="added to every S3 request (default 40)")
    parser.add_argument("--no-verify", action="store_true", help="do not read the lake back")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    load_before = os.getloadavg()
    with running(args.delay_ms / 1000) as endpoint:
        run = run_backfill(endpoint, batches=args.batches, types=args.types, days=args.days, max_runtime=900)
        doc = run.figures() | {
            "types": args.types,
            "days": args.days,
            "delay_ms": args.delay_ms,
            "load_avg_before": [round(x, 1) for x in load_before],
            "load_avg_after": [round(x, 1) for x in os.getloadavg()],
        }
        if not args.no_verify:
            numbers = run.landed_numbers(endpoint)
            doc["every_record_once"] = sorted(numbers) == list(range(args.batches * BATCH))
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
