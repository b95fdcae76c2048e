"""The micro-benchmark (the report's ``micro``): CPU per 100k records of each candidate decode/build step.

Each JSON decoder, splitting bodies into raw record slices, docs/architecture.md's record key (and a hash of the
raw bytes for comparison), pyarrow's JSON reader, the lake's ``build_tables`` and a zstd Parquet write,
on generator records in 500-record bodies, in this process. The harness (``drain_bench``) runs it
first: it picks the decoder of case (a) and feeds the contract bound estimate.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from typing import Any

from benchmarks._common import API_KEY, BATCH_SIZE
from benchmarks.cases import decoders


def run_micro(n: int, **shape: Any) -> dict[str, Any]:
    """CPU per 100k records of the candidate decode/build paths, on generator records in 500-record bodies.

    This is how the decoder and the Arrow-building path were chosen (docs/performance.md).

    :param shape: ``RecordGenerator`` options of the records (``benchmarks._common.SHAPES``)
    """
    import io

    import msgspec
    import pyarrow as pa
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    from airflow_provider_ktexport.testing.records import RecordGenerator

    gen = RecordGenerator(0, **shape)
    raws = [json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() for r in gen.records(1, n)]
    bodies = [
        b'{"id":"b%d","items":[%b]}' % (i, b",".join(raws[i : i + BATCH_SIZE]))
        for i in range(0, n, BATCH_SIZE)
    ]

    # defstruct, not a class statement: with postponed annotations msgspec cannot resolve a local class.
    envelope = msgspec.defstruct("Envelope", [("id", str), ("items", list[msgspec.Raw])])
    split = msgspec.json.Decoder(envelope)

    def per_100k(fn: Callable[[], Any]) -> float:
        best = float("inf")
        for _ in range(2):
            t = time.process_time()
            fn()
            best = min(best, time.process_time() - t)
        return round(best * 1e5 / n, 3)

    out: dict[str, Any] = {"records": n, "mean_record_bytes": round(sum(map(len, raws)) / n)}
    timings: dict[str, float] = {}
    for name, decode in decoders().items():
        # Each body's objects are dropped before the next, as in a loop: kept alive, they would make
        # the cyclic GC rescan them over and over and measure that instead.
        timings[f"decode_to_dicts_{name}"] = per_100k(lambda d=decode: [d(b) and None for b in bodies])
    timings["split_raw_msgspec"] = per_100k(
        lambda: [[bytes(r) for r in split.decode(b).items] for b in bodies]
    )
    # docs/architecture.md section 3's record key: blake2b-128 of the canonical JSON (keys sorted, compact).
    # Canonical needs the record decoded and encoded again; msgspec is the cheapest way found.
    record_dec, sorted_enc = msgspec.json.Decoder(), msgspec.json.Encoder(order="sorted")
    timings["record_key_canonical"] = per_100k(
        lambda: [
            hashlib.blake2b(sorted_enc.encode(record_dec.decode(r)), digest_size=16).hexdigest() for r in raws
        ]
    )
    # What a key over the bytes as sent would cost instead (not the design's key: for comparison).
    timings["record_key_raw_bytes"] = per_100k(
        lambda: [hashlib.blake2b(r, digest_size=16).hexdigest() for r in raws]
    )
    # The drain masks its API key in every record before building (keymask.py); a flush where no
    # record holds the key, the usual one, costs a substring search per record.
    from airflow_provider_ktexport.api.keymask import key_mask

    timings["key_mask_records"] = per_100k(lambda: key_mask(API_KEY).records(raws))
    # pyarrow's JSON reader infers one schema per stream, so it cannot take a mixed stream (measured:
    # "JSON conversion to struct<...> is not supported"): group by record type first, as a raw-bytes
    # path would have to (a regex on the bytes; the generator writes "type" first).
    by_type: dict[bytes, list[bytes]] = {}
    for raw in raws:
        match = re.search(rb'"type":"([^"]*)"', raw)
        by_type.setdefault(match.group(1) if match else b"", []).append(raw)
    ndjsons = [b"\n".join(group) for group in by_type.values()]
    opts = pajson.ReadOptions(block_size=1 << 26)
    try:
        timings["pyarrow_json_reader_per_type"] = per_100k(
            lambda: [pajson.read_json(io.BytesIO(nd), read_options=opts) for nd in ndjsons]
        )
        tables = [pajson.read_json(io.BytesIO(nd), read_options=opts) for nd in ndjsons]
        timings["parquet_zstd_write_of_that"] = per_100k(
            lambda: [pq.write_table(t, io.BytesIO(), compression="zstd") for t in tables]
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        out["pyarrow_json_reader_error"] = str(exc)[:300]
    try:
        from datetime import UTC, datetime

        from airflow_provider_ktexport.lake.schema import build_tables

        ids = ["b"] * n
        now = datetime.now(UTC)
        timings["lake_build_tables"] = per_100k(
            lambda: build_tables(raws, ids, source="bench", ingested_at=now)
        )
        parts = build_tables(raws, ids, source="bench", ingested_at=now)
        timings["parquet_zstd_write_of_build_tables"] = per_100k(
            lambda: [pq.write_table(p.table, io.BytesIO(), compression="zstd") for p in parts]
        )
    except ImportError as exc:
        out["lake_build_tables_error"] = str(exc)
    out["cpu_s_per_100k"] = timings
    candidates = {k.rsplit("_", 1)[1]: v for k, v in timings.items() if k.startswith("decode_to_dicts_")}
    candidates.pop("json", None)  # the floor uses the fastest *fast* decoder, per the issue
    out["fastest_decoder"] = min(candidates, key=candidates.__getitem__) if candidates else "json"
    return out
