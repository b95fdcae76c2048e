"""Compaction engine (lake/compact.py) on a local folder and an in-memory object store."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportWriteError
from airflow_provider_ktexport.lake.compact import compact_lake
from airflow_provider_ktexport.lake.layout import record_type_folder
from airflow_provider_ktexport.lake.naming import path_metadata
from airflow_provider_ktexport.lake.reader import read_lake, read_lake_table
from airflow_provider_ktexport.lake.writer import LakeWriter
from tests.lake_support import land

NOW = datetime(2026, 11, 26, 1, 2, 3, tzinfo=UTC)
LATER = time.time() + 3600  # "now" for compaction: every file is old enough


def telemetry(seq: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "telemetry",
        "date": "2026-11-25T10:00:00Z",
        "asset": {"id": f"a{seq % 3}"},
        "seq": seq,
        **extra,
    }


@pytest.fixture(params=["local", "memory"])
def lake(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[Any, str]]:
    if request.param == "local":
        yield LocalFileSystem(), str(tmp_path / "lake")
        return
    fs = MemoryFileSystem()
    root = f"/compact-{request.node.name.replace('[', '-').strip(']')}"
    yield fs, root
    if fs.exists(root):
        fs.rm(root, recursive=True)


def data_files(fs: Any, root: str, record_type: str = "telemetry") -> list[str]:
    return sorted(
        p for p in fs.find(f"{root}/record_type={record_type}") if p.endswith(".parquet") and "/." not in p
    )


def seqs(fs: Any, root: str) -> list[int]:
    return sorted(read_lake_table(fs, root).column("seq").to_pylist())


def test_small_files_merge_and_duplicates_go(lake):
    fs, root = lake
    writer = LakeWriter(fs, root, writer_id="drain")
    for start in range(0, 50, 10):
        land(writer, [telemetry(i) for i in range(start, start + 10)])
    land(writer, [telemetry(i) for i in range(5, 15)])  # a redelivered batch: 10 duplicates
    before = data_files(fs, root)
    assert len(before) == 6 and len(seqs(fs, root)) == 60

    result = compact_lake(fs, root, now=LATER)

    after = data_files(fs, root)
    assert len(after) == 1 and not set(after) & set(before)
    assert seqs(fs, root) == list(range(50))  # every record once
    summary = result.summary()
    assert {k: summary[k] for k in ("partitions", "files_in", "files_out", "rows_in", "rows_out")} == {
        "partitions": 1,
        "files_in": 6,
        "files_out": 1,
        "rows_in": 60,
        "rows_out": 50,
    }
    assert summary["duplicates_removed"] == 10 and summary["partitions_skipped_recent"] == 0
    assert summary["bytes_in"] > 0 and summary["bytes_out"] > 0
    assert result.files == [writer.uri_of(after[0])]
    # A second run finds nothing to do and leaves the file alone.
    again = compact_lake(fs, root, now=LATER)
    assert again.partitions == 0 and again.partitions_unchanged == 1
    assert data_files(fs, root) == after


def _old_file(part: Any, name: str, columns: dict[str, pa.Array], seq: int) -> None:
    """A file as earlier versions wrote it: widened types, old spellings, Null-typed columns."""
    n = len(next(iter(columns.values())))
    meta = {
        "_record_key": pa.array([f"{seq + i:032x}" for i in range(n)]),
        "_batch_id": pa.array(["old"] * n),
        "_ingested_at": pa.array([NOW] * n, pa.timestamp("us", tz="UTC")),
        "_source": pa.array(["conn"] * n),
    }
    part.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({**columns, **meta}), str(part / name))


@pytest.mark.parametrize("with_old_store", [False, True])
def test_a_lake_widened_in_place_by_an_earlier_version_is_valid_after_one_compaction(
    tmp_path, with_old_store
):
    root = tmp_path / "lake"
    part = root / "record_type=telemetry" / "event_date=2026-11-25"
    ts = pa.timestamp("us", tz="UTC")
    _old_file(
        part,
        "part-20261125T080000Z-a.parquet",
        {
            "seq": pa.array([1, 2]),
            "hours": pa.array([10, 11]),
            "when": pa.array([datetime(2026, 11, 25, 8, tzinfo=UTC)] * 2, ts),
            "%53peed": pa.array([5.0, 100.0]),
            "nothing": pa.nulls(2),
        },
        1,
    )
    _old_file(
        part,
        "part-20261125T090000Z-b.parquet",
        {
            "seq": pa.array([3, 4]),
            "hours": pa.array(["12", "3642h"]),  # widened in place to string
            "when": pa.array(["2026-11-25T09:00:00+02:00", "soon"]),
            "%53peed": pa.array(["fast", None]),
            "nothing": pa.array(["x", None]),
        },
        3,
    )
    if with_old_store:  # what the old drains published: the widened type, which they keep writing
        old = pa.schema([("hours", pa.string()), ("%53peed", pa.float64()), ("nothing", pa.null())])
        store = root / "_schema" / "telemetry"
        store.mkdir(parents=True)
        doc = {"format": 1, "writer_id": "old", "arrow_schema": base64.b64encode(old.serialize()).decode()}
        (store / "old.json").write_text(json.dumps(doc))
    fs = LocalFileSystem()
    with pytest.raises(pa.ArrowException):  # as landed, a naive reader cannot merge the files
        pq.read_table(str(part))
    compact_lake(fs, str(root), now=LATER)

    table = pq.read_table(str(part))  # a naive reader works now
    types = {f.name: f.type for f in table.schema}
    rows = {r["seq"]: r for r in table.to_pylist()}
    if with_old_store:  # hours keeps the store's string; the first file's ints go beside it
        assert types["hours"] == pa.string() and types["hours___bigint"] == pa.int64()
        assert [rows[s]["hours___bigint"] for s in (1, 2, 3, 4)] == [10, 11, None, None]
        assert [rows[s]["hours"] for s in (1, 2, 3, 4)] == [None, None, "12", "3642h"]
    else:  # no store: hours keeps its first file's int64
        assert types["hours"] == pa.int64() and types["hours___string"] == pa.string()
        assert [rows[s]["hours"] for s in (1, 2, 3, 4)] == [10, 11, None, None]
        # Values keep their text and type: "12" stays text.
        assert [rows[s]["hours___string"] for s in (1, 2, 3, 4)] == [None, None, "12", "3642h"]
    # 100.0 stays a double, the times stay apart from the texts, old spellings are gone.
    assert types["when"] == ts and types["when___string"] == pa.string()
    assert [rows[s]["when___string"] for s in (3, 4)] == ["2026-11-25T09:00:00+02:00", "soon"]
    assert types["Speed"] == pa.float64() and types["Speed___string"] == pa.string()
    assert rows[2]["Speed"] == 100.0 and rows[3]["Speed___string"] == "fast"
    assert types["nothing"] == pa.string() and "%53peed" not in types
    published = LakeWriter(fs, str(root)).load_schema("telemetry")
    assert published is not None and published.field("hours").type == types["hours"]


def test_drift_lands_in_variants_and_compaction_changes_no_type(lake):
    fs, root = lake
    writer = LakeWriter(fs, root, writer_id="drain")
    land(writer, [telemetry(1, hours=10, km=1.5, at="2026-11-25T08:00:00Z")])
    land(writer, [telemetry(2, hours="3642h", km="93.7 km", at="2026-11-25T08:00:00.000Z")])
    land(writer, [telemetry(3, hours=12, km=100.0, at="later")])
    before = {f: pq.read_schema(fs.open(f, "rb")) for f in data_files(fs, root)}
    typed = {name: t for s in before.values() for name, t in zip(s.names, s.types, strict=True)}
    for s in before.values():  # every file agrees on every column's type
        assert all(typed[name] == t for name, t in zip(s.names, s.types, strict=True))
    compact_lake(fs, root, now=LATER)
    (after,) = data_files(fs, root)
    table = _read(fs, after)
    assert all(typed[f.name] == f.type for f in table.schema)
    rows = {r["seq"]: r for r in table.to_pylist()}
    assert (rows[1]["hours"], rows[2]["hours___string"], rows[3]["hours"]) == (10, "3642h", 12)
    assert (rows[2]["km___string"], rows[3]["km"]) == ("93.7 km", 100.0)
    assert rows[1]["at"] == datetime(2026, 11, 25, 8, tzinfo=UTC) and rows[3]["at___string"] == "later"


def _read(fs: Any, path: str) -> pa.Table:
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh)


def test_two_sources_copies_both_survive_and_the_first_ingested_copy_is_kept(lake):
    fs, root = lake
    writer = LakeWriter(fs, root, writer_id="drain")
    later = datetime(2026, 11, 27, tzinfo=UTC)
    land(writer, [telemetry(1)], source="task_a", batch_id="late", ingested_at=later)
    land(writer, [telemetry(1)], source="task_a", batch_id="early", ingested_at=NOW)
    land(writer, [telemetry(1)], source="task_b", batch_id="other")
    result = compact_lake(fs, root, now=LATER)
    assert result.duplicates_removed == 1
    table = read_lake_table(fs, root)
    assert sorted(zip(table.column("_source").to_pylist(), table.column("_batch_id").to_pylist())) == [
        ("task_a", "early"),
        ("task_b", "other"),
    ]


def test_a_root_that_is_not_a_lake_is_refused_and_nothing_moves(tmp_path):
    fs = LocalFileSystem()
    lake_a = str(tmp_path / "lakes" / "a")
    land(LakeWriter(fs, lake_a, writer_id="drain"), [telemetry(1)])
    land(LakeWriter(fs, lake_a, writer_id="drain"), [telemetry(2)])
    before = data_files(fs, lake_a)
    with pytest.raises(KtExportConfigError, match="not a lake root.*lakes/a"):
        compact_lake(fs, str(tmp_path / "lakes"), now=LATER)
    assert data_files(fs, lake_a) == before
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("hi")
    with pytest.raises(KtExportConfigError, match="not a lake root"):
        compact_lake(fs, str(tmp_path / "nothing"), now=LATER)
    assert compact_lake(fs, str(tmp_path / "empty"), now=LATER).partitions == 0  # no lake yet


def test_a_lake_whose_drains_found_no_data_yet_is_an_empty_lake(tmp_path):
    fs = LocalFileSystem()
    root = str(tmp_path / "lake")
    LakeWriter(fs, root).prove_writable()  # what every drain does first: leaves an empty _probe/
    assert compact_lake(fs, root, now=LATER).partitions == 0


def test_a_folder_that_is_not_a_partition_path_is_refused(tmp_path):
    fs = LocalFileSystem()
    root = str(tmp_path / "lake")
    land(LakeWriter(fs, root, writer_id="drain"), [telemetry(1)])
    land(LakeWriter(fs, root, writer_id="drain"), [telemetry(2)])
    stray = tmp_path / "lake" / "record_type=telemetry" / "backup"
    stray.mkdir()
    (stray / "part-x.parquet").write_bytes(b"not parquet")
    before = data_files(fs, root)
    with pytest.raises(KtExportConfigError, match="backup is not a partition path"):
        compact_lake(fs, root, now=LATER)
    assert data_files(fs, root) == before


def test_a_single_clean_file_is_left_alone_but_one_with_duplicates_is_rewritten(lake):
    fs, root = lake
    writer = LakeWriter(fs, root, writer_id="drain")
    land(writer, [telemetry(i) for i in range(5)])
    (only,) = data_files(fs, root)
    result = compact_lake(fs, root, now=LATER)
    assert result.partitions == 0 and result.partitions_unchanged == 1
    assert data_files(fs, root) == [only]

    # One file holding the same record twice (a batch redelivered within one drain run).
    rows = read_lake_table(fs, root).drop_columns(["record_type", "event_date"])
    fs.rm_file(only)
    writer.write(
        pa.concat_tables([rows, rows.slice(0, 2)]), {"record_type": "telemetry", "event_date": "2026-11-25"}
    )
    result = compact_lake(fs, root, now=LATER)
    assert (result.files_in, result.files_out, result.duplicates_removed) == (1, 1, 2)
    assert seqs(fs, root) == list(range(5))


def test_recently_touched_partitions_are_skipped(lake):
    fs, root = lake
    writer = LakeWriter(fs, root, writer_id="drain")
    land(writer, [telemetry(1)])
    land(writer, [telemetry(2)])
    before = data_files(fs, root)
    result = compact_lake(fs, root, min_age_seconds=600)  # the files are seconds old
    assert result.partitions_skipped_recent == 1 and result.partitions == 0
    assert data_files(fs, root) == before
    assert compact_lake(fs, root, min_age_seconds=0).partitions == 1


def test_output_is_split_at_the_target_size(tmp_path):
    fs, root = LocalFileSystem(), str(tmp_path / "lake")
    writer = LakeWriter(fs, root, writer_id="drain")
    for start in range(0, 4000, 500):
        land(writer, [telemetry(i, pad="x" * 40 + str(i)) for i in range(start, start + 500)])
    sizes = [fs.size(p) for p in data_files(fs, root)]
    target_mb = 2.5 * max(sizes) / 2**20  # about 2-3 inputs per output
    result = compact_lake(fs, root, target_file_mb=target_mb, now=LATER)
    assert result.files_in == 8 and 2 <= result.files_out <= 4
    assert seqs(fs, root) == list(range(4000))


def test_big_files_are_kept_and_their_rows_not_written_again(tmp_path):
    fs, root = LocalFileSystem(), str(tmp_path / "lake")
    writer = LakeWriter(fs, root, writer_id="drain")
    land(writer, [telemetry(i, pad="y" * 200) for i in range(2000)])
    (big,) = data_files(fs, root)
    land(
        writer, [telemetry(i, pad="y" * 200) for i in range(1990, 2010)]
    )  # 10 duplicates of the big file's rows
    result = compact_lake(fs, root, target_file_mb=fs.size(big) / 2**20, now=LATER)
    assert big in data_files(fs, root)
    assert (result.files_in, result.rows_in, result.rows_out) == (1, 20, 10)
    assert seqs(fs, root) == list(range(2010))
    # Now one small file of new rows sits beside the big one: nothing to fix, nothing rewritten.
    small = [p for p in data_files(fs, root) if p != big]
    again = compact_lake(fs, root, target_file_mb=fs.size(big) / 2**20, now=LATER)
    assert again.partitions_unchanged == 1 and data_files(fs, root) == sorted([big, *small])


def test_killed_between_write_and_delete_loses_nothing_and_heals(lake, monkeypatch):
    fs, root = lake
    writer = LakeWriter(fs, root, writer_id="drain")
    land(writer, [telemetry(i) for i in range(10)])
    land(writer, [telemetry(i) for i in range(10, 20)])
    before = data_files(fs, root)

    def killed(path: str) -> None:
        raise KeyboardInterrupt("worker killed")

    monkeypatch.setattr(fs, "rm_file", killed)
    with pytest.raises(KeyboardInterrupt):
        compact_lake(fs, root, now=LATER)
    monkeypatch.undo()
    # Old and new files side by side: duplicates, removable by _record_key, and no row missing.
    table = read_lake_table(fs, root)
    assert len(data_files(fs, root)) == 3 and table.num_rows == 40
    assert len(set(table.column("_record_key").to_pylist())) == 20

    compact_lake(fs, root, now=LATER)
    assert seqs(fs, root) == list(range(20))
    assert not set(data_files(fs, root)) & set(before)


def test_failed_write_removes_no_old_file(lake, monkeypatch):
    fs, root = lake
    writer = LakeWriter(fs, root, writer_id="drain")
    land(writer, [telemetry(1)])
    land(writer, [telemetry(2)])
    before = data_files(fs, root)

    def broken(self: LakeWriter, table: pa.Table, partition: Any) -> Any:
        raise KtExportWriteError("disk full", destination=self.root)

    monkeypatch.setattr(LakeWriter, "write", broken)
    with pytest.raises(KtExportWriteError):
        compact_lake(fs, root, now=LATER)
    assert data_files(fs, root) == before


def test_only_the_named_record_type_and_never_schema_or_quarantine(tmp_path):
    fs, root = LocalFileSystem(), str(tmp_path / "lake")
    writer = LakeWriter(fs, root, writer_id="drain")
    for i in range(2):
        land(writer, [telemetry(i), {"type": "trip", "id": f"t{i}", "dateEnd": "2026-11-25T10:00:00Z"}])
    writer.quarantine(b"not json", reason="test", batch_id="x")
    result = compact_lake(fs, root, record_type="trip", now=LATER)
    assert result.partitions == 1 and len(data_files(fs, root, "trip")) == 1
    assert len(data_files(fs, root)) == 2  # telemetry untouched
    assert (tmp_path / "lake" / "_quarantine").is_dir()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="target_file_mb"):
        compact_lake(LocalFileSystem(), str(tmp_path), target_file_mb=0)
    with pytest.raises(ValueError, match="min_age_seconds"):
        compact_lake(LocalFileSystem(), str(tmp_path), min_age_seconds=-1)


@pytest.mark.parametrize("rtype", ["\u6570" * 120, "_rejected", "a/b"], ids=["cjk_120", "_rejected", "slash"])
def test_a_record_type_named_by_the_layout_rule_compacts_by_its_type(tmp_path, rtype):
    fs, root = LocalFileSystem(), str(tmp_path / "lake")
    writer = LakeWriter(fs, root, writer_id="drain")
    for i in range(2):
        land(writer, [{"type": rtype, "date": "2026-11-25T10:00:00Z", "seq": i}, telemetry(i)])
    folder = record_type_folder(rtype)
    result = compact_lake(fs, root, record_type=rtype, now=LATER)
    assert result.partitions == 1 and result.rows_out == 2 and len(data_files(fs, root, folder)) == 1
    assert len(data_files(fs, root)) == 2  # telemetry untouched
    (table,) = read_lake(fs, root, record_type=rtype).values()
    assert table.column("type").to_pylist() == [rtype] * 2


def _legacy_store(root: Any, writer_id: str, fields: list[pa.Field], first_seen: float) -> None:
    """A format-2 schema file, one per writer, as the version with case tags published it."""
    schema = pa.schema(fields)
    doc = {
        "format": 2,
        "writer_id": writer_id,
        "first_seen": {f.name: first_seen for f in fields},
        "arrow_schema": base64.b64encode(schema.serialize()).decode(),
    }
    store = root / "_schema" / "telemetry"
    store.mkdir(parents=True, exist_ok=True)
    (store / f"{writer_id}.json").write_text(json.dumps(doc))


def test_a_lake_with_case_tags_gets_the_keys_own_names_after_one_compaction(tmp_path):
    root = tmp_path / "lake"
    part = root / "record_type=telemetry" / "event_date=2026-11-25"
    ts = pa.timestamp("us", tz="UTC")
    when = datetime(2026, 11, 25, 8, tzinfo=UTC)

    def f(name: str, t: pa.DataType, *path: str) -> pa.Field:
        return pa.field(name, t, metadata=path_metadata(path))

    first = [
        f("seq", pa.int64(), "seq"),
        f("speed", pa.int64(), "speed"),
        f("eventDate___c20", ts, "eventDate"),
        f("doc__ownerId___c40", pa.int64(), "doc", "ownerId"),
    ]
    later = [f("Speed___c1", pa.int64(), "Speed"), f("Speed___c1___string", pa.string(), "Speed")]
    _legacy_store(root, "w1", first, 1.0)
    _legacy_store(root, "w2", later, 2.0)
    _old_file(
        part,
        "part-20261125T080000Z-a.parquet",
        {"seq": pa.array([1]), "speed": pa.array([5]), "eventDate___c20": pa.array([when], ts)},
        1,
    )
    old = pa.table(
        [pa.array([2]), pa.array([7]), pa.array([None], pa.string()), pa.array([9])],
        schema=pa.schema([first[0], later[0], later[1], first[3]]),
    )
    pq.write_table(old, str(part / "part-20261125T090000Z-b.parquet"))

    compact_lake(LocalFileSystem(), str(root), now=LATER)

    table = pq.read_table(str(part))
    data = sorted(n for n in table.column_names if not n.startswith("_") and n != "event_date")
    assert data == ["Speed___t1", "Speed___t1___string", "doc__ownerId", "eventDate", "seq", "speed"]
    types = {fld.name: fld.type for fld in table.schema}
    assert types["eventDate"] == ts and types["Speed___t1"] == pa.int64() and types["speed"] == pa.int64()
    rows = {r["seq"]: r for r in table.to_pylist()}
    assert (rows[1]["speed"], rows[1]["eventDate"], rows[1]["Speed___t1"]) == (5, when, None)
    assert (rows[2]["Speed___t1"], rows[2]["doc__ownerId"], rows[2]["speed"]) == (7, 9, None)
    # Drains of this version write the same names into the upgraded lake.
    land(LakeWriter(LocalFileSystem(), str(root)), [telemetry(3, Speed=8, speed=6, doc={"ownerId": 4})])
    got = {n for p in (root / "record_type=telemetry").rglob("*.parquet") for n in pq.read_schema(p).names}
    assert "Speed___t1" in got and "doc__ownerId" in got and not any("___c" in n for n in got)
