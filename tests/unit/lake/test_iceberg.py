"""The Iceberg sink with pyiceberg's SQL catalog on SQLite: the drain's flushes as table commits."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

pytest.importorskip("pyiceberg")

from airflow_provider_ktexport.drain import Drain, DrainConfig  # noqa: E402
from airflow_provider_ktexport.exceptions import KtExportProtocolError  # noqa: E402
from airflow_provider_ktexport.lake.iceberg import (  # noqa: E402
    EVENT_DATE_COLUMN,
    IcebergSink,
    load_catalog,
    table_name,
)
from airflow_provider_ktexport.lake.layout import record_type_table  # noqa: E402
from airflow_provider_ktexport.lake.naming import column_path  # noqa: E402
from airflow_provider_ktexport.lake.rejects import REJECTS_SCHEMA  # noqa: E402
from airflow_provider_ktexport.lake.sinks import ParquetSink  # noqa: E402
from airflow_provider_ktexport.lake.writer import LakeWriter  # noqa: E402
from tests.unit.drain.support import (  # noqa: E402
    BAD_TYPES,
    HOSTILE,
    FakeClient,  # noqa: E402
    batch_of,
)


def catalog_for(tmp_path: Path):
    (tmp_path / "warehouse").mkdir(exist_ok=True)
    return load_catalog(
        "test",
        {
            "type": "sql",
            "uri": f"sqlite:///{tmp_path}/catalog.db",
            "warehouse": (tmp_path / "warehouse").as_uri(),
        },
    )


def records(seqs, *, rtype="telemetry", day="2026-11-25", **fields) -> list[bytes]:
    return [
        json.dumps(
            {"type": rtype, "date": f"{day}T10:00:00Z", "seq": s, "location": {"lat": 1.5}, **fields}
        ).encode()
        for s in seqs
    ]


def drain_into(sink: IcebergSink, answers, **cfg) -> tuple[Drain, FakeClient]:
    client = FakeClient(answers)
    cfg = {"max_runtime": 20, "lease_seconds": 8, "flush_seconds": 3, "max_in_flight": 1, **cfg}
    drain = Drain(client, sink, DrainConfig(**cfg))
    drain.run()
    return drain, client


def test_records_land_once_per_table_and_acks_follow_the_commit(tmp_path):
    catalog = catalog_for(tmp_path)
    sink = IcebergSink(catalog, "ktexport", catalog_name="test")
    at_ack: dict[str, int] = {}

    class Watching(FakeClient):
        def ack(self, batch_id):
            at_ack[batch_id] = catalog.load_table("ktexport.telemetry").scan().to_arrow().num_rows
            return super().ack(batch_id)

    client = Watching([batch_of("b1", records(range(5))), batch_of("b2", records(range(5, 9), rtype="trip"))])
    drain = Drain(
        client, sink, DrainConfig(max_runtime=20, lease_seconds=8, flush_seconds=3, max_in_flight=1)
    )
    drain.run()
    assert sorted(client.acks) == ["b1", "b2"]
    assert all(n >= 5 for n in at_ack.values())  # the commit was visible before each DELETE
    tele = catalog.load_table("ktexport.telemetry").scan().to_arrow()
    assert sorted(tele.column("seq").to_pylist()) == [0, 1, 2, 3, 4]
    assert set(tele.column(EVENT_DATE_COLUMN).to_pylist()) == {__import__("datetime").date(2026, 11, 25)}
    trip = catalog.load_table("ktexport.trip").scan().to_arrow()
    assert sorted(trip.column("seq").to_pylist()) == [5, 6, 7, 8]
    assert catalog.load_table("ktexport.telemetry").spec().fields[0].name == EVENT_DATE_COLUMN
    committed = {c["table"] for c in drain.result.landed}
    assert committed == {"ktexport.telemetry", "ktexport.trip"}


def test_snapshot_properties_say_what_each_commit_holds(tmp_path):
    catalog = catalog_for(tmp_path)
    drain_into(
        IcebergSink(catalog), [batch_of("b1", records(range(3))), batch_of("b2", records(range(3, 6)))]
    )
    snaps = catalog.load_table("ktexport.telemetry").snapshots()
    props = [
        s.summary.additional_properties
        for s in snaps
        if "ktexport.batch-ids" in s.summary.additional_properties
    ]
    ids = {b for p in props for b in p["ktexport.batch-ids"].split(",")}
    assert ids == {"b1", "b2"}
    assert all(p["ktexport.source"] == "ktexport_default" for p in props)
    assert sum(int(p["ktexport.rows-in-commit"]) for p in props) == 6


def test_drift_only_adds_columns(tmp_path):
    catalog = catalog_for(tmp_path)
    sink = IcebergSink(catalog)
    drain_into(sink, [batch_of("b1", records(range(2)))])
    drain_into(sink, [batch_of("b2", records(range(2, 4), extra={"new": "field"}, odo=7))])
    table = catalog.load_table("ktexport.telemetry")
    names = [f.name for f in table.schema().fields]
    assert "odo" in names and "extra__new" in names
    rows = table.scan().to_arrow().to_pylist()
    assert sorted(r["seq"] for r in rows) == [0, 1, 2, 3]
    assert {r["seq"]: r["odo"] for r in rows} == {0: None, 1: None, 2: 7, 3: 7}


def test_rejects_land_in_their_own_table_and_the_batch_is_acked(tmp_path):
    catalog = catalog_for(tmp_path)
    raws = records(range(3)) + [HOSTILE["number_out_of_range"], HOSTILE["lone_surrogate"]]
    drain, client = drain_into(IcebergSink(catalog), [batch_of("b1", raws)])
    assert client.acks == ["b1"]
    rejected = catalog.load_table("ktexport._rejected").scan().to_arrow()
    assert sorted(rejected.column("_raw").to_pylist()) == sorted(
        [HOSTILE["number_out_of_range"].decode(), HOSTILE["lone_surrogate"].decode()]
    )
    assert drain.result.rejected == 2 and drain.result.records == 3


def test_quarantine_counts_sightings_in_a_table(tmp_path):
    catalog = catalog_for(tmp_path)
    sink = IcebergSink(catalog)
    body = b'{"id": "bad", "items": [1,'
    for n in (1, 2, 3):
        _, client = drain_into(
            sink,
            [KtExportProtocolError("truncated", body=body, batch_id="bad")],
            ack_quarantined=True,
        )
        assert client.acks == ([] if n < 3 else ["bad"])
    assert sink.quarantine_sightings(body) == 3
    rows = catalog.load_table("ktexport._quarantine").scan().to_arrow().to_pylist()
    assert [r["body"] for r in rows].count(body) == 1  # the body is stored once


def test_quarantine_counts_a_body_redelivered_under_new_ids(tmp_path):
    sink = IcebergSink(catalog_for(tmp_path))
    for n in (1, 2, 3):
        body = b'{"id":"lease-%d","items":[{"a":1}],"items":[]}' % n
        _, client = drain_into(
            sink,
            [KtExportProtocolError("items twice", body=body, batch_id=f"lease-{n}")],
            ack_quarantined=True,
        )
        assert client.acks == ([] if n < 3 else ["lease-3"])
    assert sink.quarantine_sightings(b'{"id":"other","items":[{"a":1}],"items":[]}') == 3
    assert sink.quarantine_kept(b'{"id":"x","items":[{"a":1}],"items":[]}')
    assert not sink.quarantine_kept(b'{"id":"x","items":[{"a":2}],"items":[]}')


def test_two_drains_on_one_catalog_both_commit(tmp_path):
    catalog_for(tmp_path)  # create the warehouse folder
    errors: list[BaseException] = []

    def one(start: int) -> None:
        try:
            sink = IcebergSink(catalog_for(tmp_path))
            batches = [
                batch_of(f"s{start}-{i}", records(range(start + i * 10, start + i * 10 + 10)))
                for i in range(4)
            ]
            drain_into(sink, batches, flush_records=10)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(s,)) for s in (0, 1000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    seqs = catalog_for(tmp_path).load_table("ktexport.telemetry").scan().to_arrow().column("seq").to_pylist()
    assert sorted(seqs) == list(range(40)) + list(range(1000, 1040))


def test_table_names_are_plain_and_distinct():
    assert table_name("telemetry") == "telemetry"
    odd = {table_name(t) for t in ("Trip", "trip!", "%2E%2E", "TRIP")}
    assert len(odd) == 4 and all(n.islower() or "_" in n for n in odd)


def test_a_type_drift_goes_to_a_variant_column_and_no_column_changes_type(tmp_path):
    catalog = catalog_for(tmp_path)
    sink = IcebergSink(catalog)
    drain_into(sink, [batch_of("b1", records(range(2), counters={"hours": 120}))])
    drain_into(sink, [batch_of("b2", records(range(2, 4), counters={"hours": "3642h"}))])
    table = catalog.load_table("ktexport.telemetry")
    types = {f.name: str(f.field_type) for f in table.schema().fields}
    assert types["counters__hours"] == "long"
    variant = [n for n in types if n.startswith("counters__hours") and n != "counters__hours"]
    assert len(variant) == 1 and types[variant[0]] == "string"
    rows = {r["seq"]: r for r in table.scan().to_arrow().to_pylist()}
    assert [rows[s]["counters__hours"] for s in range(4)] == [120, 120, None, None]
    assert [rows[s][variant[0]] for s in range(4)] == [None, None, "3642h", "3642h"]


def test_polars_scan_iceberg_reads_the_tables_back(tmp_path):
    pl = pytest.importorskip("polars")
    catalog = catalog_for(tmp_path)
    drain_into(IcebergSink(catalog), [batch_of("b1", records(range(6)) + records(range(6, 9), rtype="trip"))])
    for name, seqs in (("telemetry", list(range(6))), ("trip", [6, 7, 8])):
        df = pl.scan_iceberg(catalog.load_table(f"ktexport.{name}")).collect()
        assert sorted(df["seq"].to_list()) == seqs
        assert df["location__lat"].to_list() == [1.5] * len(seqs)
        assert df["_record_key"].n_unique() == len(seqs)


def test_record_types_that_make_bad_names_land_and_every_flush_commits(tmp_path):
    # Two flushes in a row, each with a reject: a "_rejected" type once took over the rejects
    # table (the next flush then failed on its "_event_date"), a lone surrogate could not be
    # encoded, and long types made names past the limits.
    catalog = catalog_for(tmp_path)
    at_ack: dict[str, int] = {}

    class Watching(FakeClient):
        def ack(self, batch_id):
            at_ack[batch_id] = catalog.load_table("ktexport._rejected").scan().to_arrow().num_rows
            return super().ack(batch_id)

    answers = [
        batch_of(f"b{i}", records(range(10 * i, 10 * i + 3)) + list(BAD_TYPES.values())) for i in range(2)
    ]
    client = Watching(answers)
    drain = Drain(
        client,
        IcebergSink(catalog),
        DrainConfig(max_runtime=20, lease_seconds=8, flush_seconds=3, max_in_flight=1, flush_records=5),
    )
    drain.run()
    assert client.acks == ["b0", "b1"] and at_ack == {"b0": 1, "b1": 2}  # committed before each DELETE
    assert drain.result.rejected == 2 and drain.result.records == 2 * 8
    rejected = catalog.load_table("ktexport._rejected").scan().to_arrow()
    assert rejected.column("_raw").to_pylist() == [BAD_TYPES["lone_surrogate"].decode()] * 2
    assert set(rejected.column("record_type").to_pylist()) == {"trip\ufffd\ufffd\ufffd"}
    assert set(rejected.schema.names) == {*REJECTS_SCHEMA.names, "record_type"}
    for kind, raw in BAD_TYPES.items():
        if kind != "lone_surrogate":
            rtype = json.loads(raw)["type"]
            name = record_type_table(rtype)
            assert not name.startswith("_") and len(name.encode()) <= 200
            rows = catalog.load_table(f"ktexport.{name}").scan().to_arrow()
            assert (
                rows.column("type").to_pylist() == [rtype] * 2
                and sorted(rows.column("seq").to_pylist()) == [json.loads(raw)["seq"]] * 2
            )


def test_iceberg_names_columns_as_the_parquet_lake_does(tmp_path):
    """One mapping for both sinks: camelCase keys as sent, escapes, and case twins by arrival."""
    first = records(
        range(2), eventDate="2026-11-25T10:00:00Z", doc={"ownerId": 7}, speed=1, **{"a.b": 1, "x__y": 2}
    )
    later = records(range(2, 4), Speed=2, SPEED=3, doc={"OwnerId": 8})
    catalog = catalog_for(tmp_path)
    drain_into(IcebergSink(catalog), [batch_of("b1", first)])
    drain_into(IcebergSink(catalog), [batch_of("b2", later)])
    writer = LakeWriter(LocalFileSystem(), str(tmp_path / "lake"))
    drain_into(ParquetSink(writer), [batch_of("b1", first)])
    drain_into(ParquetSink(writer), [batch_of("b2", later)])

    table = catalog.load_table("ktexport.telemetry")
    iceberg = [f.name for f in table.schema().fields if f.name != EVENT_DATE_COLUMN]
    parquet = {n for f in (tmp_path / "lake").rglob("*.parquet") for n in pq.read_schema(f).names}
    assert sorted(iceberg) == sorted(parquet)
    assert {"eventDate", "doc__ownerId", "speed", "a%2Eb", "x%5F%5Fy"} <= set(iceberg)
    # The later spellings are twins; no two names are equal ignoring case.
    assert len({n.lower() for n in iceberg}) == len(iceberg)
    twins = {column_path(n): n for n in iceberg if "___t" in n}
    assert set(twins) == {("Speed",), ("SPEED",), ("doc", "OwnerId")}
    rows = {r["seq"]: r for r in table.scan().to_arrow().to_pylist()}
    assert rows[0]["eventDate"] is not None and rows[0]["doc__ownerId"] == 7
    assert [rows[3][twins[("Speed",)]], rows[3][twins[("SPEED",)]], rows[3][twins[("doc", "OwnerId")]]] == [
        2,
        3,
        8,
    ]


def test_a_table_with_case_tags_is_renamed_in_place_and_keeps_its_rows(tmp_path):
    catalog = catalog_for(tmp_path)
    catalog.create_namespace_if_not_exists("ktexport")
    ts = pa.timestamp("us", tz="UTC")
    when = datetime(2026, 11, 25, 10, tzinfo=UTC)
    old = pa.table(
        {
            "seq": pa.array([100], pa.int64()),
            "speed": pa.array([1], pa.int64()),
            "Speed___c1": pa.array([2], pa.int64()),
            "Speed___c1___string": pa.array(["fast"], pa.string()),
            "eventDate___c20": pa.array([when], ts),
            EVENT_DATE_COLUMN: pa.array([when.date()], pa.date32()),
        }
    )
    legacy = catalog.create_table("ktexport.telemetry", schema=old.schema)
    legacy.append(old)
    ids = {f.name: f.field_id for f in legacy.schema().fields}

    drain_into(
        IcebergSink(catalog), [batch_of("b1", records(range(2), Speed=3, eventDate="2026-11-25T11:00:00Z"))]
    )

    table = catalog.load_table("ktexport.telemetry")
    fields = {f.name: f.field_id for f in table.schema().fields}
    # Renamed in place: the same column ids under this version's names; no tagged name is left.
    assert fields["Speed___t1"] == ids["Speed___c1"] and fields["eventDate"] == ids["eventDate___c20"]
    assert fields["Speed___t1___string"] == ids["Speed___c1___string"] and fields["speed"] == ids["speed"]
    assert not any("___c" in n for n in fields)
    rows = {r["seq"]: r for r in table.scan().to_arrow().to_pylist()}
    assert (rows[100]["speed"], rows[100]["Speed___t1"], rows[100]["Speed___t1___string"]) == (1, 2, "fast")
    assert rows[100]["eventDate"] == when
    assert [rows[s]["Speed___t1"] for s in (0, 1)] == [3, 3] and rows[0]["eventDate"] is not None


def test_two_drains_adding_case_twins_at_once_get_one_name_each(tmp_path):
    catalog_for(tmp_path)  # create the warehouse folder
    rounds = 6
    barrier = threading.Barrier(2, timeout=120)
    errors: list[BaseException] = []

    def one(side: str, fields: dict) -> None:
        try:
            sink = IcebergSink(catalog_for(tmp_path))
            for r in range(rounds):
                barrier.wait()
                raws = records(range(2), rtype=f"twins{r}", side=side, **fields)
                drain_into(sink, [batch_of(f"{side}{r}", raws)])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=("a", {"speed": 1, "x": 1})),
        threading.Thread(target=one, args=("b", {"Speed": 2, "x": "one"})),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    catalog = catalog_for(tmp_path)
    for r in range(rounds):
        table = catalog.load_table(f"ktexport.twins{r}")
        names = [f.name for f in table.schema().fields]
        assert len({n.lower() for n in names}) == len(names), names
        by_path = {column_path(n): n for n in names if "___t" in n or n.lower() == "speed"}
        assert set(by_path) == {("speed",), ("Speed",)}, names
        rows = table.scan().to_arrow().to_pylist()
        assert sorted(r[by_path[("speed",)]] or r[by_path[("Speed",)]] for r in rows) == [1, 1, 2, 2]


def metadata_files(tmp_path: Path, table: str) -> list[Path]:
    return list((tmp_path / "warehouse").rglob(f"{table}/metadata/*.metadata.json"))


@pytest.mark.slow
def test_a_hundred_small_flushes_leave_bounded_metadata(tmp_path):
    """Each flush is a commit: without the table properties, 110 flushes leave 111 metadata.json
    files and 110 manifests in the current snapshot, and every commit costs more than the last."""
    catalog = catalog_for(tmp_path)
    batches = [batch_of(f"b{i}", records([i])) for i in range(110)]
    # A lease long enough for 110 commits on a loaded machine: this fake client never redelivers,
    # and a batch whose lease ran out before its write is left to the server, not written.
    drain, _ = drain_into(IcebergSink(catalog), batches, flush_records=1, max_runtime=300, lease_seconds=120)
    table = catalog.load_table("ktexport.telemetry")
    commits = [s for s in table.snapshots() if s.summary.operation.value == "append"]
    assert len(commits) >= 100  # really a hundred small flushes
    assert sorted(table.scan().to_arrow().column("seq").to_pylist()) == list(range(110))
    assert len(metadata_files(tmp_path, "telemetry")) <= 25
    assert len(table.current_snapshot().manifests(table.io)) <= 10


def test_tables_are_created_with_their_spec_and_bounding_properties(tmp_path):
    catalog = catalog_for(tmp_path)
    sink = IcebergSink(catalog, table_properties={"write.metadata.previous-versions-max": 5})
    drain_into(sink, [batch_of("b1", records(range(3)))])
    table = catalog.load_table("ktexport.telemetry")
    assert len(table.specs()) == 1 and [f.name for f in table.spec().fields] == [EVENT_DATE_COLUMN]
    props = table.properties
    assert props["write.metadata.delete-after-commit.enabled"] == "true"
    assert props["commit.manifest-merge.enabled"] == "true"
    assert props["write.metadata.previous-versions-max"] == "5"  # the user's value wins


def test_an_existing_table_gets_the_properties_it_lacks_and_keeps_its_own(tmp_path):
    import pyarrow as pa

    catalog = catalog_for(tmp_path)
    catalog.create_namespace("ktexport")
    catalog.create_table(
        "ktexport.telemetry",
        schema=pa.schema([pa.field("seq", pa.int64()), pa.field(EVENT_DATE_COLUMN, pa.date32())]),
        properties={"write.metadata.previous-versions-max": "50"},
    )
    drain_into(IcebergSink(catalog), [batch_of("b1", records(range(3)))])
    table = catalog.load_table("ktexport.telemetry")
    assert table.properties["write.metadata.previous-versions-max"] == "50"
    assert table.properties["write.metadata.delete-after-commit.enabled"] == "true"
    assert [f.name for f in table.spec().fields] == [EVENT_DATE_COLUMN]
    assert sorted(table.scan().to_arrow().column("seq").to_pylist()) == [0, 1, 2]


def test_a_snapshot_names_only_the_batches_with_rows_in_its_table(tmp_path):
    catalog = catalog_for(tmp_path)
    raws_b1 = records(range(3))  # telemetry only
    raws_b2 = records(range(3, 5), rtype="trip")  # trip only
    raws_b3 = records(range(5, 6)) + [HOSTILE["lone_surrogate"]]  # telemetry and a reject
    drain_into(
        IcebergSink(catalog),
        [batch_of("b1", raws_b1), batch_of("b2", raws_b2), batch_of("b3", raws_b3)],
        flush_records=100,
    )

    def named(table: str) -> set[str]:
        snaps = catalog.load_table(f"ktexport.{table}").snapshots()
        props = [s.summary.additional_properties for s in snaps]
        return {b for p in props for b in p.get("ktexport.batch-ids", "").split(",") if b}

    assert named("telemetry") == {"b1", "b3"}
    assert named("trip") == {"b2"}
    assert named("_rejected") == {"b3"}


def test_a_table_is_found_by_its_folder_through_version_hint(tmp_path):
    """The SQL catalog keeps the current metadata.json in its database; readers given a table's
    folder (DuckDB's iceberg_scan, pyiceberg's StaticTable) need metadata/version-hint.text."""
    from pyiceberg.table import StaticTable

    catalog = catalog_for(tmp_path)
    sink = IcebergSink(catalog)
    drain_into(sink, [batch_of("b1", records(range(3)))])
    drain_into(sink, [batch_of("b2", records(range(3, 5)))])
    table = catalog.load_table("ktexport.telemetry")
    folder = table.location()
    hint = Path(folder.removeprefix("file://")) / "metadata" / "version-hint.text"
    assert table.metadata_location.endswith(f"/{hint.read_text()}.metadata.json")
    by_folder = StaticTable.from_metadata(folder)
    assert sorted(by_folder.scan().to_arrow().column("seq").to_pylist()) == [0, 1, 2, 3, 4]


def test_duckdb_iceberg_scan_reads_a_table_by_its_folder(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    try:
        con.sql("LOAD iceberg")
    except duckdb.Error as exc:  # the extension is downloaded on first use: not on an offline machine
        pytest.skip(f"DuckDB's iceberg extension is not available here: {exc}")
    catalog = catalog_for(tmp_path)
    drain_into(IcebergSink(catalog), [batch_of("b1", records(range(5)))])
    folder = catalog.load_table("ktexport.telemetry").location()
    rows = con.sql(f"SELECT seq FROM iceberg_scan('{folder}') ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [0, 1, 2, 3, 4]
