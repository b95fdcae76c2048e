"""Downstream: load the files each drain announces into DuckDB, once per file and once per record.

Scheduled on the AssetAlias ``ktexport_lake`` that every drain fills only when it landed files, so
it runs after each drain that landed something, never on an empty run. The drain's Asset event
names the files it landed (paths relative to the lake); this DAG loads just those, read from the
events that triggered the run (``triggering_asset_events``), instead of rescanning the lake. Needs
``pip install duckdb`` (not a dependency of the provider). The lake URL comes from the Variable
``ktexport_lake``, the DuckDB file from ``ktexport_warehouse``.

- ``ktexport_records``: one row per ``_record_key`` (at-least-once delivery and compaction can
  show a record twice; it is loaded once), with the record as JSON;
- ``ktexport_loaded_files``: every file loaded, so a file named by two events, or by a retried
  run, is loaded once;
- ``ktexport_daily_summary``: records per day, record type and asset.

A run with no triggering event (started by hand) or whose event lists only part of its files
(``files_truncated``) loads every lake file not yet in ``ktexport_loaded_files``. See
docs/warehouse.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import AssetAlias, ObjectStoragePath, Variable, dag, task

from airflow_provider_ktexport.operators.ktexport import DEFAULT_ASSET_ALIAS, lake_uri

DEFAULT_LAKE = "file:///tmp/ktexport/lake"
DEFAULT_WAREHOUSE = "/tmp/ktexport/warehouse.duckdb"  # noqa: S108 - an example default; set the Variable
LAKE_ALIAS = AssetAlias(DEFAULT_ASSET_ALIAS)
# Columns that hold an asset id, by record type (telemetry/trip, event), each followed by the
# variant columns that hold ids of another type than the column's first (docs/schema-mapping.md).
ASSET_ID_COLUMNS = tuple(
    f"{c}{v}"
    for c in ("asset__id", "details__asset__id")
    for v in ("", "___bigint", "___double", "___string")
)

DDL = """
CREATE TABLE IF NOT EXISTS ktexport_records (
    _record_key VARCHAR PRIMARY KEY, record_type VARCHAR, event_date VARCHAR, asset_id VARCHAR,
    _source VARCHAR, _ingested_at TIMESTAMPTZ, record JSON);
CREATE TABLE IF NOT EXISTS ktexport_loaded_files (file VARCHAR PRIMARY KEY, loaded_at TIMESTAMPTZ);
"""

# The given files' rows: the first copy of each _record_key, none already loaded.
LOAD_SQL = """
INSERT INTO ktexport_records
SELECT _record_key, record_type, event_date, {asset_id}, _source, _ingested_at, to_json(lake)
FROM read_parquet($urls, hive_partitioning = true, union_by_name = true) AS lake
WHERE _record_key NOT IN (SELECT _record_key FROM ktexport_records)
QUALIFY row_number() OVER (PARTITION BY _record_key ORDER BY _ingested_at) = 1
"""

SUMMARY_SQL = """
CREATE OR REPLACE TABLE ktexport_daily_summary AS
SELECT event_date, record_type, asset_id, count(*) AS records
FROM ktexport_records GROUP BY ALL ORDER BY ALL
"""


def announced_files(events: list[Any], lake: ObjectStoragePath) -> list[str] | None:
    """The lake files the triggering events name, relative to the lake; ``None``: scan the lake."""
    files: set[str] = set()
    for event in events:
        extra = event.extra or {}
        if extra.get("destination") != lake_uri(lake):
            continue  # another lake feeding the same alias
        if extra.get("files_truncated") or "files" not in extra:
            return None  # the event names only some of its files
        files.update(extra["files"])
    return sorted(files) if events else None


def data_files(lake: ObjectStoragePath) -> list[str]:
    """Every data file in the lake, relative to it (not the rejects, quarantine or schema store)."""
    root = str(lake.path).rstrip("/") + "/"
    found = lake.fs.glob(root + "record_type=*/**/*.parquet")
    return sorted(p.removeprefix(root) for p in found if not p.rsplit("/", 1)[-1].startswith("."))


@dag(
    dag_id="ktexport_to_duckdb",
    schedule=[LAKE_ALIAS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one writer at a time: DuckDB takes one, and each file is loaded once
    tags=["ktexport", "example"],
)
def ktexport_to_duckdb():
    @task
    def load_into_duckdb(triggering_asset_events: Any = None) -> dict[str, int]:
        import duckdb  # optional: pip install duckdb

        lake = ObjectStoragePath(Variable.get("ktexport_lake", default=DEFAULT_LAKE))
        warehouse = Variable.get("ktexport_warehouse", default=DEFAULT_WAREHOUSE)
        Path(warehouse).parent.mkdir(parents=True, exist_ok=True)
        events = list(triggering_asset_events.get(LAKE_ALIAS, ())) if triggering_asset_events else []
        root = str(lake.path).rstrip("/")
        candidates = announced_files(events, lake)
        with duckdb.connect(warehouse) as con:
            if lake.protocol in ("file", "local", ""):
                prefix = root
            else:  # object storage: let DuckDB read through the connection's fsspec filesystem
                con.register_filesystem(lake.fs)
                prefix = f"{lake.protocol}://{root}"
            con.execute(DDL)
            loaded = {row[0] for row in con.execute("SELECT file FROM ktexport_loaded_files").fetchall()}
            todo = [f for f in (data_files(lake) if candidates is None else candidates) if f not in loaded]
            # A file compacted away since its event: its rows are in its partition's new files
            # (the anti-join on _record_key skips the ones loaded already).
            gone = {f for f in todo if not lake.fs.exists(f"{root}/{f}")}
            reread = {f.rsplit("/", 1)[0] + "/" for f in gone}
            urls = [f"{prefix}/{f}" for f in todo if f not in gone]
            if reread:
                urls += [f"{prefix}/{p}" for p in data_files(lake) if p.rsplit("/", 1)[0] + "/" in reread]
            before = con.execute("SELECT count(*) FROM ktexport_records").fetchall()[0][0]
            con.execute("BEGIN TRANSACTION")  # rows and the files they came from, or neither
            if urls:
                columns = {
                    row[0]
                    for row in con.execute(
                        "DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)", [urls]
                    ).fetchall()
                }
                present = [f"CAST({c} AS VARCHAR)" for c in ASSET_ID_COLUMNS if c in columns]
                asset_id = f"coalesce({', '.join(present)})" if present else "NULL"
                con.execute(LOAD_SQL.format(asset_id=asset_id), {"urls": urls})
            if todo:
                con.executemany(
                    "INSERT INTO ktexport_loaded_files VALUES (?, now()) ON CONFLICT DO NOTHING",
                    [[f] for f in todo],
                )
            con.execute(SUMMARY_SQL)
            con.execute("COMMIT")
            total = con.execute("SELECT count(*) FROM ktexport_records").fetchall()[0][0]
        return {"events": len(events), "files": len(todo), "loaded": total - before, "records": total}

    load_into_duckdb()


ktexport_to_duckdb()
