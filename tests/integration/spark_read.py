"""Read a lake the way Spark users do, and print what Spark saw as JSON (run under .venv-spark).

    .venv-spark/bin/python tests/integration/spark_read.py /path/to/lake [/path/to/another/lake ...]

Each ``record_type=*`` folder of each lake is read on its own with
``spark.read.option("mergeSchema", "true").parquet(folder)`` (hive partition discovery on, as by
default), Spark 3.5 in local mode, one session for all lakes. The output is one JSON line,
``{"spark": version, "seconds": s, "lakes": {lake: {record_type: result}}}``, a result being
``{"ok": true, "count": N, "columns": [[name, spark type], ...], "rows": [{...}, ...]}`` or
``{"ok": false, "error": "..."}`` when Spark cannot read the folder. Timestamps are ISO-8601 in UTC.

Only pyspark is imported: this runs in Spark's own virtual environment, not the project's.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _plain(value: Any) -> Any:
    """A Spark row value as JSON: timestamps in UTC ISO-8601, nested rows as objects."""
    if isinstance(value, dt.datetime):
        # The session and this process both run in UTC, so a naive value is UTC.
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_lake(spark: Any, lake: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for folder in sorted(lake.glob("record_type=*")):
        record_type = folder.name.partition("=")[2]
        try:
            df = spark.read.option("mergeSchema", "true").parquet(str(folder))
            rows = [_plain(row.asDict(recursive=True)) for row in df.collect()]
            out[record_type] = {
                "ok": True,
                "count": df.count(),
                "columns": [[f.name, f.dataType.simpleString()] for f in df.schema.fields],
                "rows": rows,
            }
        except Exception as exc:  # noqa: BLE001 - reported per folder: one unreadable type must not hide the others
            out[record_type] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:4000]}
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    os.environ["TZ"] = "UTC"
    time.tzset()
    from pyspark.sql import SparkSession

    started = time.monotonic()
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("ktexport-spark-read")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        lakes = {lake: read_lake(spark, Path(lake)) for lake in argv[1:]}
    finally:
        spark.stop()
    seconds = round(time.monotonic() - started, 1)
    print(json.dumps({"spark": spark.version, "seconds": seconds, "lakes": lakes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
