"""Downstream: load what the drains land into DuckDB, once per record, and summarise it daily.

Scheduled on the AssetAlias ``ktexport_lake`` that every drain fills, so it runs after each drain
that landed files. Needs ``pip install duckdb`` (not a dependency of the provider). The lake URL
comes from the Variable ``ktexport_lake``, the DuckDB file from ``ktexport_warehouse``.

- ``ktexport_records``: one row per ``_record_key`` (at-least-once delivery and compaction can
  show a record twice; it is loaded once), with the record as JSON;
- ``ktexport_daily_summary``: records per day, record type and asset.

See docs/warehouse.md.
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import AssetAlias, ObjectStoragePath, Variable, dag, task

DEFAULT_LAKE = "file:///tmp/ktexport/lake"
DEFAULT_WAREHOUSE = "/tmp/ktexport/warehouse.duckdb"  # noqa: S108 - an example default; set the Variable
# Columns that hold an asset id, by record type (telemetry/trip, event), each followed by the
# variant columns that hold ids of another type than the column's first (docs/schema-mapping.md).
ASSET_ID_COLUMNS = tuple(
    f"{c}{v}"
    for c in ("asset__id", "details__asset__id")
    for v in ("", "___bigint", "___double", "___string")
)

RECORDS_DDL = """
CREATE TABLE IF NOT EXISTS ktexport_records (
    _record_key VARCHAR PRIMARY KEY, record_type VARCHAR, event_date VARCHAR, asset_id VARCHAR,
    _source VARCHAR, _ingested_at TIMESTAMPTZ, record JSON)
"""

# New rows only: recent by _ingested_at (an hour of overlap covers drains that finish out of
# order), first copy of each _record_key, and none already loaded.
LOAD_SQL = """
INSERT INTO ktexport_records
SELECT _record_key, record_type, event_date, {asset_id}, _source, _ingested_at, to_json(lake)
FROM read_parquet($files, hive_partitioning = true, union_by_name = true) AS lake
WHERE _ingested_at >= (SELECT coalesce(max(_ingested_at), '-infinity'::TIMESTAMPTZ) - INTERVAL 1 HOUR
                       FROM ktexport_records)
  AND _record_key NOT IN (SELECT _record_key FROM ktexport_records)
QUALIFY row_number() OVER (PARTITION BY _record_key ORDER BY _ingested_at) = 1
"""

SUMMARY_SQL = """
CREATE OR REPLACE TABLE ktexport_daily_summary AS
SELECT event_date, record_type, asset_id, count(*) AS records
FROM ktexport_records GROUP BY ALL ORDER BY ALL
"""


@dag(
    dag_id="ktexport_to_duckdb",
    schedule=[AssetAlias("ktexport_lake")],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["ktexport", "example"],
)
def ktexport_to_duckdb():
    @task
    def load_into_duckdb() -> dict[str, int]:
        import duckdb  # optional: pip install duckdb

        lake = ObjectStoragePath(Variable.get("ktexport_lake", default=DEFAULT_LAKE))
        warehouse = Variable.get("ktexport_warehouse", default=DEFAULT_WAREHOUSE)
        Path(warehouse).parent.mkdir(parents=True, exist_ok=True)
        files = lake / "record_type=*" / "**" / "*.parquet"
        with duckdb.connect(warehouse) as con:
            if lake.protocol in ("file", "local", ""):
                files_url = str(files.path)
            else:  # object storage: let DuckDB read through the connection's fsspec filesystem
                con.register_filesystem(lake.fs)
                files_url = f"{lake.protocol}://{files.path}"
            con.execute(RECORDS_DDL)
            before = con.execute("SELECT count(*) FROM ktexport_records").fetchall()[0][0]
            if lake.fs.glob(str(files.path)):
                columns = {
                    row[0]
                    for row in con.execute(
                        "DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)", [files_url]
                    ).fetchall()
                }
                present = [f"CAST({c} AS VARCHAR)" for c in ASSET_ID_COLUMNS if c in columns]
                asset_id = f"coalesce({', '.join(present)})" if present else "NULL"
                con.execute(LOAD_SQL.format(asset_id=asset_id), {"files": files_url})
            con.execute(SUMMARY_SQL)
            total = con.execute("SELECT count(*) FROM ktexport_records").fetchall()[0][0]
        return {"loaded": total - before, "records": total}

    load_into_duckdb()


ktexport_to_duckdb()
