"""Smoke run of the drain benchmark with a few thousand records: it still runs and reports every figure.

No timing assertions (a shared CI machine is noisy): the shape of the JSON, and that every case,
the drain above all, landed and acknowledged every record it was given.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
RECORDS = 3000


def run_benchmark(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m <args>`` from the repository root; fails the test with its stderr unless it exits 0."""
    proc = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=540
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "latest.json"
    proc = run_benchmark(
        *("benchmarks.drain_bench", "--records", str(RECORDS), "--skip-1m"),
        *("--latency-ms", "20", "--latency-records", str(RECORDS), "--micro-records", "2000"),
        *("--repeat", "2", "--out", str(out)),
    )
    printed = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == printed, "the printed JSON and the written file differ"
    return printed


def test_report_has_every_figure_ratio_and_target(report: dict) -> None:
    assert {"machine", "settings", "micro", "figures", "ratios", "targets", "runs"} <= report.keys()
    assert report["machine"]["nproc"] >= 1 and report["machine"]["versions"]["pyarrow"]
    figures = report["figures"]
    for case in "abc":
        assert figures["cpu_s_per_100k"][case] > 0
        assert figures["records_per_s"]["0ms"][case] > 0
        assert figures["records_per_s"]["20ms"][case] > 0
    assert figures["peak_rss_mb"]["empty"] > 0 and figures["peak_rss_mb"]["n"] > 0
    assert figures["peak_rss_mb"]["big"] is None  # --skip-1m
    assert set(report["ratios"]) >= {
        "cpu_c_over_a",
        "cpu_b_over_c",
        "wall_c_over_a_at_20ms",
        "rss_big_over_n",
    }
    # Interleaved repeats: each 0 ms figure is one of its samples, and a ratio per repeat is shown.
    for case in "abc":
        run = report["runs"][f"{case}_0ms"]
        assert len(run["cpu_s_per_100k_samples"]) == 2
        assert run["cpu_s_per_100k"] in run["cpu_s_per_100k_samples"]
    assert len(report["ratios"]["cpu_c_over_a_per_repeat"]) == 2
    assert report["ratios"]["cpu_c_over_a_bound_estimate"] > 0
    assert report["ratios"]["cpu_c_over_a_at_20ms"] > 0
    for name, target in report["targets"].items():
        assert "met" in target, name
        assert target["met"] in (True, False, None), name
    assert report["targets"]["rss_big_over_n_max_1.2"]["met"] is None  # not measured, not claimed
    assert report["micro"]["fastest_decoder"] in ("msgspec", "orjson", "json")


def test_every_case_drained_the_whole_queue(report: dict) -> None:
    runs = report["runs"]
    assert {"a_0ms", "b_0ms", "c_0ms", "a_20ms", "b_20ms", "c_20ms", "c_empty"} <= runs.keys()
    for name, run in runs.items():
        expected = 0 if name == "c_empty" else RECORDS
        assert run["records"] == expected, name
        assert run["emulator"]["acked_records"] == expected, name
        assert run["emulator"]["queued"] == 0 and run["emulator"]["leased"] == 0, name


def test_the_drain_landed_every_record_once_and_acked_after_writing(report: dict) -> None:
    for name in ("c_0ms", "c_20ms"):
        checks = report["runs"][name]["checks"]
        assert checks["landed_rows"] == RECORDS, name
        assert checks["distinct_seqs"] == RECORDS, name
        assert checks["early_acks"] == 0, name
        assert report["runs"][name]["drain"]["ack_failed"] == 0, name
    assert report["runs"]["b_0ms"]["checks"]["landed_rows"] == RECORDS
    assert report["targets"]["semantics_ack_after_write_within_lease"]["met"] is True


@pytest.fixture(scope="module")
def shapes_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("shapes") / "shapes.json"
    proc = run_benchmark(
        *("benchmarks.shapes", "--records", "1000", "--repeat", "1"),
        *("--shapes", "small,trips100,one_type,types50", "--scale-out", "--scale-records", "2000"),
        *("--latency-ms", "20", "--out", str(out)),
    )
    assert "| small |" in proc.stderr and "| 4 |" in proc.stderr  # the printed table
    assert "types50 / one_type, drain CPU per record: **" in proc.stderr  # issue 24's per-file figure
    return json.loads(proc.stdout)


def test_every_shape_is_drained_whole_and_compared_with_its_floor(shapes_report: dict) -> None:
    rows = shapes_report["shapes"]
    assert list(rows) == ["small", "trips100", "one_type", "types50"]
    for name, row in rows.items():
        assert row["records"] == shapes_report["settings"]["records_by_shape"][name], name
        assert row["semantics_ok"] is True, name
        assert row["drain_over_floor"] > 0 and row["drain_peak_rss_mb"] > 0, name
    assert rows["trips100"]["mean_record_bytes"] > 5 * rows["small"]["mean_record_bytes"]
    assert rows["types50"]["drain_files"] >= 50  # one file per record type at least


def test_the_scale_out_curve_lands_everything_once(shapes_report: dict) -> None:
    curve = shapes_report["scale_out"]
    assert [p["drains"] for p in curve] == [1, 2, 4]
    for point in curve:
        assert point["records"] == 2000 and point["landed_rows"] == 2000, point
        assert point["duplicate_rows"] == 0 and point["early_acks"] == 0, point
        assert point["records_per_s"] > 0, point


@pytest.fixture(scope="module")
def versus_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("versus") / "versus.json"
    proc = run_benchmark(
        *("benchmarks.versus", "--ref", "HEAD", "--shape", "small", "--shape", "trips100"),
        *("--records", "1000", "--repeat", "2", "--out", str(out)),
    )
    assert "| small |" in proc.stderr and "| trips100 |" in proc.stderr  # the printed table
    printed = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == printed, "the printed JSON and the written file differ"
    return printed


def test_versus_runs_the_exported_commit_against_the_tree_interleaved(versus_report: dict) -> None:
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert versus_report["old"]["commit"] == head and versus_report["new"]["commit"] == head
    assert versus_report["new"]["code"].startswith("working tree")
    rows = versus_report["shapes"]
    assert list(rows) == ["small", "trips100"]
    for name, row in rows.items():
        assert row["records"] == versus_report["settings"]["records_by_shape"][name], name
        assert row["landed_once"] == {"old": True, "new": True}, name
        assert len(row["old_samples"]) == len(row["new_samples"]) == 2, name
        assert row["old_cpu_s_per_100k"] in row["old_samples"], name
        assert len(row["new_over_old_per_repeat"]) == 2 and row["new_over_old"] > 0, name
        assert row["old_peak_rss_mb"] > 0 and row["new_peak_rss_mb"] > 0, name
        assert row["old_adapted"] == [], name  # HEAD's own layout: nothing to adapt
