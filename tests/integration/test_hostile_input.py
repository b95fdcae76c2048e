"""Hostile input of every kind, through both sinks, with ``airflow dags test``, twice (or more).

Hostile records (poison mode) and broken envelopes (faults on the first run's deliveries) are
served to the Parquet drain and to the Iceberg drain. The first run must end green having
acknowledged nothing early; the second, started once the faults stop, polls past every lease the
first run left and lands the redeliveries. Then the queue is empty, every ordinary record is a
row, every hostile record is a reject with its exact text, and the API key is in no file.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyiceberg")

from airflow_provider_ktexport.lake.iceberg import load_catalog  # noqa: E402
from airflow_provider_ktexport.testing.emulator import Emulator  # noqa: E402
from airflow_provider_ktexport.testing.records import (  # noqa: E402
    FOREIGN_TOKEN_URL,
    HOSTILE_KINDS,
    KEY_TEXT_KINDS,
)
from tests.integration.conftest import ktexport_conn  # noqa: E402
from tests.integration.test_poison import (  # noqa: E402
    View,
    guard_acks,
    iceberg_view,
    must_reject,
    parquet_view,
)

pytestmark = pytest.mark.integration

KEY = "hostile-dags-key-0123456789"
LEASE = 15.0
RECORDS = 1000
#: Envelope faults served on the first run only (each rate per GET; the last four hit a batch's
#: first delivery only): ids with items missing, null or renamed, a key given twice (``items``
#: again as ``[]``, escaped as ``"i\\u0074ems"``, a second ``id``) and a gzip stream with bytes
#: after its end.
ENVELOPE_FAULTS = {
    "items_missing": 0.05,
    "items_null": 0.03,
    "items_renamed": 0.03,
    "items_twice": 0.08,
    "items_escaped": 0.08,
    "id_twice": 0.08,
    "gzip_trailer": 0.08,
}


class Lake:
    """Where one sink put things, read the way its users read them."""

    def __init__(self, sink: str, root: Path) -> None:
        self.sink = sink
        self.root = root
        self.lake = root / "lake"
        self.warehouse = root / "warehouse"
        self.catalog_uri = f"sqlite:///{root}/catalog.db"

    def dag(self) -> tuple[str, dict[str, str]]:
        if self.sink == "parquet":
            return "ktexport_it_drain", {"ktexport_lake": self.lake.as_uri()}
        self.warehouse.mkdir(parents=True, exist_ok=True)
        return "ktexport_it_iceberg", {
            "ktexport_iceberg_catalog_uri": self.catalog_uri,
            "ktexport_iceberg_warehouse": self.warehouse.as_uri(),
        }

    def view(self) -> View:
        """``emulator_seq`` of every row and the exact text of every reject (test_poison's views;
        the catalog is opened at the first look, after the DAG run created it)."""
        if self.sink == "parquet":
            return parquet_view(self.lake)
        opened: list[View] = []

        def view() -> tuple[list[int], list[str]]:
            if not opened:
                props = {"type": "sql", "uri": self.catalog_uri, "warehouse": self.warehouse.as_uri()}
                opened.append(iceberg_view(load_catalog("ktexport", props)))
            return opened[0]()

        return view

    def texts(self) -> str:
        """Every file under the sink's folders as text: Parquet files by their values (they are
        compressed), every other file (schema store, metadata, catalog) by its bytes."""
        parts = []
        for path in sorted(self.root.rglob("*")):
            if not path.is_file():
                continue
            if path.suffix == ".parquet":
                parts.append(str(pq.read_table(path).to_pylist()))
            else:
                parts.append(path.read_bytes().decode("utf-8", "replace"))
        return "\n".join(parts)


@pytest.mark.parametrize("sink", ["parquet", "iceberg"])
def test_hostile_input_through_both_sinks_twice_loses_nothing(sink, run_dag, tmp_path):
    lake = Lake(sink, tmp_path)
    dag_id, variables = lake.dag()
    options = {"lease_seconds": LEASE, "flush_seconds": 3, "max_runtime": 120}
    violations: list[str] = []
    with Emulator(
        api_key=KEY,
        lease_seconds=LEASE,
        long_poll_seconds=1,
        batch_size=100,
        poison=0.06,
        poison_kinds=HOSTILE_KINDS + KEY_TEXT_KINDS,
        seed=18,
    ) as emu:
        emu.generate(RECORDS)
        emu.set_faults(**ENVELOPE_FAULTS)
        view = lake.view()
        guard_acks(emu, view, violations)
        connections = {"ktexport_default": ktexport_conn(emu)}
        first = run_dag(dag_id, connections=connections, variables=variables, options=options)
        assert first.returncode == 0, first.output[-6000:]
        summaries = [first.xcom("drain")]  # read now: xcom() reads the newest run of the DAG
        broken = emu.stats()["broken_envelopes"]
        emu.clear_faults()
        # Past every lease the first run left (its quarantined batches come back whole). On a
        # loaded machine a run can land a batch after its lease (not acknowledged, by design: it
        # comes back), so runs go on until the queue is empty, each for that reason only.
        stop = time.monotonic() + 900
        while True:
            until = {"drain_until": time.time() + LEASE + 2}
            again = run_dag(
                dag_id, connections=connections, variables=variables, options={**options, **until}
            )
            assert again.returncode == 0, again.output[-6000:]
            summaries.append(again.xcom("drain"))
            stats = emu.stats()
            if stats["queued"] == 0 and stats["leased"] == 0:
                break
            assert summaries[-1]["lease_expired"] + summaries[-1]["ack_failed"] > 0, (stats, summaries[-1])
            assert time.monotonic() < stop, f"records still queued after 900 s of runs: {stats}"
        stats = emu.stats()
        hostile = must_reject(emu)
        served = {kind for kind, _ in emu.hostile_records().values()}
    assert violations == []
    assert served == set(HOSTILE_KINDS + KEY_TEXT_KINDS)  # every hostile kind was served
    assert broken > 0 and stats["acked_broken_envelopes"] == 0, stats
    assert stats["queued"] == 0 and stats["leased"] == 0, stats
    assert sum(s["quarantined"] for s in summaries) >= broken

    rows, raws = view()
    ordinary = [s for s in range(1, RECORDS + 1) if s not in hostile]
    assert hostile and sorted(set(rows)) == ordinary
    assert sorted(set(raws)) == sorted({raw.decode() for _, raw in hostile.values()})
    if not any(s["lease_expired"] + s["ack_failed"] for s in summaries):
        # Nothing came back for a lost ack: every record is in the lake once.
        assert max(Counter(rows).values()) == 1 and max(Counter(raws).values()) == 1
    texts = lake.texts()
    assert KEY not in texts  # echoed in records, masked in every row, reject and stored body
    # Another service's token= values are data: they land byte for byte.
    assert FOREIGN_TOKEN_URL in texts and "https://maps.example.com/t?TOKEN=Zz9&x=1" in texts
