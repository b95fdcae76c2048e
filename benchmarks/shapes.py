"""The drain on every record shape against the floor, and the scale-out curve (issue 24), one table.

Run from the repository root::

    .venv/bin/python -m benchmarks.shapes --records 20000 --repeat 3 [--dlt] [--scale-out]

For each shape of ``benchmarks._common.SHAPES`` (small, mix, trips100, one_type, types50), the
floor (a) and the drain (c) each run ``--repeat`` times, interleaved (a, c of every shape, then
again), each in a fresh child process against a fresh emulator; each figure is the median of its
samples and the ratio is taken between the medians of one run. Peak RSS is each child's own
``VmHWM``. ``--dlt`` adds case (d), a dlt pipeline on the mix, run in a side venv built with uv
under ``.bench-venv/`` (skipped with a note when it cannot be built). ``--scale-out`` drains one
queue with 1, 2 and 4 drain processes at once, the emulator adding ``--latency-ms`` (default 50)
to every request, and reports records/s, duplicates and expired leases.

The document goes to stdout and ``benchmarks/results/shapes.json``; the table to stderr (and
``--table PATH``). Figures, never assertions: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import SHAPES
from benchmarks.cases import lake_check
from benchmarks.drain_bench import (
    DLT_VENV,
    REPO,
    _EmulatorProcess,
    _machine,
    _run_case,
    child_command,
)

log = logging.getLogger("benchmarks.shapes")

DEFAULT_OUT = REPO / "benchmarks" / "results" / "shapes.json"
#: The order of the table: the issue's.
SHAPE_ORDER = ("small", "mix", "trips100", "one_type", "types50")
#: Records of a shape relative to ``--records``: a 100-point trip is 12 times a mix record.
SHAPE_SCALE = {"trips100": 0.1}
DLT_REQUIREMENT = "dlt[parquet,filesystem]==1.31.*"
SCALE_OUT = (1, 2, 4)
#: Records of the scale-out queue: every drain of 4 flushes many times (a short queue measured
#: each drain holding its whole share until one flush at the end, and the curve fell at 4 drains).
SCALE_RECORDS = 400_000
#: ``flush_records`` of each scale-out drain: 10 batches, so a drain flushes as it would on a
#: long queue instead of once at the end.
SCALE_FLUSH_RECORDS = 5_000


def ensure_dlt_venv() -> str | None:
    """Build ``.bench-venv`` with uv if needed; None when ready, else why it is not (a note)."""
    python = DLT_VENV / "bin" / "python"
    check = [str(python), "-c", "import dlt, requests, msgspec, pyarrow"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return None
    uv = shutil.which("uv") or str(REPO / ".tools" / "venv" / "bin" / "uv")
    steps = [] if python.exists() else [[uv, "venv", "-q", str(DLT_VENV), "--python", sys.executable]]
    steps.append(
        [uv, "pip", "install", "-q", "--python", str(python), DLT_REQUIREMENT, "requests", "msgspec"]
    )
    for step in steps:
        try:
            proc = subprocess.run(step, cwd=REPO, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"dlt case skipped: {' '.join(step[:2])} failed ({exc})"
        if proc.returncode != 0:
            return f"dlt case skipped: {' '.join(step[:3])} failed: {proc.stderr.strip()[-300:]}"
    return None


def _records_of(shape: str, records: int) -> int:
    return max(1000, int(records * SHAPE_SCALE.get(shape, 1.0)))


def _median_run(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median CPU, with every sample's CPU per 100k beside it."""
    ordered = sorted(samples, key=lambda r: r["cpu_s_per_100k"])
    median = ordered[(len(ordered) - 1) // 2]
    return {**median, "cpu_s_per_100k_samples": [r["cpu_s_per_100k"] for r in samples]}


def _shape_row(shape: str, a: dict[str, Any], c: dict[str, Any], mean_bytes: int) -> dict[str, Any]:
    ratio = round(c["cpu_s_per_100k"] / a["cpu_s_per_100k"], 3) if a["cpu_s_per_100k"] else None
    checks = c.get("checks", {})
    return {
        "records": c["records"],
        "mean_record_bytes": mean_bytes,
        "floor_cpu_s_per_100k": a["cpu_s_per_100k"],
        "floor_samples": a["cpu_s_per_100k_samples"],
        "drain_cpu_s_per_100k": c["cpu_s_per_100k"],
        "drain_samples": c["cpu_s_per_100k_samples"],
        "drain_over_floor": ratio,
        "ratio_per_repeat": [
            round(cs / fs, 3) if fs else None
            for fs, cs in zip(a["cpu_s_per_100k_samples"], c["cpu_s_per_100k_samples"], strict=True)
        ],
        "floor_peak_rss_mb": a["peak_rss_mb"],
        "drain_peak_rss_mb": c["peak_rss_mb"],
        "drain_cpu_split_s": c.get("cpu_split_s"),
        "drain_files": c.get("drain", {}).get("files"),
        "semantics_ok": checks.get("distinct_seqs") == c["records"] and checks.get("early_acks") == 0,
    }


def _mean_bytes(shape: str) -> int:
    """Mean JSON size of the shape's records (the emulator's compact encoding)."""
    from airflow_provider_ktexport.testing.records import RecordGenerator

    records = RecordGenerator(0, **SHAPES[shape]).records(1, 500)
    return round(sum(len(json.dumps(r, separators=(",", ":")).encode()) for r in records) / len(records))


def run_shapes(
    shapes: list[str], records: int, repeat: int, *, dlt: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every shape's floor and drain (and dlt on the mix), interleaved, medians of ``repeat``."""
    cases = {shape: ["a", "c"] + (["d"] if dlt and shape == "mix" else []) for shape in shapes}
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(repeat):
        for shape in shapes:
            for case in cases[shape]:
                run = _run_case(case, _records_of(shape, records), 0, decoder="msgspec", shape=shape)
                samples.setdefault((shape, case), []).append(run)
    rows = {}
    for shape in shapes:
        a, c = _median_run(samples[(shape, "a")]), _median_run(samples[(shape, "c")])
        rows[shape] = _shape_row(shape, a, c, _mean_bytes(shape))
    dlt_row = None
    if ("mix", "d") in samples:
        d = _median_run(samples[("mix", "d")])
        a = rows["mix"]
        dlt_row = {
            "cpu_s_per_100k": d["cpu_s_per_100k"],
            "samples": d["cpu_s_per_100k_samples"],
            "over_floor": round(d["cpu_s_per_100k"] / a["floor_cpu_s_per_100k"], 3),
            "over_drain": round(d["cpu_s_per_100k"] / a["drain_cpu_s_per_100k"], 3),
            "peak_rss_mb": d["peak_rss_mb"],
            "distinct_seqs": d["checks"]["distinct_seqs"],
            "records": d["records"],
            "dlt_version": d.get("dlt_version"),
        }
    return rows, dlt_row


def _scale_point(drains: int, records: int, latency_ms: float, flush_records: int) -> dict[str, Any]:
    """``drains`` drain processes on one queue and one lake, started together, each flushing every
    ``flush_records``."""
    lake = Path(tempfile.mkdtemp(prefix="ktexport-bench-scale-"))
    try:
        with _EmulatorProcess(records, latency_ms, "mix").running() as emu:
            start_at = time.time() + 8.0  # after every child's imports (~2-5 s of CPU each here)
            procs = [
                subprocess.Popen(
                    [
                        *child_command("c", emu.url, lake),
                        *("--start-at", f"{start_at:.3f}", "--flush-records", str(flush_records)),
                    ],
                    cwd=REPO,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for _ in range(drains)
            ]
            outs = []
            for proc in procs:
                stdout, stderr = proc.communicate()
                if proc.returncode != 0 or not stdout.strip():
                    raise RuntimeError(f"a scale-out drain failed (exit {proc.returncode}): {stderr[-3000:]}")
                outs.append(json.loads(stdout.strip().splitlines()[-1]))
            stats = emu.stats()
        landed = lake_check(lake)
    finally:
        shutil.rmtree(lake, ignore_errors=True)
    began = min(o["started_at_epoch"] for o in outs)
    wall = max(o["last_ack_epoch"] for o in outs) - began
    got = sum(o["records"] for o in outs)
    return {
        "drains": drains,
        "records": got,
        "wall_s": round(wall, 3),
        "records_per_s": round(got / wall) if wall > 0 else None,
        "landed_rows": landed["landed_rows"],
        "duplicate_rows": landed["landed_rows"] - landed["distinct_seqs"],
        "expired_leases": stats.get("expired"),
        "redelivered": stats.get("redelivered"),
        # The emulator is one Python process: near one core, it is what caps the curve.
        "emulator_cores_busy": round(stats["cpu_s"] / wall, 2) if "cpu_s" in stats and wall > 0 else None,
        "early_acks": sum(o["checks"]["early_acks"] for o in outs),
        "per_drain_records": [o["records"] for o in outs],
        "flushes": sum(o["drain"].get("flushes", 0) for o in outs),
        "cpu_s": round(sum(o["cpu_s"] for o in outs), 3),
        # Cores the drains kept busy: near the machine's count, more drains cannot go faster.
        "cores_busy": round(sum(o["cpu_s"] for o in outs) / wall, 2) if wall > 0 else None,
    }


def run_scale_out(records: int, latency_ms: float, flush_records: int) -> list[dict[str, Any]]:
    """The curve: 1, 2 and 4 drains on one queue, each request ``latency_ms`` slower."""
    curve = []
    for drains in SCALE_OUT:
        point = _scale_point(drains, records, latency_ms, flush_records)
        log.warning(
            "scale-out: %d drain(s), %s records/s, %d duplicate rows, %s expired leases",
            drains,
            point["records_per_s"],
            point["duplicate_rows"],
            point["expired_leases"],
        )
        curve.append(point)
    one = curve[0]["records_per_s"] or 0
    for point in curve:
        point["speedup"] = round(point["records_per_s"] / one, 2) if one and point["records_per_s"] else None
    return curve


def table(report: dict[str, Any]) -> str:
    """The report as Markdown tables (what docs/performance.md quotes)."""
    lines = (
        []
        if not report["shapes"]
        else [
            "| shape | bytes | floor CPU s/100k | drain CPU s/100k | drain / floor (per repeat) "
            "| drain peak RSS | floor peak RSS |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    )
    for shape, row in report["shapes"].items():
        per = ", ".join(f"{r:.2f}" for r in row["ratio_per_repeat"] if r is not None)
        lines.append(
            f"| {shape} | {row['mean_record_bytes']:,} | {row['floor_cpu_s_per_100k']:.2f} "
            f"| {row['drain_cpu_s_per_100k']:.2f} | **{row['drain_over_floor']:.2f}** ({per}) "
            f"| {row['drain_peak_rss_mb']:.0f} MB | {row['floor_peak_rss_mb']:.0f} MB |"
        )
    many, one = report["shapes"].get("types50"), report["shapes"].get("one_type")
    if many and one:
        # Issue 24's per-file target: CPU per record with 50 record types against one type.
        per = ", ".join(
            f"{m / o:.2f}"
            for m, o in zip(many["drain_samples"], one["drain_samples"], strict=True)
            if m and o
        )
        ratio = many["drain_cpu_s_per_100k"] / one["drain_cpu_s_per_100k"]
        lines += ["", f"types50 / one_type, drain CPU per record: **{ratio:.2f}** ({per})"]
    dlt = report.get("dlt")
    if isinstance(dlt, dict):
        lines += [
            "",
            "| mix | CPU s/100k | vs floor | vs drain | peak RSS |",
            "| --- | ---: | ---: | ---: | ---: |",
            f"| dlt {dlt['dlt_version']} (filesystem, Parquet) | {dlt['cpu_s_per_100k']:.2f} "
            f"| {dlt['over_floor']:.2f} | {dlt['over_drain']:.2f} | {dlt['peak_rss_mb']:.0f} MB |",
        ]
    elif dlt:
        lines += ["", f"dlt: {dlt}"]
    curve = report.get("scale_out")
    if curve:
        lines += [
            "",
            f"| drains ({report['settings']['latency_ms']:g} ms per request) | records/s | speed-up "
            "| cores busy (emulator) | duplicate rows | expired leases | flushes | records per drain |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for p in curve:
            lines.append(
                f"| {p['drains']} | {p['records_per_s']:,} | {p['speedup']} "
                f"| {p['cores_busy']} ({p['emulator_cores_busy']}) "
                f"| {p['duplicate_rows']} | {p['expired_leases']} | {p['flushes']} "
                f"| {', '.join(map(str, p['per_drain_records']))} |"
            )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.shapes", description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=20_000, help="records per case (trips100: a tenth)")
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs of each case; figures are medians")
    p.add_argument(
        "--shapes", default=",".join(SHAPE_ORDER), help=f"comma-separated (default {','.join(SHAPE_ORDER)})"
    )
    p.add_argument("--dlt", action="store_true", help=f"also dlt on the mix ({DLT_REQUIREMENT}, side venv)")
    p.add_argument("--scale-out", action="store_true", help="also 1, 2 and 4 drains on one queue")
    p.add_argument(
        "--scale-records",
        type=int,
        default=SCALE_RECORDS,
        help=f"queue of each scale-out point ({SCALE_RECORDS})",
    )
    p.add_argument(
        "--scale-flush-records",
        type=int,
        default=SCALE_FLUSH_RECORDS,
        help=f"flush_records of each scale-out drain (default {SCALE_FLUSH_RECORDS})",
    )
    p.add_argument("--latency-ms", type=float, default=50.0, help="latency of the scale-out (default 50)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    p.add_argument("--table", type=Path, help="also write the Markdown table here")
    args = p.parse_args(argv)
    args.shape_list = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = sorted(set(args.shape_list) - set(SHAPES))
    if unknown or not (args.shape_list or args.scale_out):
        p.error(f"unknown shape(s) {unknown}: choose among {', '.join(SHAPES)} (none: with --scale-out)")
    if args.records < 1 or args.repeat < 1:
        p.error("--records and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the sweep (and the optional legs), print the JSON and the table."""
    args = _parse(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.shapes", *(argv if argv is not None else sys.argv[1:])]),
        "machine": _machine(),
        "settings": {
            "records": args.records,
            "repeat": args.repeat,
            "latency_ms": args.latency_ms,
            "scale_records": args.scale_records,
            "scale_flush_records": args.scale_flush_records,
            "records_by_shape": {s: _records_of(s, args.records) for s in args.shape_list},
        },
    }
    dlt_note = ensure_dlt_venv() if args.dlt else None
    report["shapes"], dlt_row = run_shapes(
        args.shape_list, args.records, args.repeat, dlt=args.dlt and dlt_note is None
    )
    if args.dlt:
        report["dlt"] = dlt_row if dlt_note is None else dlt_note
    if args.scale_out:
        report["scale_out"] = run_scale_out(args.scale_records, args.latency_ms, args.scale_flush_records)
    publish(report, started, args.out, table(report), args.table)
    return 0


def publish(
    report: dict[str, Any], started: float, out: Path, rendered: str, table_path: Path | None
) -> None:
    """Close ``report`` (load at the end, duration), write its JSON to ``out`` and stdout, and its
    Markdown table to stderr (and ``table_path``)."""
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["duration_s"] = round(time.monotonic() - started, 1)
    text = json.dumps(report, indent=2)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    if table_path is not None:
        table_path.write_text(rendered + "\n")
    print(rendered, file=sys.stderr)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
