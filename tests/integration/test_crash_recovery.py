"""Kill the drain with SIGKILL at each dangerous point, run it again, and audit the lake.

The drain runs in a child process (``tests/integration/crash_worker.py``) against an emulator
in this process, so the emulator's accounting (what it delivered, what was acknowledged) can be
compared with what is in the lake. Short leases make the redelivery after a crash quick.

After the rerun, every test asserts the guarantees of docs/delivery-semantics.md:

- every record the emulator emitted is in the lake (by its ``emulator_seq``);
- every ``*.parquet`` file reads whole (no half-written file is visible);
- a record is in the lake at most as many times as the emulator delivered it, every copy has
  the same ``_record_key``, and the documented DuckDB query leaves exactly one row per record;
- every record was acknowledged exactly once, and only after it was in the lake.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.lake.schema import record_key
from airflow_provider_ktexport.testing.emulator import Emulator
from tests.integration.crash_worker import command
from tests.waiting import slowdown

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
#: 3 s on a quiet machine, longer on a loaded one (tests.waiting.slowdown): the crash and
#: exactly-once scenarios need leases much shorter than a run, not a race against the machine.
LEASE_SECONDS = round(3.0 * slowdown(), 1)
LONG_POLL_SECONDS = 0.5

#: The de-duplication query of docs/delivery-semantics.md ({glob} is the lake's parquet glob).
DEDUP_SQL = """
SELECT * EXCLUDE (rn)
FROM (
    SELECT *, row_number() OVER (PARTITION BY _record_key ORDER BY _ingested_at) AS rn
    FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)
)
WHERE rn = 1
"""
#: The same with QUALIFY.
DEDUP_SQL_QUALIFY = """
SELECT *
FROM read_parquet('{glob}', hive_partitioning = true, union_by_name = true)
QUALIFY row_number() OVER (PARTITION BY _record_key ORDER BY _ingested_at) = 1
"""


# -- helpers -----------------------------------------------------------------------------------------


def run_worker(
    emu: Emulator, lake: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """One drain in a child process (``crash_worker``) against ``emu``, landing in ``lake``."""
    cmd = [*command(emu.url, emu.api_key, str(lake), LEASE_SECONDS, LONG_POLL_SECONDS), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def assert_killed_at(proc: subprocess.CompletedProcess[str], point: str) -> str:
    """The child died by SIGKILL at ``point``; returns the detail it printed."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("KILL ")]
    assert proc.returncode == -9, f"expected SIGKILL, got {proc.returncode}\n{proc.stderr[-3000:]}"
    assert lines and lines[-1].split(" ", 2)[1] == point, proc.stderr[-3000:]
    return lines[-1].split(" ", 2)[2] if len(lines[-1].split(" ", 2)) > 2 else ""


def finish(emu: Emulator, lake: Path, *extra: str, deadline_s: float = 300) -> dict:
    """Right after a crash, run workers until the queue is empty; return the first one's summary.

    Each polls through empty answers until every lease the dead worker held (or a long poll it
    left open could still take) has ended, so it lands the redeliveries too. On a loaded machine
    a worker can land a batch after its 3 s lease (not acknowledged, by design: it comes back),
    so workers run until the emulator holds nothing queued or leased, within a generous deadline,
    and every worker but the first must have had such a reason (an expired lease or a lost ack).
    ``extra`` options go to every worker (``--iceberg DB`` for the Iceberg sink).
    """
    stop = time.monotonic() + deadline_s
    first: dict | None = None
    while True:
        until = time.time() + LONG_POLL_SECONDS + LEASE_SECONDS + 0.5
        proc = run_worker(emu, lake, "--drain-until", f"{until:.3f}", *extra)
        assert proc.returncode == 0, proc.stderr[-5000:]
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        first = first or summary
        stats = emu.stats()
        if stats["queued"] == 0 and stats["leased"] == 0:
            return first
        assert summary["lease_expired"] + summary["ack_failed"] > 0, (stats, summary)
        assert time.monotonic() < stop, f"the queue still holds records after {deadline_s} s: {stats}"


def lake_glob(lake: Path) -> str:
    return f"{lake}/record_type=*/**/*.parquet"


def lake_rows(lake: Path) -> list[tuple[int, str]]:
    """(emulator_seq, _record_key) of every row, read the way the docs tell users to read."""
    # A connection of its own: the emulator calls this from several handler threads at once.
    with duckdb.connect() as con:
        return con.sql(
            f"SELECT emulator_seq, _record_key FROM read_parquet('{lake_glob(lake)}', "
            "hive_partitioning = true, union_by_name = true)"
        ).fetchall()


def ack_guard(emu: Emulator, lake: Path, violations: list[str]) -> None:
    """Veto (and record) any acknowledgement of a batch whose records are not all in the lake."""
    lock = threading.Lock()
    seen_files: set[Path] = set()
    landed: set[int] = set()

    def on_ack(batch_id: str, records: list[dict]) -> None:
        # Runs in the emulator before the ack is applied. Files are immutable once visible, so
        # only new ones are read: the check must not slow acks down enough to expire leases.
        with lock:
            try:
                for f in lake.rglob("*.parquet"):
                    if f not in seen_files:
                        landed.update(pq.read_table(f, columns=["emulator_seq"]).column(0).to_pylist())
                        seen_files.add(f)
            except Exception as exc:  # a lake that cannot be read at ack time is a violation too
                violations.append(f"{batch_id}: lake unreadable at ack time: {exc!r}")
                raise
            missing = [r["emulator_seq"] for r in records if r["emulator_seq"] not in landed]
        if missing:
            violations.append(f"{batch_id}: {len(missing)} records acknowledged before they landed")
            raise AssertionError("ack before write")

    emu.on_ack = on_ack


def audit(emu: Emulator, lake: Path, emitted: list[dict]) -> Counter[int]:
    """Assert the delivery guarantees over the lake; returns how often each seq is in the lake."""
    stats = emu.stats()
    assert stats["queued"] == 0 and stats["leased"] == 0, stats
    expected = {r["emulator_seq"] for r in emitted}
    assert stats["emitted"] == len(expected)

    # No half-written file is visible: every file a *.parquet glob finds reads whole.
    files = sorted(lake.rglob("*.parquet"))
    assert files
    for f in files:
        assert not f.name.startswith("."), f
        pq.read_table(f)

    rows = lake_rows(lake)
    in_lake = Counter(seq for seq, _ in rows)
    assert set(in_lake) == expected, (
        f"lost: {sorted(expected - set(in_lake))[:20]}, invented: {sorted(set(in_lake) - expected)[:20]}"
    )
    # The only duplicates are records the emulator really delivered more than once ...
    delivered = Counter(emu.delivered_seqs())
    too_many = {s: (n, delivered[s]) for s, n in in_lake.items() if n > delivered[s]}
    assert not too_many, f"more copies in the lake than deliveries (seq: (lake, delivered)): {too_many}"
    # ... every copy carries the key of the record's content ...
    keys: dict[int, set[str]] = defaultdict(set)
    for seq, key in rows:
        keys[seq].add(key)
    want = {r["emulator_seq"]: record_key(r) for r in emitted}
    wrong = {s: k for s, k in keys.items() if k != {want[s]}}
    assert not wrong, f"_record_key differs from the record's content key: {list(wrong.items())[:5]}"
    # ... and the documented query removes them.
    with duckdb.connect() as con:
        for sql in (DEDUP_SQL, DEDUP_SQL_QUALIFY):
            deduped = con.sql(sql.format(glob=lake_glob(lake)))
            assert "_record_key" in deduped.columns and "rn" not in deduped.columns
            seqs = [
                r[0]
                for r in con.sql(f"SELECT emulator_seq FROM ({sql.format(glob=lake_glob(lake))})").fetchall()
            ]
            assert sorted(seqs) == sorted(expected)

    # Every record acknowledged exactly once (a lost ack would leave it queued; a double ack
    # would mean the server accepted an expired id).
    acked = Counter(emu.acked_seqs())
    assert set(acked) == expected and max(acked.values()) == 1
    return in_lake


# -- the named dangerous points ------------------------------------------------------------------

#: (kill point, occurrence). 600 records of two types in batches of 50; a flush every 200 records
#: (4 batches) writes two files, one per record type.
CRASH_POINTS = {
    "after_get": 3,  # the third GET returned a batch
    "before_write": 1,  # the first flush built its tables
    "mid_write": 2,  # half of the second data file is on disk (the first is written concurrently)
    "before_rename": 2,  # the second data file is complete under its temporary name
    "after_write": 1,  # one file of the first flush is verified, the other not written
    "before_ack": 5,  # the second flush is verified, none of its acks sent
    "between_acks": 1,  # one ack of the first flush answered, the other three not sent
    "after_acks": 1,  # every ack of the first flush answered, its ledger entry not yet settled
}


def simple_records(n: int) -> list[dict]:
    """``n`` nested records of two types on one day: two files per flush keep the runs quick."""
    return [
        {
            "type": "telemetry" if seq % 3 else "event",
            "date": f"2026-11-25T10:{seq % 60:02d}:00Z",
            "asset": {"id": seq % 7, "name": f"truck {seq % 7}"},
            "location": {"lat": -33.9 + seq / 1e4, "lon": 18.4, "speed": seq % 90},
            "emulator_seq": seq,
        }
        for seq in range(1, n + 1)
    ]


@dataclass
class CrashRun:
    """What one kill-and-rerun scenario left behind, for the tests to audit."""

    emulator: Emulator
    lake: Path
    emitted: list[dict]
    crashed: subprocess.CompletedProcess[str]
    at_crash: dict
    summary: dict
    violations: list[str]


def crash_and_rerun(point: str, nth: int, lake: Path) -> CrashRun:
    """Kill a worker at ``point``, then run one to the end against the same emulator."""
    with Emulator(
        api_key="crash-key",
        lease_seconds=LEASE_SECONDS,
        long_poll_seconds=LONG_POLL_SECONDS,
        batch_size=50,
        seed=11,
    ) as emu:
        emitted = simple_records(600)
        emu.enqueue(emitted)
        violations: list[str] = []
        ack_guard(emu, lake, violations)
        crashed = run_worker(emu, lake, "--kill-at", point, "--kill-nth", str(nth))
        at_crash = emu.stats()
        summary = finish(emu, lake) if crashed.returncode == -9 else {}
    return CrashRun(emu, lake, emitted, crashed, at_crash, summary, violations)


@pytest.fixture(scope="module")
def crash_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CrashRun]:
    """Every scenario, run concurrently: they mostly wait for leases to end, so this saves minutes."""
    root = tmp_path_factory.mktemp("crash")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {p: pool.submit(crash_and_rerun, p, n, root / p / "lake") for p, n in CRASH_POINTS.items()}
        return {p: f.result() for p, f in futures.items()}


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_sigkill_at_a_dangerous_point_loses_nothing(crash_runs, point):
    run = crash_runs[point]
    detail = assert_killed_at(run.crashed, point)
    nth = CRASH_POINTS[point]
    if point == "mid_write":
        # The half-written bytes exist, under a name no *.parquet glob or reader matches.
        half = Path(detail)
        assert half.name.startswith(".") and not half.name.endswith(".parquet"), detail
        assert half.exists() and half.stat().st_size > 0
    if point == "before_rename":
        assert Path(detail).exists() and not Path(detail).name.endswith(".parquet")
    if point == "between_acks":
        assert run.at_crash["acked"] == 1, run.at_crash  # one batch of the flush acknowledged
    if point in ("after_get", "before_write", "mid_write"):
        assert run.at_crash["acked"] == 0, run.at_crash
    if point == "before_ack":
        assert run.at_crash["acked"] == nth - 1, run.at_crash

    assert run.summary["stopped"] == "empty"
    in_lake = audit(run.emulator, run.lake, run.emitted)
    assert run.violations == []
    if point != "after_acks":
        assert run.emulator.stats()["redelivered"] > 0, "the crash left leased batches that had to come back"
    # Exactly once as landed: whatever was visible when the process died, each record is one row,
    # with no compaction and no dedupe query (the flush ledger dropped the redelivered copies).
    assert max(in_lake.values()) == 1, {s: n for s, n in in_lake.items() if n > 1}
    if point in ("after_write", "before_ack", "between_acks"):
        assert run.summary["deduped"] > 0, run.summary  # the crashed flush's rows came back and were dropped


def test_sigkill_at_random_times_then_a_full_run_loses_nothing(tmp_path):
    """Three workers killed at random moments one after another, then one run to the end."""
    lake = tmp_path / "lake"
    rng = random.Random(20261126)
    with Emulator(
        api_key="crash-key",
        lease_seconds=LEASE_SECONDS,
        long_poll_seconds=LONG_POLL_SECONDS,
        batch_size=40,
        latency_ms=15,
        seed=12,
    ) as emu:
        emitted = emu.generate(1500)
        violations: list[str] = []
        ack_guard(emu, lake, violations)
        delays = [rng.uniform(0.2, 1.6) for _ in range(3)]
        kills = 0
        for delay in delays:
            proc = run_worker(
                emu, lake, "--kill-at", "random", "--kill-delay", f"{delay:.3f}", "--flush-records", "160"
            )
            if proc.returncode == 0:  # the run ended before the timer: nothing to kill this time
                continue
            assert_killed_at(proc, "random")
            kills += 1
            emitted += emu.generate(100)  # new data keeps arriving between runs
        # Without a kill this would only test an ordinary drain.
        assert kills >= 1, "no worker was killed: the runs ended before their timers"
        finish(emu, lake)
        in_lake = audit(emu, lake, emitted)
        assert violations == []
        assert max(in_lake.values()) == 1  # exactly once as landed


def test_the_documented_dedup_queries_are_the_ones_tested_here():
    """docs/delivery-semantics.md shows users the queries audit() runs; keep them in step."""
    doc = " ".join((REPO / "docs" / "delivery-semantics.md").read_text().split())
    for sql in (DEDUP_SQL, DEDUP_SQL_QUALIFY):
        body = " ".join(sql.split()).replace("'{glob}'", "'/data/lake/ktexport/record_type=*/**/*.parquet'")
        assert body in doc, body
