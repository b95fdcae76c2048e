"""Lineage and metrics through real parts: `airflow dags test` of a drain DAG against the emulator,
with the OpenLineage provider writing events to files and Airflow's StatsD client sending to a
UDP listener on loopback."""

from __future__ import annotations

import json
import socket
import threading
from collections import defaultdict

import pyarrow.parquet as pq
import pytest

from tests.integration.conftest import ktexport_conn

pytestmark = [
    pytest.mark.integration,
    pytest.mark.emulator(
        api_key="ol-key-5ecret", lease_seconds=120, long_poll_seconds=1, batch_size=200, seed=11
    ),
]


class StatsdListener:
    """Collects StatsD packets on a free loopback UDP port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.lines.extend(data.decode().splitlines())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def ktexport(self) -> dict[str, list[tuple[str, float]]]:
        """``{metric name: [(type, value), ...]}`` for ktexport.* lines tagged with the connection."""
        out: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for line in self.lines:
            name_tags, _, rest = line.partition(":")
            value, _, kind = rest.partition("|")
            name, *tags = name_tags.split(",")
            if name.startswith("airflow.ktexport.") and "conn_id=ktexport_default" in tags:
                out[name.removeprefix("airflow.")].append((kind, float(value)))
        return out


def test_drain_reports_lineage_and_metrics(emulator, run_dag, tmp_path):
    lake = tmp_path / "lake"
    events = tmp_path / "ol"
    events.mkdir()
    emulator.generate(1500)
    listener = StatsdListener()
    try:
        result = run_dag(
            "ktexport_it_drain",
            connections={"ktexport_default": ktexport_conn(emulator)},
            variables={"ktexport_lake": lake.as_uri()},
            options={"flush_records": 500},
            env={
                "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                    {"type": "file", "log_file_path": str(events / "event"), "append": False}
                ),
                "AIRFLOW__OPENLINEAGE__NAMESPACE": "ktexport_it",
                # Emit from a thread of the task process: the default fork added ~15 s to this
                # `dags test` run (measured: 57.7 s off, 72.6 s fork, 56.7 s thread).
                "AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD": "True",
                "AIRFLOW__METRICS__STATSD_ON": "True",
                "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
                "AIRFLOW__METRICS__STATSD_PORT": str(listener.port),
                # InfluxDB-style tags (`name,conn_id=...:1|c`): the StatsD line keeps the conn_id tag.
                "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
            },
        )
    finally:
        listener.close()
    assert result.returncode == 0, result.output[-5000:]
    summary = result.xcom("drain")
    assert summary["records"] == 1500 and summary["acked"] == summary["batches"] > 0
    assert "datasets" not in summary  # schemas and per-dataset facts stay out of XCom

    # -- lineage: the COMPLETE event of the drain task -------------------------------------------
    complete = [
        e
        for e in (json.loads(p.read_text()) for p in sorted(events.iterdir()))
        if e.get("eventType") == "COMPLETE" and e["job"]["name"].endswith(".drain")
    ]
    assert len(complete) == 1, [p.name for p in events.iterdir()]
    event = complete[0]
    host_port = emulator.url.split("://", 1)[1].rstrip("/")
    assert [(i["namespace"], i["name"]) for i in event["inputs"]] == [
        (f"http://{host_port}", "ktexport_default")
    ]
    assert emulator.api_key not in json.dumps(event)
    # The START event names the same input already (what landed is known at the end).
    start = [
        e
        for e in (json.loads(p.read_text()) for p in sorted(events.iterdir()))
        if e.get("eventType") == "START" and e["job"]["name"].endswith(".drain")
    ]
    assert len(start) == 1 and start[0]["inputs"] == event["inputs"], start
    assert emulator.api_key not in json.dumps(start)

    folders = sorted(p for p in lake.iterdir() if p.name.startswith("record_type="))
    outputs = {o["name"]: o for o in event["outputs"]}
    assert {o["namespace"] for o in event["outputs"]} == {"file"}
    assert sorted(outputs) == [str(f) for f in folders]
    total = 0
    for folder in folders:
        out = outputs[str(folder)]
        files = list(folder.rglob("*.parquet"))
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        stats = out["outputFacets"]["outputStatistics"]
        assert stats["rowCount"] == rows
        assert stats["fileCount"] == len(files)
        assert stats["size"] == sum(f.stat().st_size for f in files)
        landed = pq.read_schema(files[0])
        columns = {f["name"]: f["type"] for f in out["facets"]["schema"]["fields"]}
        assert {"_record_key", "_batch_id", "_ingested_at", "_source"} <= set(columns)
        assert all(columns[f.name] == str(f.type) for f in landed)
        total += rows
    assert total == 1500

    # -- metrics: what arrived at the StatsD listener ----------------------------------------------
    metrics = listener.ktexport()
    assert sum(v for _, v in metrics["ktexport.records_landed"]) == 1500
    assert sum(v for _, v in metrics["ktexport.batches_acked"]) == summary["acked"]
    assert {k for k, _ in metrics["ktexport.records_landed"]} == {"c"}
    assert "ktexport.ack_failures" not in metrics and "ktexport.leases_expired" not in metrics
    flushes = metrics["ktexport.flush_duration"]
    assert len(flushes) == summary["flushes"] >= 3 and all(k == "ms" and v >= 0 for k, v in flushes)
    ages = metrics["ktexport.oldest_record_age_seconds"]
    assert ages and all(k == "g" for k, _ in ages)
    assert max(v for _, v in ages) == pytest.approx(summary["oldest_record_age_s"], rel=1e-3)
