"""What runs inside a benchmark child process: one measured case, its clock and its checks.

``python -m benchmarks.drain_bench --child a|b|c`` ends up in :func:`run_child`, which runs one of

(a) :func:`_case_raw`, the raw floor: GET, decode, DELETE, nothing written;
(b) :func:`_case_naive`, the hand-written ``requests`` + ``pandas`` + ``to_parquet`` loop;
(c) :func:`_case_drain`, our ``Drain`` with default settings, wrapped to check ack-after-write,
(d) ``benchmarks.dlt_case``: a dlt pipeline to Parquet files (run in a side venv, ``--dlt``),

and prints its figures as one JSON line on stdout for the parent (``drain_bench``) to read. CPU comes
from ``getrusage(RUSAGE_SELF)`` and peak RSS from ``VmHWM``: both belong to this process alone.
"""

from __future__ import annotations

import importlib
import json
import logging
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import API_KEY, CHILD_TIMEOUT, LEASE_SECONDS, LONG_POLL_SECONDS


def _cpu() -> tuple[float, float]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime


def _peak_rss_mb() -> float:
    """Peak RSS of this process since its exec.

    ``ru_maxrss`` survives ``execve`` on Linux: a child forked from a 400 MB parent reports
    400 MB however small it stays (seen here). ``VmHWM`` belongs to the new address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


@dataclass
class _Clock:
    """CPU and wall time of the measured part of a case (imports and setup excluded)."""

    cpu0: tuple[float, float]
    t0: float

    @classmethod
    def start(cls, at: float | None = None) -> _Clock:
        """Start now, or at the epoch time ``at`` (several drains on one queue start together)."""
        if at is not None:
            time.sleep(max(0.0, at - time.time()))
        return cls(_cpu(), time.monotonic())

    def stop(self, *, records: int, batches: int, last_ack: float | None) -> dict[str, Any]:
        now = time.monotonic()
        user, sys_ = _cpu()
        return {
            "records": records,
            "batches": batches,
            # Interpreter start, imports and setup: paid once per process, not per record.
            "setup_cpu_s": round(sum(self.cpu0), 3),
            "cpu_user_s": round(user - self.cpu0[0], 3),
            "cpu_sys_s": round(sys_ - self.cpu0[1], 3),
            "cpu_s": round(user - self.cpu0[0] + sys_ - self.cpu0[1], 3),
            # Until the last acknowledgement: the final empty long poll is waiting, not draining.
            "wall_s": round((last_ack or now) - self.t0, 3),
            "wall_total_s": round(now - self.t0, 3),
            # Epoch times of the start and of the last ack: the scale-out curve spans several children.
            "started_at_epoch": round(time.time() - (now - self.t0), 3),
            "last_ack_epoch": round(time.time() - (now - (last_ack or now)), 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }


def decoders() -> dict[str, Callable[[bytes], Any]]:
    found: dict[str, Callable[[bytes], Any]] = {"json": json.loads}
    try:
        import msgspec

        found["msgspec"] = msgspec.json.Decoder().decode
    except ImportError:
        pass
    try:
        import orjson

        found["orjson"] = orjson.loads
    except ImportError:
        pass
    return found


def _case_raw(url: str, decoder: str) -> dict[str, Any]:
    """(a) GET, decode, DELETE in a loop: the least any client can do."""
    import requests

    decode = decoders()[decoder]
    session = requests.Session()
    session.headers.update({"x-access-token": API_KEY, "accept-encoding": "gzip"})
    stream = url + "/v2/stream"
    records = batches = 0
    last_ack = None
    clock = _Clock.start()
    while True:
        resp = session.get(stream, timeout=60)
        if resp.status_code == 500:  # empty after the long poll
            break
        resp.raise_for_status()
        body = decode(resp.content)
        records += len(body.get("items") or ())
        batches += 1
        session.delete(f"{stream}/{body['id']}", timeout=60).raise_for_status()
        last_ack = time.monotonic()
    out = clock.stop(records=records, batches=batches, last_ack=last_ack)
    out["decoder"] = decoder
    return out


def _naive_to_parquet(df: Any, path: Path) -> None:
    import pandas as pd
    import pyarrow as pa

    # What users end up with after the first ArrowInvalid: mixed object columns become text.
    mixed = [
        c
        for c in df.columns
        if df[c].dtype == object and pd.api.types.infer_dtype(df[c], skipna=True).startswith("mixed")
    ]
    if mixed:
        df[mixed] = df[mixed].astype(str)
    try:
        df.to_parquet(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        objects = [c for c in df.columns if df[c].dtype == object]
        df[objects] = df[objects].astype(str)
        df.to_parquet(path)


def _case_naive(url: str, lake: Path) -> dict[str, Any]:
    """(b) The hand-written loop: requests + pandas.json_normalize + to_parquet per batch."""
    import pandas as pd
    import requests

    # A Session (keep-alive) is generous to the hand-written loop: the comparison is about the data path.
    session = requests.Session()
    headers = {"x-access-token": API_KEY}
    stream = url + "/v2/stream"
    records = batches = rows = 0
    last_ack = None
    clock = _Clock.start()
    while True:
        resp = session.get(stream, headers=headers, timeout=60)
        if resp.status_code == 500:
            break
        resp.raise_for_status()
        data = resp.json()
        df = pd.json_normalize(data["items"])
        _naive_to_parquet(df, lake / f"{data['id']}.parquet")
        rows += len(df)
        records += len(data["items"])
        batches += 1
        session.delete(f"{stream}/{data['id']}", headers=headers, timeout=60).raise_for_status()
        last_ack = time.monotonic()
    out = clock.stop(records=records, batches=batches, last_ack=last_ack)
    out["checks"] = {"landed_rows": rows}
    return out


class _CpuSplit:
    """Thread CPU time spent inside wrapped calls, by label (fetcher, ack and main threads alike)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def wrap(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.thread_time() - t
                with self._lock:
                    self.seconds[label] = self.seconds.get(label, 0.0) + spent

        return timed


class _CheckedClient:
    """The real client as the drain sees it, noting whether each ack follows the write of its rows."""

    def __init__(self, inner: Any, split: _CpuSplit) -> None:
        self.long_poll_seconds = inner.long_poll_seconds
        self._get = split.wrap("http_get_and_split", inner.get_batch)
        self._ack = split.wrap("http_ack", inner.ack)
        self._lock = threading.Lock()
        self._leased: dict[str, tuple[int, float]] = {}
        self._written: dict[str, int] = {}
        self.early_acks = 0
        self.max_ack_lease_age_s = 0.0
        self.last_ack: float | None = None

    def get_batch(self, *, deadline: float | None = None) -> Any:
        batch = self._get(deadline=deadline)
        if batch is not None:
            with self._lock:
                self._leased[batch.id] = (len(batch), batch.leased_at)
        return batch

    def ack(self, batch_id: str) -> bool:
        with self._lock:
            records, leased_at = self._leased[batch_id]
            if self._written.get(batch_id, 0) < records:
                self.early_acks += 1
        ok = self._ack(batch_id)
        now = time.monotonic()
        with self._lock:
            self.max_ack_lease_age_s = max(self.max_ack_lease_age_s, now - leased_at)
            self.last_ack = now
        return ok

    def note_written(self, batch_ids: list[str], counts: list[int]) -> None:
        with self._lock:
            for batch_id, count in zip(batch_ids, counts, strict=True):
                self._written[batch_id] = self._written.get(batch_id, 0) + count


class _CheckedWriter:
    """The real LakeWriter, reporting the rows of each batch once their file is written and verified."""

    def __init__(self, inner: Any, split: _CpuSplit, client: _CheckedClient) -> None:
        self._inner = inner
        self._client = client
        self._write = split.wrap("parquet_write_and_verify", inner.write)

    def write(self, table: Any, partition: Any, **kwargs: Any) -> Any:
        import pyarrow.compute as pc

        written = self._write(table, partition, **kwargs)
        counts = pc.value_counts(table.column("_batch_id"))
        self._client.note_written(counts.field("values").to_pylist(), counts.field("counts").to_pylist())
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def lake_check(lake: Path) -> dict[str, Any]:
    """Rows and distinct emulator_seq values in the lake's data files (footer plus one column)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = 0
    seqs: list[pa.Array] = []
    files = 0
    for path in sorted(lake.rglob("*.parquet")):
        if any(part.startswith(("_", ".")) for part in path.relative_to(lake).parts):
            continue  # _schema, _quarantine and temporary files are not data
        pf = pq.ParquetFile(path)
        rows += pf.metadata.num_rows
        files += 1
        if "emulator_seq" in pf.schema_arrow.names:
            seqs.extend(pf.read(columns=["emulator_seq"]).column(0).cast(pa.int64()).chunks)
    distinct = pc.count_distinct(pa.chunked_array(seqs, pa.int64())).as_py() if seqs else 0
    return {"landed_rows": rows, "distinct_seqs": distinct, "files": files}


def _case_drain(
    url: str,
    lake: Path,
    profile: Path | None,
    start_at: float | None = None,
    flush_records: int | None = None,
) -> dict[str, Any]:
    """(c) Our drain with default settings, checked for ack-after-write and lease age.

    ``start_at``: several drains share the queue and the lake (the scale-out curve); each starts
    at that epoch time, and the lake is checked once by the parent after all of them ended.
    ``flush_records``: instead of the default (the scale-out flushes many times in each drain, as a
    drain on a long queue does, instead of holding its whole share until one flush at the end).
    """
    # The package first, as a task's DAG file imports it: it may choose Arrow's pool before
    # pyarrow loads (airflow_provider_ktexport/_arrow_env.py).
    importlib.import_module("airflow_provider_ktexport")
    import fsspec
    import pyarrow as pa
    import pyarrow.compute  # noqa: F401 - imported by the drain at first use: a one-time cost
    import pyarrow.parquet  # noqa: F401

    from airflow_provider_ktexport import drain as drain_mod
    from airflow_provider_ktexport.lake import rejects as rejects_mod
    from airflow_provider_ktexport.lake.sinks import ParquetSink
    from airflow_provider_ktexport.lake.writer import LakeWriter
    from airflow_provider_ktexport.transport.sync_client import KtExportClient

    # pyarrow imports pandas (when installed) at the first pa.array() of a Python list: ~1 s of CPU
    # once per process here (no bytecode cache), which would pass for per-record cost in a short run.
    pa.array([0])
    split = _CpuSplit()
    # The drain builds through lake.rejects (per-record isolation around build_tables): wrapping the
    # name there times Arrow building without touching it.
    rejects_mod.build_tables = split.wrap("build_tables", rejects_mod.build_tables)
    client = _CheckedClient(
        KtExportClient(
            url, API_KEY, long_poll_seconds=LONG_POLL_SECONDS, pool_size=drain_mod.connections_needed(4)
        ),
        split,
    )
    writer = _CheckedWriter(LakeWriter(fsspec.filesystem("file"), str(lake)), split, client)
    config = drain_mod.DrainConfig(
        max_runtime=CHILD_TIMEOUT / 2,
        lease_seconds=LEASE_SECONDS,
        source="benchmark",
        **({} if flush_records is None else {"flush_records": flush_records}),
    )
    # The drain's own Parquet sink (concurrent writes) over the checked writer.
    drain = drain_mod.Drain(client, ParquetSink(writer, concurrency=config.write_concurrency), config)  # type: ignore[arg-type]
    # The flush ledger's normal-case cost (exactly once as landed: a listing, a manifest put before
    # the files, its removal after the acks) gets its own line in the CPU split. Code before issue 21
    # (benchmarks.versus runs older commits) has no ledger.
    ledger = getattr(drain.sink, "ledger", None)
    if ledger is not None:
        ledger.prepare = split.wrap("flush_ledger", ledger.prepare)
        ledger.settle = split.wrap("flush_ledger", ledger.settle)
    profiler = None
    if profile is not None:
        import cProfile

        profiler = cProfile.Profile()  # the main thread: decode, flatten, Arrow, Parquet
    clock = _Clock.start(start_at)
    if profiler is not None:
        profiler.enable()
    result = drain.run()
    if profiler is not None:
        profiler.disable()
    out = clock.stop(records=result.records, batches=result.batches, last_ack=client.last_ack)
    if profiler is not None:
        _write_profile(profiler, profile)
    split_s = {k: round(v, 3) for k, v in sorted(split.seconds.items())}
    split_s["other"] = round(out["cpu_s"] - sum(split.seconds.values()), 3)
    out["cpu_split_s"] = split_s
    out["drain"] = {
        k: v for k, v in result.summary().items() if k not in ("files", "oldest_record_age_s", "duration_s")
    }
    out["drain"]["files"] = len(result.files)
    out["checks"] = {
        **(lake_check(lake) if start_at is None else {}),
        "early_acks": client.early_acks,
        "max_ack_lease_age_s": round(client.max_ack_lease_age_s, 3),
    }
    return out


def _write_profile(profiler: Any, path: Path) -> None:
    import io
    import pstats

    path.parent.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(path))
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    path.with_suffix(".txt").write_text(text.getvalue())


def run_child(
    case: str,
    url: str,
    lake: Path,
    decoder: str,
    profile: Path | None,
    start_at: float | None = None,
    flush_records: int | None = None,
) -> int:
    """Run one case in this process and print its figures as one JSON line (the parent reads the last)."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if case == "a":
        out = _case_raw(url, decoder)
    elif case == "b":
        out = _case_naive(url, lake)
    elif case == "d":
        from benchmarks.dlt_case import case_dlt  # only importable in the side venv

        out = case_dlt(url, lake, _Clock.start, lake_check)
    else:
        out = _case_drain(url, lake, profile, start_at, flush_records)
    print(json.dumps(out), flush=True)
    return 0
