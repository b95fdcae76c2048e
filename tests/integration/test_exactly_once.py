"""Exactly once as landed (docs/delivery-semantics.md): no duplicate a reader can see, on both sinks.

The emulator over HTTP with 3 s leases redelivers every unacknowledged batch under a new id and
regrouped; the drains run in child processes (``crash_worker``) so they can be SIGKILLed, or
in this process with a catalog that misbehaves. Iceberg tables live in pyiceberg's SQL catalog on
SQLite and are read back with pyiceberg; the Parquet lake is read back with DuckDB. Every scenario
ends with: rows == distinct ``_record_key`` == records sent, with no compaction and no dedupe query.
(The Parquet SIGKILL matrix is ``test_crash_recovery.py``'s, whose audit now asks for one row each.)
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyiceberg")

from airflow_provider_ktexport.drain import Drain, DrainConfig  # noqa: E402
from airflow_provider_ktexport.exceptions import KtExportError  # noqa: E402
from airflow_provider_ktexport.lake.iceberg import IcebergSink  # noqa: E402
from airflow_provider_ktexport.lake.schema import record_key  # noqa: E402
from airflow_provider_ktexport.testing.emulator import Emulator  # noqa: E402
from airflow_provider_ktexport.transport.sync_client import KtExportClient  # noqa: E402
from tests.integration.crash_worker import command, iceberg_catalog  # noqa: E402
from tests.integration.test_crash_recovery import (  # noqa: E402
    LEASE_SECONDS,
    LONG_POLL_SECONDS,
    REPO,
    ack_guard,
    assert_killed_at,
    audit,
    finish,
    run_worker,
    simple_records,
)

pytestmark = pytest.mark.integration

TABLES = ("telemetry", "event")
API_KEY = "exactly-once-key"


def emulator(**kw: Any) -> Emulator:
    return Emulator(
        api_key=API_KEY,
        lease_seconds=LEASE_SECONDS,
        long_poll_seconds=LONG_POLL_SECONDS,
        **{"batch_size": 50, **kw},
    )


def iceberg_rows(db: Path) -> list[tuple[int, str]]:
    """(emulator_seq, _record_key) of every row of the record-type tables, read with pyiceberg."""
    catalog = iceberg_catalog(str(db))
    rows: list[tuple[int, str]] = []
    for name in TABLES:
        table = catalog.load_table(f"ktexport.{name}").scan(selected_fields=("emulator_seq", "_record_key"))
        data = table.to_arrow()
        rows += zip(
            data.column("emulator_seq").to_pylist(), data.column("_record_key").to_pylist(), strict=True
        )
    return rows


def assert_once(rows: list[tuple[int, str]], emu: Emulator, emitted: list[dict]) -> None:
    """rows == distinct _record_key == records sent, each with its content's key, each acked once."""
    stats = emu.stats()
    assert stats["queued"] == 0 and stats["leased"] == 0, stats
    copies = Counter(seq for seq, _ in rows)
    twice = {s: n for s, n in copies.items() if n > 1}
    assert not twice, f"{len(twice)} records land more than once: {list(twice.items())[:10]}"
    assert set(copies) == {r["emulator_seq"] for r in emitted}
    assert len(rows) == len({k for _, k in rows}) == len(emitted)
    want = {r["emulator_seq"]: record_key(r) for r in emitted}
    assert all(want[s] == k for s, k in rows)
    acked = Counter(emu.acked_seqs())
    assert set(acked) == set(want) and max(acked.values()) == 1


# -- SIGKILL at each point, Iceberg ------------------------------------------------------------------

#: (kill point, occurrence): 600 records of two types in batches of 50, a flush every 4 batches
#: commits to two tables.
ICEBERG_POINTS = {
    "before_land": 1,  # the first flush built its tables, nothing committed
    "before_ack": 5,  # the second flush committed to both tables, none of its acks sent
    "between_acks": 1,  # one ack of the first flush answered, the other three not sent
    "after_acks": 1,  # every ack of the first flush answered, not yet settled in the ledger
}


def iceberg_crash(
    point: str, nth: int, root: Path
) -> tuple[Emulator, list[dict], subprocess.CompletedProcess[str], dict, Path]:
    db = root / "catalog.db"
    root.mkdir(parents=True)
    with emulator(seed=21) as emu:
        emitted = simple_records(600)
        emu.enqueue(emitted)
        crashed = run_worker(
            emu, root / "lake", "--iceberg", str(db), "--kill-at", point, "--kill-nth", str(nth)
        )
        summary = finish(emu, root / "lake", "--iceberg", str(db)) if crashed.returncode == -9 else {}
    return emu, emitted, crashed, summary, db


@pytest.fixture(scope="module")
def iceberg_crashes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("iceberg-crash")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {p: pool.submit(iceberg_crash, p, n, root / p) for p, n in ICEBERG_POINTS.items()}
        return {p: f.result() for p, f in futures.items()}


@pytest.mark.parametrize("point", list(ICEBERG_POINTS))
def test_iceberg_sigkill_at_any_point_then_a_run_lands_each_record_once(iceberg_crashes, point):
    emu, emitted, crashed, summary, db = iceberg_crashes[point]
    assert_killed_at(crashed, point)
    assert summary["stopped"] == "empty"
    assert_once(iceberg_rows(db), emu, emitted)
    if point in ("before_ack", "between_acks"):
        assert summary["deduped"] > 0, summary  # the committed flush's records came back and were dropped


# -- a catalog that misbehaves ---------------------------------------------------------------------


def flaky_catalog(db: Path, misbehave: Any) -> Any:
    """The SQL catalog of ``db`` whose ``commit_table`` goes through ``misbehave(commit, table, ...)``."""
    from pyiceberg.catalog.sql import SqlCatalog

    props = dict(iceberg_catalog(str(db)).properties)

    class Flaky(SqlCatalog):
        def commit_table(self, table: Any, requirements: Any, updates: Any) -> Any:
            return misbehave(lambda: super(Flaky, self).commit_table(table, requirements, updates), table)

    return Flaky("crash", **props)


def run_drain(emu: Emulator, catalog: Any, **cfg: Any) -> Drain:
    client = KtExportClient(emu.url, API_KEY, long_poll_seconds=LONG_POLL_SECONDS, backoff_base=0.1)
    config = DrainConfig(
        **{
            "max_runtime": 60,
            "lease_seconds": LEASE_SECONDS,
            "flush_seconds": 1.0,
            "flush_records": 200,
            **cfg,
        }
    )
    drain = Drain(client, IcebergSink(catalog, catalog_name="crash"), config)
    try:
        drain.run()
    finally:
        client.close()
    return drain


def drain_to_the_end(emu: Emulator, db: Path, deadline_s: float = 120) -> None:
    """Runs (plain catalog) until the emulator holds nothing queued or leased."""
    stop = time.monotonic() + deadline_s
    while emu.stats()["queued"] or emu.stats()["leased"]:
        assert time.monotonic() < stop, emu.stats()
        run_drain(emu, iceberg_catalog(str(db)), drain_until=time.time() + LEASE_SECONDS + 1.0)


def test_a_commit_whose_outcome_is_unknown_is_found_not_made_twice(tmp_path):
    from pyiceberg.exceptions import CommitStateUnknownException

    db = tmp_path / "catalog.db"
    unknown = []

    def commit_then_lose_the_answer(commit: Any, table: Any) -> Any:
        answer = commit()
        if len(unknown) < 3:  # a REST catalog behind a 502: applied, then "unknown"
            unknown.append(table.name())
            raise CommitStateUnknownException("502 Bad Gateway after the commit was applied")
        return answer

    with emulator(seed=22) as emu:
        emitted = simple_records(400)
        emu.enqueue(emitted)
        drain = run_drain(emu, flaky_catalog(db, commit_then_lose_the_answer))
        assert len(unknown) == 3 and drain.result.acked == drain.result.batches
        drain_to_the_end(emu, db)
        assert_once(iceberg_rows(db), emu, emitted)


def test_a_flush_that_fails_on_its_second_table_is_repaired_by_the_next_run(tmp_path):
    from pyiceberg.exceptions import ServerError

    db = tmp_path / "catalog.db"
    failed: list[str] = []

    def second_table_down(commit: Any, table: Any) -> Any:
        if table.name()[-1] == "event":  # the first flush commits telemetry, then event fails
            failed.append(table.name()[-1])
            raise ServerError("500: the catalog's database is down")
        return commit()

    with emulator(seed=23) as emu:
        emitted = simple_records(400)
        emu.enqueue(emitted)
        with pytest.raises(KtExportError):
            run_drain(emu, flaky_catalog(db, second_table_down))
        assert failed and emu.stats()["acked"] == 0
        committed = iceberg_catalog(str(db)).load_table("ktexport.telemetry").scan().to_arrow().num_rows
        assert committed > 0  # half the flush is in the lake, unacknowledged: it comes back
        drain_to_the_end(emu, db)
        assert_once(iceberg_rows(db), emu, emitted)


# -- four drains on one queue ---------------------------------------------------------------------


def four_drains(emu: Emulator, lake: Path, *extra: str) -> list[dict]:
    """Four worker processes on one queue until it is empty; their summaries."""
    until = time.time() + 12
    cmd = [
        *command(emu.url, API_KEY, str(lake), LEASE_SECONDS, LONG_POLL_SECONDS),
        "--drain-until",
        f"{until:.3f}",
        "--flush-records",
        "400",
        "--max-in-flight",
        "4",
        *extra,
    ]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    summaries = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        last = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
        if p.returncode != 0 and lost_commit_races(last):
            continue  # nothing acknowledged: its batches come back to the others or to finish()
        assert p.returncode == 0, f"{out[-2000:]}\n{err[-3000:]}"
        summaries.append(last)
    return summaries


def lost_commit_races(outcome: dict) -> bool:
    """Whether a worker gave up as designed: its Iceberg commits lost so many races with the other
    writers that retrying would outlive its batches' 3 s leases (more likely on a loaded machine).
    It acknowledged nothing from that flush, so the batches are delivered again."""
    return outcome.get("error") == "KtExportWriteError" and "races with other writers" in outcome.get(
        "message", ""
    )


def refuse_some_acks(emu: Emulator, every: int = 6) -> list[str]:
    """Refuse every ``every``-th acknowledgement (after any guard already installed): those batches
    come back after their lease, regrouped, to whichever of the drains asks first."""
    guard = emu.on_ack
    refused: list[str] = []
    lock = threading.Lock()
    count = [0]

    def on_ack(batch_id: str, records: list[dict]) -> None:
        if guard is not None:
            guard(batch_id, records)
        with lock:
            count[0] += 1
            if count[0] % every:
                return
            refused.append(batch_id)
        raise RuntimeError("refused: the ack did not take effect")

    emu.on_ack = on_ack
    return refused


@pytest.mark.parametrize("sink", ["parquet", "iceberg"])
def test_four_drains_on_one_queue_land_each_record_once(tmp_path, sink):
    lake, db = tmp_path / "lake", tmp_path / "catalog.db"
    extra = ("--iceberg", str(db)) if sink == "iceberg" else ()
    violations: list[str] = []
    with emulator(seed=24, batch_size=40, latency_ms=20) as emu:
        emitted = simple_records(3000)
        emu.enqueue(emitted)
        if sink == "parquet":
            ack_guard(emu, lake, violations)
        refused = refuse_some_acks(emu)
        summaries = four_drains(emu, lake, *extra)
        emu.on_ack = None  # the rest lands without refusals
        if emu.stats()["queued"] or emu.stats()["leased"]:
            summaries.append(finish(emu, lake, *extra))
        if sink == "parquet":
            in_lake = audit(emu, lake, emitted)
            assert violations == [] and max(in_lake.values()) == 1
        else:
            assert_once(iceberg_rows(db), emu, emitted)
    assert refused and sum(s["deduped"] for s in summaries) > 0, summaries
    print(
        "four drains:",
        [
            {k: s[k] for k in ("records", "acked", "ack_failed", "lease_expired", "deduped")}
            for s in summaries
        ],
    )
