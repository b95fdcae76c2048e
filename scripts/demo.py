"""The README's main job: emulator -> `airflow dags test` -> local lake -> what landed.

Run through ``bash scripts/demo`` (which prepares the virtual environment). Everything lives
under ``./.demo`` (Airflow home, SQLite database, the lake; ``--workdir`` elsewhere); it is
recreated on every run. ``--check`` turns what it prints into a verdict (every record emitted was
acknowledged and is in the lake as a row or a rejected record): CI's release leg
(ci/wheel-at-floor) runs it with the built wheel and stock Airflow at the declared floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DAG_ID = "ktexport_drain"
API_KEY = "demo-key-not-a-secret"


def start_emulator(demo: Path, records: int) -> tuple[subprocess.Popen[bytes], str]:
    port_file = demo / "emulator.port"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ktexport-emulator"),
            "--port",
            "0",
            "--port-file",
            str(port_file),
            "--api-key",
            API_KEY,
            "--records",
            str(records),
            "--long-poll-seconds",
            "2",
            "--seed",
            "7",
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, f"http://127.0.0.1:{port_file.read_text().strip()}"
        if proc.poll() is not None:
            raise SystemExit(f"the emulator exited early with code {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the emulator did not start within 30 s")


def airflow_env(demo: Path, emulator_url: str, lake: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(demo / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW_CONN_KTEXPORT_DEFAULT=json.dumps(
            {
                "conn_type": "ktexport",
                "host": emulator_url,
                "password": API_KEY,
                "extra": {"long_poll_seconds": 2},
            }
        ),
        AIRFLOW_VAR_KTEXPORT_LAKE=lake.as_uri(),
    )
    return env


def airflow(env: dict[str, str], *args: str, log: Path) -> None:
    with log.open("ab") as out:
        code = subprocess.call(
            [str(Path(sys.executable).parent / "airflow"), *args], env=env, stdout=out, stderr=out
        )
    if code:
        sys.stdout.write(log.read_text(errors="replace")[-6000:])
        raise SystemExit(f"`airflow {' '.join(args)}` failed with code {code}; full log: {log}")


def show_emulator(url: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(f"{url}/_emulator/stats", timeout=10) as resp:  # noqa: S310 - loopback
        stats = json.load(resp)
    print(
        f"\nEmulator: emitted {stats['emitted']} records; acknowledged {stats['acked_records']} in "
        f"{stats['acked']} batches; {stats['queued']} still queued, {stats['leased']} batches still leased, "
        f"{stats['redelivered']} redelivered"
    )
    return stats


def show_lake(lake: Path) -> int:
    """Print what landed; return how many distinct records it holds (rows and rejected records)."""
    import duckdb

    from airflow_provider_ktexport.lake.reader import read_lake_table
    from airflow_provider_ktexport.lake.rejects import read_rejects

    files = sorted(lake.glob("record_type=*/**/*.parquet"))
    print(f"\nLanded {len(files)} Parquet files under {lake}:")
    glob = str(lake / "record_type=*" / "**" / "*.parquet")
    con = duckdb.connect()
    per_partition = con.execute(
        "SELECT record_type, CAST(event_date AS VARCHAR), count(*) AS rows_, count(DISTINCT filename) AS files "
        f"FROM read_parquet('{glob}', hive_partitioning=true, union_by_name=true, filename=true) "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    print(f"  {'record_type':<22}{'event_date':<12}{'files':>6}{'rows':>9}")
    for record_type, event_date, rows, nfiles in per_partition:
        print(f"  {record_type:<22}{event_date:<12}{nfiles:>6}{rows:>9}")
    query = (
        "SELECT count(*) AS rows, count(DISTINCT _record_key) AS distinct_records, "
        "count(DISTINCT _batch_id) AS batches "
        f"FROM read_parquet('{glob}', hive_partitioning=true, union_by_name=true)"
    )
    rows, distinct, batches = con.execute(query).fetchone()
    print(f"\nDuckDB> {query}\n  rows={rows} distinct_records={distinct} batches={batches}")
    rejected = read_rejects(lake.as_uri())
    print(
        f"read_rejects(): {rejected.num_rows} records kept in {lake / '_rejected'} with their exact text "
        "(valid JSON that cannot be a row)"
    )
    table = read_lake_table(lake.as_uri(), record_type="telemetry")
    print(f"read_lake_table(record_type='telemetry'): {table.num_rows} rows x {table.num_columns} columns")
    return int(distinct) + rejected.num_rows


def verdict(stats: dict[str, int], landed: int) -> int:
    """``--check``: 0 when every record emitted was acknowledged and is in the lake, else 1."""
    problems = []
    if stats["acked_records"] != stats["emitted"] or stats["queued"] or stats["leased"]:
        problems.append(f"acknowledged {stats['acked_records']} of {stats['emitted']} records emitted")
    if landed < stats["acked_records"]:
        problems.append(
            f"the lake holds {landed} records, fewer than the {stats['acked_records']} acknowledged"
        )
    for problem in problems:
        print(f"CHECK FAILED: {problem}", file=sys.stderr)
    if not problems:
        print(f"\nCheck passed: all {stats['emitted']} records acknowledged and in the lake.")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000, help="records the emulator starts with")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".demo", help="recreated; default ./.demo")
    parser.add_argument("--check", action="store_true", help="fail unless every record landed and was acked")
    args = parser.parse_args()
    demo = args.workdir.resolve()
    shutil.rmtree(demo, ignore_errors=True)
    (demo / "airflow").mkdir(parents=True)
    lake = demo / "lake"
    log = demo / "airflow.log"
    print(f"Starting the export-API emulator with {args.records} records ...")
    emulator, url = start_emulator(demo, args.records)
    try:
        env = airflow_env(demo, url, lake)
        print("Preparing Airflow's embedded SQLite database (airflow db migrate) ...")
        airflow(env, "db", "migrate", log=log)
        print(f"Running `airflow dags test {DAG_ID}` against {url} (log: {log}) ...")
        started = time.monotonic()
        airflow(env, "dags", "test", DAG_ID, log=log)
        print(f"DAG run finished in {time.monotonic() - started:.1f} s")
        stats = show_emulator(url)
        landed = show_lake(lake)
    finally:
        emulator.send_signal(signal.SIGTERM)
        try:
            emulator.wait(10)
        except subprocess.TimeoutExpired:
            emulator.kill()
    return verdict(stats, landed) if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
