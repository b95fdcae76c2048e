"""The ``ktexport`` command as users run it: a subprocess against the emulator over HTTP, landing in
a local lake, in moto's S3 server and in Iceberg tables, read back with DuckDB, pyarrow and
pyiceberg (docs/cli.md).

The emulator's ``on_ack`` guard vetoes (and records) any DELETE that comes before the batch's
records are in the destination.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.testing.emulator import Emulator
from tests.integration.conftest import S3_KEY, s3_filesystem
from tests.integration.test_poison import guard_acks, iceberg_view, landed_seqs, parquet_view
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

KEY = "cli-it-key-0123456789"
REPO = Path(__file__).resolve().parents[2]


def command(*argv: str, importtime: bool = False) -> list[str]:
    """``python -m airflow_provider_ktexport ...``, what the ``ktexport`` script runs."""
    return [
        sys.executable,
        *(["-X", "importtime"] if importtime else []),
        "-m",
        "airflow_provider_ktexport",
        *argv,
    ]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KTEXPORT_KEY"))}
    return {**env, "KTEXPORT_KEY": KEY, "PYTHONUNBUFFERED": "1", **extra}


def ktexport(
    *argv: str, env: dict[str, str] | None = None, importtime: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*argv, importtime=importtime),
        env=env or environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def airflow_imports(importtime_stderr: str) -> list[str]:
    """Modules named ``airflow`` or ``airflow.*`` in ``-X importtime`` output."""
    return re.findall(r"^import time:.*\|\s+(airflow(?:\.\S+)?)\s*$", importtime_stderr, flags=re.M)


def drain_args(emu: Emulator, *destination: str) -> list[str]:
    return ["drain", "--url", emu.url, *destination, "--long-poll-seconds", "1", "--max-runtime", "120"]


def assert_drained_cleanly(proc: subprocess.CompletedProcess[str], emu: Emulator, records: int) -> dict:
    """Exit 0, the summary on stdout, progress on stderr, the queue empty, no key anywhere, and no
    connection the pool had to discard."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["records"] == records and summary["stopped"] == "empty"
    assert summary["acked"] == summary["batches"] > 1
    assert "Flush (" in proc.stderr and "Drain finished (empty)" in proc.stderr
    assert "Connection pool is full" not in proc.stderr
    assert KEY not in proc.stdout + proc.stderr
    stats = emu.stats()
    assert stats["queued"] == 0 and stats["leased"] == 0 and stats["ack_vetoed"] == 0, stats
    return summary


def test_drains_the_emulator_into_a_local_lake(tmp_path):
    lake = tmp_path / "lake"
    violations: list[str] = []
    # Small batches, one flush: 200 acknowledgements go out 16 at a time, which a default-sized
    # HTTP pool (8) answers with "Connection pool is full" warnings.
    with Emulator(api_key=KEY, long_poll_seconds=1, batch_size=10, seed=21) as emu:
        emu.generate(2000)
        guard_acks(emu, parquet_view(lake), violations)
        proc = ktexport(*drain_args(emu, "--dest", lake.as_uri()), importtime=True)
        summary = assert_drained_cleanly(proc, emu, 2000)
    assert violations == []
    assert sorted(landed_seqs(lake)) == list(range(1, 2001))  # every record served, once
    assert summary["destination"] == lake.as_uri() and summary["files"]
    assert airflow_imports(proc.stderr) == []  # the whole drain ran without importing Airflow


def test_drains_the_emulator_into_s3(s3_endpoint, s3_bucket):
    env = environment(AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_KEY, AWS_DEFAULT_REGION="us-east-1")
    dest = f"s3://{s3_bucket}/lake"
    with Emulator(api_key=KEY, long_poll_seconds=1, batch_size=100, seed=22) as emu:
        emu.generate(1500)
        proc = ktexport(
            *drain_args(emu, "--dest", dest, "--storage-option", f"endpoint_url={s3_endpoint}"),
            "--flush-records",
            "500",
            env=env,
        )
        summary = assert_drained_cleanly(proc, emu, 1500)
        served = sorted(set(emu.delivered_seqs()))
    assert summary["destination"] == dest
    fs = s3_filesystem(s3_endpoint)
    files = fs.glob(f"{s3_bucket}/lake/record_type=*/**/*.parquet")
    assert sorted(f"s3://{f}" for f in files) == sorted(summary["files"])
    seqs = [
        s
        for f in files
        for s in pq.read_table(f, filesystem=fs, columns=["emulator_seq"])["emulator_seq"].to_pylist()
    ]
    assert sorted(seqs) == served == list(range(1, 1501))


def test_drains_the_emulator_into_iceberg_tables(tmp_path):
    pytest.importorskip("pyiceberg")
    from airflow_provider_ktexport.lake.iceberg import load_catalog

    props = {
        "type": "sql",
        "uri": f"sqlite:///{tmp_path / 'catalog.db'}",
        "warehouse": (tmp_path / "warehouse").as_uri(),
    }
    catalog_args = ["--iceberg-catalog", "clicat"]
    for key, value in props.items():
        catalog_args += ["--iceberg-property", f"{key}={value}"]
    violations: list[str] = []
    with Emulator(api_key=KEY, long_poll_seconds=1, batch_size=100, seed=23) as emu:
        emu.generate(800)
        # The catalog is created by the command's first open; the guard opens its own view lazily.
        view = _lazy(lambda: iceberg_view(load_catalog("clicat", props)))
        guard_acks(emu, view, violations)
        proc = ktexport(*drain_args(emu, *catalog_args), "--flush-records", "300")
        summary = assert_drained_cleanly(proc, emu, 800)
    assert violations == []
    assert summary["destination"] == "iceberg://clicat/ktexport" and summary["landed"]
    seqs, rejects = view()
    assert sorted(seqs) == list(range(1, 801)) and rejects == []


def _lazy(
    make: Callable[[], Callable[[], tuple[list[int], list[str]]]],
) -> Callable[[], tuple[list[int], list[str]]]:
    made: list[Callable[[], tuple[list[int], list[str]]]] = []

    def view() -> tuple[list[int], list[str]]:
        if not made:
            made.append(make())
        return made[0]()

    return view


def test_probe_accepts_the_right_key_without_leasing(tmp_path):
    with Emulator(api_key=KEY, long_poll_seconds=1, seed=24) as emu:
        emu.generate(50)
        proc = ktexport("probe", "--url", emu.url, "--dest", str(tmp_path / "lake"))
        stats = emu.stats()
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["url"] == emu.url
    assert report["destination"] == (tmp_path / "lake").as_uri()
    assert stats["served"] == 0 and stats["leased"] == 0 and stats["queued"] == 50
    assert list((tmp_path / "lake").rglob("*.probe")) == []  # the destination probe cleaned up
    assert KEY not in proc.stdout + proc.stderr


def test_probe_with_a_wrong_key_fails_fast_and_never_shows_a_key():
    wrong = "wrong-key-abcdefgh-0123"
    with Emulator(api_key=KEY, long_poll_seconds=1, seed=25) as emu:
        emu.generate(50)
        started = time.monotonic()
        proc = ktexport("probe", "--url", emu.url, env=environment(KTEXPORT_KEY=wrong))
        elapsed = time.monotonic() - started
        stats = emu.stats()
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "401" in proc.stderr and "refused" in proc.stderr.lower()
    # Not retried (a 401 is final): one request, the interpreter's start-up the rest.
    assert stats["unauthorized"] == 1 and stats["served"] == 0
    assert elapsed < 60, elapsed
    assert wrong not in proc.stderr and KEY not in proc.stderr


def test_ctrl_c_stops_cleanly_and_acknowledges_nothing_unlanded(tmp_path):
    lake = tmp_path / "lake"
    violations: list[str] = []
    # Records keep arriving: without a stop the drain would poll until --max-runtime.
    with Emulator(api_key=KEY, long_poll_seconds=1, batch_size=20, rate=300, seed=26) as emu:
        guard_acks(emu, parquet_view(lake), violations)
        proc = subprocess.Popen(
            command(*drain_args(emu, "--dest", str(lake)), "--keep-polling", "--flush-seconds", "2"),
            env=environment(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: emu.stats()["acked"] >= 3, seconds=90)  # a few flushes acknowledged
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=600)
        finally:
            proc.kill()
        acked = set(emu.acked_seqs())
    assert proc.returncode == 130, err[-4000:]
    summary = json.loads(out)
    assert summary["stopped"] == "stopped" and summary["acked"] >= 3
    assert "SIGINT: no new leases" in err
    assert violations == []
    assert acked <= set(landed_seqs(lake))  # nothing acknowledged that is not in the lake


@pytest.mark.parametrize("mistake", ["wrong key", "missing bucket"])
def test_a_drain_misconfigured_exits_2_naming_the_cause_and_leases_nothing(mistake, s3_endpoint, tmp_path):
    env = environment(AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_KEY, AWS_DEFAULT_REGION="us-east-1")
    if mistake == "wrong key":
        env["KTEXPORT_KEY"] = "wrong-key-abcdefgh-0123"
        destination = ["--dest", str(tmp_path / "lake")]
    else:
        dest = f"s3://ktexport-no-such-bucket-{os.getpid()}/lake"
        destination = ["--dest", dest, "--storage-option", f"endpoint_url={s3_endpoint}"]
    with Emulator(api_key=KEY, long_poll_seconds=1, seed=27) as emu:
        emu.generate(100)
        proc = ktexport(*drain_args(emu, *destination), env=env)
        stats = emu.stats()
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert proc.stdout == "" and stats["leased"] == 0 and stats["queued"] == 100
    says = "401" if mistake == "wrong key" else "does not take files"
    assert says in proc.stderr and env["KTEXPORT_KEY"] not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("ktexport drain: error: ")
