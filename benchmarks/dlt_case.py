"""Case (d) of the benchmark: the same queue drained by dlt into Parquet files, for comparison.

Runs only in the side virtual environment ``.bench-venv`` (``benchmarks.shapes --dlt`` builds it
with uv: ``dlt[parquet,filesystem]==1.31.*`` and requests), never in the project's own: dlt's
dependencies must not change what the other cases measure. Imports nothing of the provider.

What a careful dlt user writes against this API: lease batches until about as many records as
the drain's ``flush_records`` are held, run the pipeline on them (filesystem destination, Parquet,
one table per record type, dlt's own schema inference and nested tables), and only then DELETE
their batches, so nothing is acknowledged before it is loaded. CPU counts the process and any
worker processes dlt starts (``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import API_KEY

#: Records held before each pipeline run: the drain's default ``flush_records``.
FLUSH_RECORDS = 50_000


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def case_dlt(
    url: str,
    lake: Path,
    start_clock: Callable[[], Any],
    lake_check: Callable[[Path], dict[str, Any]],
) -> dict[str, Any]:
    """(d) GET batches, ``pipeline.run`` every ~50,000 records, then DELETE what was loaded."""
    import dlt
    import msgspec
    import requests

    work = Path(tempfile.mkdtemp(prefix="ktexport-bench-dlt-"))
    pipeline = dlt.pipeline(
        pipeline_name="ktexport_bench",
        pipelines_dir=str(work),
        destination=dlt.destinations.filesystem(bucket_url=lake.as_uri()),
        dataset_name="export",
    )
    session = requests.Session()
    session.headers.update({"x-access-token": API_KEY, "accept-encoding": "gzip"})
    stream = url + "/v2/stream"
    decode = msgspec.json.Decoder().decode
    records = batches = 0
    last_ack = None
    held: list[dict[str, Any]] = []
    held_ids: list[str] = []
    children0 = _children_cpu()
    clock = start_clock()

    def load_and_ack() -> None:
        nonlocal last_ack
        if held:
            resource = dlt.resource(held, name="export", table_name=lambda r: str(r.get("type", "unknown")))
            pipeline.run(resource, loader_file_format="parquet")
        for batch_id in held_ids:
            session.delete(f"{stream}/{batch_id}", timeout=60).raise_for_status()
            last_ack = time.monotonic()
        held.clear()
        held_ids.clear()

    while True:
        resp = session.get(stream, timeout=60)
        if resp.status_code == 500:  # empty after the long poll
            break
        resp.raise_for_status()
        body = decode(resp.content)
        items = body.get("items") or []
        held.extend(items)
        held_ids.append(str(body["id"]))
        records += len(items)
        batches += 1
        if len(held) >= FLUSH_RECORDS:
            load_and_ack()
    load_and_ack()
    out: dict[str, Any] = clock.stop(records=records, batches=batches, last_ack=last_ack)
    worker_cpu = round(_children_cpu() - children0, 3)
    out["cpu_children_s"] = worker_cpu
    out["cpu_s"] = round(out["cpu_s"] + worker_cpu, 3)
    out["checks"] = lake_check(lake)  # rows include dlt's nested tables; distinct_seqs is the count
    out["dlt_version"] = dlt.__version__
    return out
