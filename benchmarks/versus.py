"""The drain of an older commit against the drain of this tree, in one run, interleaved (issue 18's figure).

Run from the repository root::

    .venv/bin/python -m benchmarks.versus --ref 26c9c0b --shape trips100 --shape mix --records 100000 --repeat 3

Figures measured at different times on this shared machine move by 20-40 % (docs/performance.md),
so a "before" taken last week says little against an "after" taken today. This runs both in the
same run: the package at ``--ref`` is exported with ``git archive`` into a temporary folder (never
a worktree of the repository: other worktrees are other people's), and for every repeat and shape
the old drain and then the new one (``--against REF``, or by default this working tree) each drain
a fresh emulator in a fresh child process: A B A B ... Each figure is the median of its samples,
and the ratio new/old is taken between the medians of this one run (and per repeat beside it).

What each side runs is ``benchmarks.cases``' drain case (c), unchanged: default ``DrainConfig`` of
that side's code, CPU of the child's drain loop (``getrusage``), peak RSS (``VmHWM``), the ack-after-
write check, and the lake read back. The emulator is always this tree's, so both sides get the
identical byte stream from the current record generator. The child of the old side runs with the
exported folder first on ``PYTHONPATH`` (and as its working directory); it reports the folder its
package came from and the parent refuses a run whose package came from anywhere else.

The document goes to stdout and ``benchmarks/results/versus.json``, the Markdown table to stderr
(and ``--table PATH``). Figures, never assertions.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import SHAPES
from benchmarks.drain_bench import REPO, _EmulatorProcess, _machine, run_child_process
from benchmarks.shapes import _mean_bytes, _median_run, _records_of, publish

log = logging.getLogger("benchmarks.versus")

DEFAULT_OUT = REPO / "benchmarks" / "results" / "versus.json"
PACKAGE = "airflow_provider_ktexport"
DEFAULT_SHAPES = ("trips100", "mix")


#: Arrow's start-up pool setting (the provider sets it on import: airflow_provider_ktexport/_arrow_env.py).
ARROW_POOL_VAR = "ARROW_DEFAULT_MEMORY_POOL"


def _pool_chosen_here() -> bool:
    """Whether this process's import of the package set ``ARROW_POOL_VAR`` (not the user).

    Imported here, not at the top: the old side's child runs this module against a tree that may
    not have ``_arrow_env``."""
    from airflow_provider_ktexport._arrow_env import set_by_provider

    return set_by_provider()


@dataclass(frozen=True)
class Side:
    """One code under test: where its package is imported from, and which commit it is."""

    name: str  # "old" or "new"
    root: Path  # the folder holding the package (first on the child's PYTHONPATH)
    commit: str
    describe: str
    #: Set for this side's children only (``--new-env``), on top of the inherited environment.
    extra_env: tuple[tuple[str, str], ...] = ()

    def env(self) -> dict[str, str]:
        """The child's environment: this side's package first, then the repository for ``benchmarks``.

        Without the Arrow pool this process's import of the package chose (``_arrow_env``): each
        side's own package decides in its child, as shipped (a value the user set is kept)."""
        inherited = dict(os.environ)
        if _pool_chosen_here():
            inherited.pop(ARROW_POOL_VAR, None)
        return {
            **inherited,
            **dict(self.extra_env),
            "PYTHONPATH": os.pathsep.join([str(self.root), str(REPO)]),
        }

    def check_package(self, package_dir: str) -> None:
        """Refuse a run whose package was not imported from this side's folder."""
        expected = (self.root / PACKAGE).resolve()
        if Path(package_dir).resolve() != expected:
            raise RuntimeError(
                f"the {self.name} drain imported {PACKAGE} from {package_dir}, not from {expected}: "
                "its figures would not be of the code asked for"
            )


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def resolve(ref: str) -> str:
    """The full hash of ``ref``'s commit; exits naming the ref when git does not know it."""
    proc = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(
            f"{ref!r} is no commit of {REPO}: pass a hash, tag or branch that `git log` shows "
            "(a shallow clone may lack old commits: git fetch --unshallow)"
        )
    return proc.stdout.strip()


def export(commit: str, dest: Path) -> None:
    """The package as it was at ``commit``, into ``dest`` (``git archive | tar -x``; no worktree)."""
    archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit, PACKAGE], stdout=subprocess.PIPE)
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or untar.returncode != 0:
        raise SystemExit(f"could not export {PACKAGE} at {commit}: {untar.stderr.decode()[-500:]}")


@contextmanager
def sides(
    ref: str, against: str | None, new_env: tuple[tuple[str, str], ...] = ()
) -> Iterator[tuple[Side, Side]]:
    """The old side (``ref``, exported) and the new one (``against`` exported, else this working tree),
    the new one's children with ``new_env`` set."""
    tmp = Path(tempfile.mkdtemp(prefix="ktexport-versus-"))
    try:
        built = []
        for name, wanted in (("old", ref), ("new", against)):
            if wanted is None:
                head = resolve("HEAD")
                dirty = bool(_git("status", "--porcelain", "--", PACKAGE))
                describe = f"working tree at {head[:10]}" + (" with uncommitted changes" if dirty else "")
                built.append(Side(name, REPO, head, describe))
                continue
            commit = resolve(wanted)
            (tmp / name).mkdir()
            export(commit, tmp / name)
            built.append(
                Side(
                    name,
                    tmp / name,
                    commit,
                    f"{commit[:10]} ({_git('log', '-1', '--format=%s', commit)[:70]})",
                )
            )
        yield built[0], dataclasses.replace(built[1], extra_env=new_env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_side(side: Side, shape: str, records: int, flush_records: int | None) -> dict[str, Any]:
    """One drain of ``side``'s code against a fresh emulator serving ``records`` of ``shape``."""
    lake = Path(tempfile.mkdtemp(prefix=f"ktexport-versus-{side.name}-"))
    started = time.monotonic()
    try:
        with _EmulatorProcess(records, 0, shape).running() as emu:
            cmd = [
                sys.executable,
                "-m",
                "benchmarks.versus",
                "--child",
                "--url",
                emu.url,
                "--lake",
                str(lake),
            ]
            if flush_records is not None:
                cmd += ["--flush-records", str(flush_records)]
            out = run_child_process(cmd, f"drain ({side.name})", cwd=side.root, env=side.env())
            out["emulator"] = emu.stats()
    finally:
        shutil.rmtree(lake, ignore_errors=True)
    side.check_package(out["package_dir"])
    out["cpu_s_per_100k"] = round(out["cpu_s"] * 1e5 / out["records"], 3) if out["records"] else None
    out["landed_once"] = _landed_once(out, records)
    log.warning(
        "%s %s: %d records, %.2f s CPU/100k, peak RSS %.0f MB, %s expired leases (%.0f s)",
        side.name,
        shape,
        out["records"],
        out["cpu_s_per_100k"] or 0.0,
        out["peak_rss_mb"],
        out["emulator"].get("expired"),
        time.monotonic() - started,
    )
    return out


def _landed_once(out: dict[str, Any], queued: int) -> bool:
    """Every record drained, landed once and acknowledged once, after its write, inside its lease."""
    checks, emulator = out["checks"], out["emulator"]
    return (
        out["records"] == queued
        and checks["landed_rows"] == queued
        and checks["distinct_seqs"] == queued
        and checks["early_acks"] == 0
        and emulator["acked_records"] == queued
        and not emulator["expired"]
        and not emulator["redelivered"]
    )


def run_versus(
    old: Side, new: Side, shapes: list[str], records: int, repeat: int, flush_records: int | None
) -> dict[str, Any]:
    """Every shape, old then new, ``repeat`` times (A B A B ...); a row per shape from the medians."""
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for _ in range(repeat):
        for shape in shapes:
            for side in (old, new):
                run = run_side(side, shape, _records_of(shape, records), flush_records)
                samples.setdefault((shape, side.name), []).append(run)
    return {shape: _row(shape, samples[(shape, "old")], samples[(shape, "new")]) for shape in shapes}


def _row(shape: str, old_runs: list[dict[str, Any]], new_runs: list[dict[str, Any]]) -> dict[str, Any]:
    old, new = _median_run(old_runs), _median_run(new_runs)
    return {
        "records": new["records"],
        "mean_record_bytes": _mean_bytes(shape),
        "old_cpu_s_per_100k": old["cpu_s_per_100k"],
        "old_samples": old["cpu_s_per_100k_samples"],
        "new_cpu_s_per_100k": new["cpu_s_per_100k"],
        "new_samples": new["cpu_s_per_100k_samples"],
        "new_over_old": round(new["cpu_s_per_100k"] / old["cpu_s_per_100k"], 3),
        "new_over_old_per_repeat": [
            round(n["cpu_s_per_100k"] / o["cpu_s_per_100k"], 3)
            for o, n in zip(old_runs, new_runs, strict=True)
        ],
        "speedup": round(old["cpu_s_per_100k"] / new["cpu_s_per_100k"], 2),
        # System CPU is mostly page faults: an allocator handing memory back and taking it again.
        "old_user_sys_s_per_100k": _user_sys(old),
        "new_user_sys_s_per_100k": _user_sys(new),
        "old_peak_rss_mb": old["peak_rss_mb"],
        "new_peak_rss_mb": new["peak_rss_mb"],
        "old_cpu_split_s": old.get("cpu_split_s"),
        "new_cpu_split_s": new.get("cpu_split_s"),
        "old_adapted": old.get("adapted"),
        "old_arrow_pool": old.get("arrow_pool"),
        "new_arrow_pool": new.get("arrow_pool"),
        # Flushes and files of the median runs: the flush rule differs between versions.
        "flushes": {"old": old["drain"].get("flushes"), "new": new["drain"].get("flushes")},
        "files": {"old": old["drain"]["files"], "new": new["drain"]["files"]},
        "expired_leases": {
            "old": [r["emulator"]["expired"] for r in old_runs],
            "new": [r["emulator"]["expired"] for r in new_runs],
        },
        "landed_once": {
            "old": all(r["landed_once"] for r in old_runs),
            "new": all(r["landed_once"] for r in new_runs),
        },
    }


def _user_sys(run: dict[str, Any]) -> list[float]:
    return [round(run[k] * 1e5 / run["records"], 2) for k in ("cpu_user_s", "cpu_sys_s")]


def _plus(user_sys: list[float]) -> str:
    return f"{user_sys[0]:.1f} + {user_sys[1]:.1f}"


def table(report: dict[str, Any]) -> str:
    """The report as a Markdown table (what docs/performance.md quotes)."""
    lines = [
        "| shape | records | old CPU s/100k (samples) | new CPU s/100k (samples) | new / old (per repeat) "
        "| old / new | user + sys s/100k, old -> new | peak RSS old -> new | all landed once (old, new) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for shape, row in report["shapes"].items():
        old = ", ".join(f"{s:.2f}" for s in row["old_samples"])
        new = ", ".join(f"{s:.2f}" for s in row["new_samples"])
        per = ", ".join(f"{r:.2f}" for r in row["new_over_old_per_repeat"])
        landed = row["landed_once"]
        lines.append(
            f"| {shape} | {row['records']:,} | {row['old_cpu_s_per_100k']:.2f} ({old}) "
            f"| {row['new_cpu_s_per_100k']:.2f} ({new}) | **{row['new_over_old']:.2f}** ({per}) "
            f"| **{row['speedup']:.2f} x** | {_plus(row['old_user_sys_s_per_100k'])} -> "
            f"{_plus(row['new_user_sys_s_per_100k'])} | {row['old_peak_rss_mb']:.0f} -> {row['new_peak_rss_mb']:.0f} MB "
            f"| {'yes' if landed['old'] else 'NO'}, {'yes' if landed['new'] else 'NO'} |"
        )
    return "\n".join(lines)


# --- the child: one drain of whichever package is first on sys.path -------------------------------


def _adapt_to_older_trees() -> list[str]:
    """Let ``benchmarks.cases``' drain case import an older tree's client; say what was adapted.

    The sync client was ``airflow_provider_ktexport.client`` until issue 19 moved it to
    ``transport/sync_client.py`` (same class, same arguments). For such a tree both names are
    aliased to the old module, so the case runs unchanged. Nothing is adapted for this tree.
    """
    try:
        import airflow_provider_ktexport.transport.sync_client  # noqa: F401
    except ModuleNotFoundError:
        import airflow_provider_ktexport.client as client

        transport = types.ModuleType(f"{PACKAGE}.transport")
        transport.sync_client = client  # type: ignore[attr-defined]
        sys.modules[f"{PACKAGE}.transport"] = transport
        sys.modules[f"{PACKAGE}.transport.sync_client"] = client
        return [f"{PACKAGE}.transport.sync_client -> {PACKAGE}.client (before issue 19's move)"]
    return []


def run_child(url: str, lake: Path, flush_records: int | None) -> int:
    """The drain case (c) of ``benchmarks.cases`` in this process; one JSON line on stdout."""
    # The package first, as a task's DAG file imports it: it may choose Arrow's pool before
    # pyarrow loads (airflow_provider_ktexport/_arrow_env.py, in trees that have it).
    package = importlib.import_module("airflow_provider_ktexport")
    import pyarrow as pa

    from benchmarks.cases import _case_drain

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    adapted = _adapt_to_older_trees()
    out = _case_drain(url, lake, None, None, flush_records)
    out["package_dir"] = str(Path(package.__file__).parent)
    out["adapted"] = adapted
    # Which allocator Arrow ended with: the code since issue 24 moves it off mimalloc itself.
    out["arrow_pool"] = pa.default_memory_pool().backend_name
    print(json.dumps(out), flush=True)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.versus", description=__doc__.split("\n\n")[0])
    p.add_argument("--ref", help="the old code: any commit git knows (e.g. 26c9c0b, the parent of issue 18)")
    p.add_argument("--against", help="the new code: a commit (default: this working tree, as it is)")
    p.add_argument(
        "--shape",
        action="append",
        choices=sorted(SHAPES),
        help=f"a record shape of benchmarks/_common.py; repeat it (default {' '.join(DEFAULT_SHAPES)})",
    )
    p.add_argument("--records", type=int, default=20_000, help="records per run (trips100: a tenth)")
    p.add_argument("--repeat", type=int, default=3, help="runs of each side and shape, interleaved")
    p.add_argument(
        "--flush-records",
        type=int,
        help="flush_records of both sides instead of each side's default (when the old cannot keep its leases)",
    )
    p.add_argument(
        "--new-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set for the new side's drains only (e.g. ARROW_DEFAULT_MEMORY_POOL=jemalloc, as "
        "docs/configuration.md asks of workers); repeat it",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON")
    p.add_argument("--table", type=Path, help="also write the Markdown table here")
    # Internal: one drain in this (child) process.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return args
    if not args.ref:
        p.error("--ref is required: the commit whose drain is the 'old' side")
    if args.records < 1 or args.repeat < 1:
        p.error("--records and --repeat must be at least 1")
    if args.flush_records is not None and args.flush_records < 1:
        p.error("--flush-records must be at least 1")
    args.shapes = list(dict.fromkeys(args.shape or DEFAULT_SHAPES))
    bad = [pair for pair in args.new_env if "=" not in pair or pair.startswith("=")]
    if bad:
        p.error(f"--new-env takes NAME=VALUE, got {', '.join(bad)}")
    args.new_env = tuple(tuple(pair.split("=", 1)) for pair in args.new_env)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both sides on every shape, print the JSON and the table."""
    args = _parse(argv)
    if args.child:
        return run_child(args.url, args.lake, args.flush_records)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(message)s")
    started = time.monotonic()
    report: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.versus", *(argv if argv is not None else sys.argv[1:])]),
        "machine": _machine(),
        "settings": {
            "records_by_shape": {s: _records_of(s, args.records) for s in args.shapes},
            "repeat": args.repeat,
            "flush_records": args.flush_records or "each side's default",
            "order": "for each repeat, for each shape: old, then new",
            # Arrow's start-up pool (mimalloc unless set): the Parquet writer allocates from it.
            "arrow_default_memory_pool": "each side's own choice"
            if _pool_chosen_here()
            else os.environ.get(ARROW_POOL_VAR, "unset"),
        },
    }
    with sides(args.ref, args.against, args.new_env) as (old, new):
        report["old"] = {"commit": old.commit, "code": old.describe}
        report["new"] = {"commit": new.commit, "code": new.describe, "env": dict(new.extra_env)}
        report["shapes"] = run_versus(old, new, args.shapes, args.records, args.repeat, args.flush_records)
    publish(report, started, args.out, table(report), args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
