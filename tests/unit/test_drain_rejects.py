"""One bad record never stops the queue: the drain with hostile records, a fake client and a real lake."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ktexport import drain as drain_module
from airflow_provider_ktexport.client import Batch
from airflow_provider_ktexport.drain import Buffer, Drain, DrainConfig
from airflow_provider_ktexport.exceptions import KtExportError, KtExportRejectsError, KtExportWriteError
from airflow_provider_ktexport.keymask import key_mask
from airflow_provider_ktexport.lake.keys import record_key
from airflow_provider_ktexport.lake.rejects import (
    MAX_DEPTH,
    land_records,
    nests_deeper_than,
    read_rejects,
    rejects_table,
)
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake, read_lake_table
from tests.unit.test_drain import FakeClient, make_batch, run, writer_for

#: Valid JSON that cannot be a row, each kind the issue names (the exact bytes must be kept).
HOSTILE = {
    "number_out_of_range": b'{"type":"telemetry","v":1e400}',
    "list_400_deep": b'{"type":"telemetry","v":' + b"[" * 400 + b"]" * 400 + b"}",
    "object_1000_deep": b'{"type":"telemetry","v":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
    "year_0_utc": b'{"type":"event","eventDate":"0001-01-01T00:30:00+01:00","id":"e1"}',
    "year_10000_utc": b'{"type":"event","eventDate":"9999-12-31T23:30:00-01:00","id":"e2"}',
    "lone_surrogate": b'{"type":"telemetry","s":"\\ud800"}',
    "not_an_object": b"[1,2,3]",
}


def batch_of(batch_id: str, raws: list[bytes]) -> Batch:
    return Batch(id=batch_id, raw_items=raws, leased_at=time.monotonic(), body_size=sum(map(len, raws)))


def good_records(n: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"type": "telemetry", "date": "2026-11-25T10:00:00Z", "seq": s, "v": 1.5}).encode()
        for s in range(start, start + n)
    ]


def rejected_files(lake: Path) -> list[Path]:
    return sorted((lake / "_rejected").rglob("*.parquet")) if (lake / "_rejected").exists() else []


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_hostile_record_is_kept_as_a_reject_and_its_batch_is_acked(tmp_path, kind):
    lake = tmp_path / "lake"
    hostile = HOSTILE[kind]
    raws = good_records(3) + [hostile] + good_records(3, start=3)
    client = FakeClient([batch_of("b1", raws), make_batch("b2", range(10, 12))], lake=lake)
    seen_at_ack: dict[str, list[Path]] = {}
    real_ack = client.ack

    def ack(batch_id):
        seen_at_ack[batch_id] = rejected_files(lake)
        return real_ack(batch_id)

    client.ack = ack
    drain = run(client, lake)
    assert drain.result.stopped == "empty"
    assert sorted(client.acks) == ["b1", "b2"]
    # The reject was written (and verified) before the DELETE of its batch.
    assert seen_at_ack["b1"]
    rejects = read_rejects(str(lake))
    assert rejects.column("_raw").to_pylist() == [hostile.decode()]
    assert rejects.column("_batch_id").to_pylist() == ["b1"]
    assert rejects.column("_error").to_pylist()[0]
    assert drain.result.rejected == 1
    assert drain.result.records == 8
    seqs = read_lake_table(str(lake)).column("seq").to_pylist()
    assert sorted(seqs) == [0, 1, 2, 3, 4, 5, 10, 11]


def test_every_hostile_kind_in_one_flush(tmp_path):
    lake = tmp_path / "lake"
    raws = good_records(5)
    for hostile in HOSTILE.values():
        raws.append(hostile)
    raws += good_records(5, start=5)
    client = FakeClient([batch_of("mixed", raws)], lake=lake)
    drain = run(client, lake)
    assert client.acks == ["mixed"]
    kept = sorted(read_rejects(str(lake)).column("_raw").to_pylist())
    assert kept == sorted(h.decode() for h in HOSTILE.values())
    assert sorted(read_lake_table(str(lake)).column("seq").to_pylist()) == list(range(10))
    assert drain.result.rejected == len(HOSTILE)


def test_rejects_say_what_is_wrong():
    landing = land_records(
        [HOSTILE["lone_surrogate"], HOSTILE["object_1000_deep"], HOSTILE["year_0_utc"]],
        ["b", "b", "b"],
        source="s",
        ingested_at=drain_module.datetime.now(drain_module.UTC),
    )
    why = {r.raw: (r.error_class, r.error) for r in landing.rejects}
    assert "surrogate" in why[HOSTILE["lone_surrogate"]][1]
    assert (
        why[HOSTILE["object_1000_deep"]]
        == (
            "NestingTooDeep",
            why[HOSTILE["object_1000_deep"]][1],
        )
        and "more than 64 levels" in why[HOSTILE["object_1000_deep"]][1]
    )
    assert why[HOSTILE["year_0_utc"]][0] == "OutOfRangeTime"
    assert landing.tables == []


def test_an_unknown_kind_of_bad_record_is_found_by_halving(monkeypatch):
    """A record that decodes but fails to build for a reason the screen does not know."""
    from airflow_provider_ktexport.lake import rejects

    real = rejects.build_tables

    def picky(raws, batch_ids, **kw):
        if any(b"poison" in r for r in raws):
            raise ValueError("cannot build poison")
        return real(raws, batch_ids, **kw)

    monkeypatch.setattr(rejects, "build_tables", picky)
    raws = good_records(37) + [b'{"type":"telemetry","x":"poison"}'] + good_records(20, start=37)
    landing = land_records(raws, ["b"] * len(raws), source="s", ingested_at=drain_module.datetime.now())
    assert [r.raw for r in landing.rejects] == [raws[37]]
    assert sum(p.table.num_rows for p in landing.tables) == 57


class MaskingClient(FakeClient):
    """A fake client that masks its key in records as the real one does (``KeyMask``)."""

    key = "s3cr3t-KEY"

    def mask_records(self, raws: list[bytes]) -> list[bytes]:
        return key_mask(self.key).records(raws)


def test_the_key_is_redacted_from_stored_rejects(tmp_path):
    lake = tmp_path / "lake"
    key = MaskingClient.key
    echoed = b'{"type":"proxy","v":1e999,"page":"https://x/v2/stream?token=' + key.encode() + b'"}'
    client = MaskingClient([batch_of("b1", [echoed])])
    run(client, lake)
    assert client.acks == ["b1"]
    stored = b"".join(p.read_bytes() for p in lake.rglob("*") if p.is_file())
    assert key.encode() not in stored
    assert read_rejects(str(lake)).column("_raw").to_pylist() == [echoed.decode().replace(key, "***")]


def test_a_valid_record_echoing_the_key_lands_masked_and_foreign_tokens_land_exactly(tmp_path):
    """Issue 18: rows, _raw and _record_key come from the masked text; other text is untouched."""
    lake = tmp_path / "lake"
    key = MaskingClient.key
    foreign = "https://files.example.com/r.csv?token=abc"
    echo = (
        b'{"type":"telemetry","seq":1,"note":"GET /v2/stream?token='
        + key.encode()
        + b'","file":"'
        + (foreign.encode() + b'"}')
    )
    client = MaskingClient([batch_of("b1", [echo])])
    run(client, lake, include_raw=True)
    assert client.acks == ["b1"]
    row = read_lake_table(str(lake)).to_pylist()[0]
    assert row["note"] == "GET /v2/stream?token=***" and row["file"] == foreign
    masked = echo.replace(key.encode(), b"***")
    assert row["_raw"] == masked.decode()
    assert row["_record_key"] == record_key(json.loads(masked))  # no hash of the key's text either
    stored = b"".join(p.read_bytes() for p in lake.rglob("*") if p.is_file())
    assert key.encode() not in stored


def test_max_reject_share_fails_the_task_after_keeping_and_acking(tmp_path):
    lake = tmp_path / "lake"
    raws = good_records(2) + [HOSTILE["number_out_of_range"]] * 2
    client = FakeClient([batch_of("b1", raws)], lake=lake)
    with pytest.raises(KtExportRejectsError, match="max_reject_share=0.25"):
        run(client, lake, max_reject_share=0.25)
    assert client.acks == ["b1"]
    assert read_rejects(str(lake)).num_rows == 2


def test_rows_that_do_not_add_up_acknowledge_nothing(tmp_path, monkeypatch):
    """The commit point: written + rejected rows per batch must equal the batch's records."""
    real = drain_module.land_records

    def loses_one(records, batch_ids, **kw):
        return real(records[:-1], batch_ids[:-1], **kw)

    monkeypatch.setattr(drain_module, "land_records", loses_one)
    lake = tmp_path / "lake"
    client = FakeClient([make_batch("b1", range(5))], lake=lake)
    with pytest.raises(KtExportError, match="do not add up"):
        run(client, lake)
    assert client.acks == []


def test_a_file_that_fails_verification_acknowledges_nothing(tmp_path):
    lake = tmp_path / "lake"

    class ShortWriter(LakeWriter):
        """Stores a file whose footer holds one row fewer than the drain wrote."""

        def _put(self, path, data):
            if path.endswith(".parquet"):
                table = pq.read_table(pa.BufferReader(data))
                buf = pa.BufferOutputStream()
                pq.write_table(table.slice(0, table.num_rows - 1), buf)
                data = buf.getvalue().to_pybytes()
            super()._put(path, data)

    client = FakeClient([make_batch("b1", range(5))], lake=lake)
    drain = Drain(
        client, ShortWriter(writer_for(lake).fs, str(lake)), DrainConfig(lease_seconds=8, flush_seconds=3)
    )
    with pytest.raises(KtExportWriteError, match="Verifying"):
        drain.run()
    assert client.acks == []


def test_no_delete_for_a_lease_that_ran_out_on_our_clock(tmp_path):
    lake = tmp_path / "lake"
    old = make_batch("stale", range(3))

    def stale():
        old.leased_at = time.monotonic() - 30  # held past the 8 s lease before the flush
        return old

    client = FakeClient([stale, make_batch("fresh", range(3, 5))], lake=lake)
    drain = run(client, lake, max_in_flight=1)
    assert client.acks == ["fresh"]
    assert drain.result.lease_expired == 1
    # Not written either: the server may have redelivered it already (exactly once as landed).
    assert sorted(read_lake_table(str(lake)).column("seq").to_pylist()) == [3, 4]


def test_a_flush_over_many_partitions_starts_early(tmp_path):
    lake = tmp_path / "lake"
    batches = []
    for day in range(1, 13):  # a backfill: each batch is one day
        raws = [
            json.dumps(
                {"type": "telemetry", "date": f"2026-10-{day:02d}T10:00:00Z", "seq": day * 10 + i}
            ).encode()
            for i in range(3)
        ]
        batches.append(batch_of(f"d{day}", raws))
    client = FakeClient(batches, lake=lake)
    drain = run(client, lake, max_in_flight=1, max_flush_partitions=4)
    assert sorted(client.acks) == sorted(b.id for b in batches)
    assert drain.result.flushes >= 3
    assert read_lake_table(str(lake)).num_rows == 36


def test_buffer_add_is_the_commit_point():
    """A batch is held with its records in one step, or not at all."""

    class Interrupting(list):
        def __len__(self):
            raise KeyboardInterrupt  # Airflow's execution_timeout lands mid-add

    buf = Buffer(("record_type", "event_date"))
    batch = Batch(id="b", raw_items=Interrupting(good_records(2)), leased_at=time.monotonic(), body_size=1)
    with pytest.raises(KeyboardInterrupt):
        buf.add(batch)
    taken = buf.take()
    assert all(list.__len__(h.raw_items) == 2 for h in taken)  # never a held batch without records


def test_buffer_counts_partitions_and_skips_undecodable_records():
    buf = Buffer(("record_type", "event_date"))
    for day in (1, 2, 3):
        buf.add(
            batch_of(f"d{day}", [json.dumps({"type": "t", "date": f"2026-01-0{day}T00:00:00Z"}).encode()] * 5)
        )
    assert buf.partitions == 3
    buf.add(batch_of("x", [HOSTILE["object_1000_deep"]]))
    assert buf.partitions == 3
    buf.take()
    assert buf.partitions == 0 and buf.records == 0


def test_read_rejects_of_a_lake_without_rejects_has_the_same_columns(tmp_path):
    lake = tmp_path / "lake"
    client = FakeClient([batch_of("b1", good_records(2) + [HOSTILE["not_an_object"]])])
    run(client, lake)
    some = read_rejects(str(lake))
    none = read_rejects(str(tmp_path / "empty"))
    assert none.num_rows == 0 and none.schema.names == some.schema.names
    assert some.column("record_type").to_pylist() == ["unknown"]
    assert read_rejects(str(lake), record_type="unknown").column("_raw").to_pylist() == ["[1,2,3]"]


def test_the_depth_limit_does_not_depend_on_the_recursion_limit():
    """A library may raise sys.setrecursionlimit: deep records are rejects all the same."""
    import sys

    old = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        landing = land_records(
            [HOSTILE["list_400_deep"], HOSTILE["object_1000_deep"], *good_records(2)],
            ["b"] * 4,
            source="s",
            ingested_at=drain_module.datetime.now(drain_module.UTC),
        )
    finally:
        sys.setrecursionlimit(old)
    assert sorted(r.error_class for r in landing.rejects) == ["NestingTooDeep", "NestingTooDeep"]
    assert sum(p.table.num_rows for p in landing.tables) == 2


def test_records_64_levels_deep_still_land():
    deep = b'{"type":"t","v":' + b'{"a":' * 62 + b"1" + b"}" * 62 + b"}"
    landing = land_records([deep], ["b"], source="s", ingested_at=drain_module.datetime.now(drain_module.UTC))
    assert landing.rejects == [] and sum(p.table.num_rows for p in landing.tables) == 1


def test_a_time_a_reject_leaves_out_of_range_is_rejected_too():
    # "note" is text beside a's plain words; once a (a year-0 eventDate) is rejected, b's note is
    # the column's only value, the column becomes a timestamp, and b's year-0 time must not land.
    a = b'{"type":"event","eventDate":"0001-01-01T00:30:00+01:00","note":"plain words","id":"a"}'
    b = b'{"type":"event","note":"0001-01-01T00:30:00+01:00","id":"b"}'
    c = b'{"type":"event","eventDate":"2026-11-25T10:00:00Z","id":"c"}'
    landing = land_records(
        [a, b, c], ["b1"] * 3, source="s", ingested_at=drain_module.datetime.now(drain_module.UTC)
    )
    assert sorted((r.raw, r.error_class) for r in landing.rejects) == [
        (a, "OutOfRangeTime"),
        (b, "OutOfRangeTime"),
    ]
    (part,) = landing.tables
    assert part.table.column("id").to_pylist() == ["c"]


def test_a_year_0_time_never_lands_after_a_reject_retypes_its_column(tmp_path):
    lake = tmp_path / "lake"
    raws = [
        b'{"type":"event","eventDate":"0001-01-01T00:30:00+01:00","note":"plain words","seq":1}',
        b'{"type":"event","note":"0001-01-01T00:30:00+01:00","seq":2}',
        *good_records(2, start=3),
    ]
    client = FakeClient([batch_of("b1", raws)], lake=lake)
    drain = run(client, lake)
    assert client.acks == ["b1"] and drain.result.rejected == 2
    assert sorted(read_rejects(str(lake)).column("_raw").to_pylist()) == sorted(r.decode() for r in raws[:2])
    assert sorted(read_lake_table(str(lake)).column("seq").to_pylist()) == [3, 4]


#: Record types that make bad folder names; all but the lone surrogate are valid records.
BAD_TYPES = {
    "lone_surrogate": b'{"type":"trip\\ud800","seq":100}',
    "cjk_120": json.dumps({"type": "\u6570" * 120, "seq": 101}, ensure_ascii=False).encode(),
    "emoji_70": json.dumps({"type": "\U0001f69a" * 70, "seq": 102}, ensure_ascii=False).encode(),
    "rejected": b'{"type":"_rejected","seq":103}',
    "quarantine": b'{"type":"_quarantine","seq":104}',
    "schema": b'{"type":"_schema","seq":105}',
}


def test_record_types_that_make_bad_names_all_land(tmp_path):
    lake = tmp_path / "lake"
    at_ack: dict[str, tuple[int, int]] = {}

    class Watching(FakeClient):
        def ack(self, batch_id):
            at_ack[batch_id] = (len(rejected_files(lake)), len(list(lake.glob("record_type=*/**/*.parquet"))))
            return super().ack(batch_id)

    answers = [batch_of(f"b{i}", good_records(4, start=10 * i) + list(BAD_TYPES.values())) for i in range(2)]
    client = Watching(answers, lake=lake)
    drain = run(client, lake, max_in_flight=1)
    assert sorted(client.acks) == ["b0", "b1"] and all(r and f for r, f in at_ack.values())
    assert drain.result.rejected == 2 and drain.result.records == 2 * 9
    rejects = read_rejects(str(lake))
    assert rejects.column("_raw").to_pylist() == [BAD_TYPES["lone_surrogate"].decode()] * 2
    tables = read_lake(str(lake))
    for kind, raw in BAD_TYPES.items():
        if kind != "lone_surrogate":
            rtype = json.loads(raw)["type"]
            (table,) = [t for t in tables.values() if rtype in t.column("type").to_pylist()]
            assert table.column("type").to_pylist() == [rtype] * 2  # the exact type, in its own folder
            assert read_lake(str(lake), record_type=rtype)  # found by its type
    names = [p.name for p in lake.rglob("*")]
    assert max(len(n.encode("utf-8")) for n in names) <= 200 + len("record_type=")
    assert not (lake / "record_type=_rejected").exists() and not (lake / "_schema" / "_rejected").exists()


# -- the nesting-depth screen -----------------------------------------------------------------------

#: Strings full of what could fool a depth count: brackets, escaped quotes, backslashes.
_TRICKY_TEXT = st.text(alphabet='{}[]"\\ab\u00e9', max_size=8)
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY_TEXT, inner, max_size=3),
    max_leaves=40,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


@settings(max_examples=400, deadline=None)
@given(value=_JSON_VALUES, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_the_depth_screen_is_exact_whatever_the_strings_hold(value, ascii_only, indent):
    text = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    depth = _depth(value)
    for limit in {0, 1, max(depth - 1, 0), depth, depth + 1}:
        assert nests_deeper_than(text, limit) == (depth > limit), (text, limit)


def _nested(levels: int, inner: bytes = b"1") -> bytes:
    """A record whose ``v`` nests ``levels`` levels below the record, lists and objects taking turns."""
    opens = b"".join(b"[" if i % 2 else b'{"a":' for i in range(levels))
    closes = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(levels)))
    return b'{"type":"telemetry","v":' + opens + inner + closes + b"}"


#: Strings that fool a bracket counter: 200 closers, then 200 openers, none of them structure.
_DECOY = b'"' + b"]}" * 100 + b"\\\\" + b"{[" * 100 + b'\\""'


@pytest.mark.parametrize(
    "company",
    [
        pytest.param(good_records(3), id="reader-path"),
        pytest.param([b'{"type":"telemetry","big":9007199254740993,"s":"x"}'], id="dict-path"),
        pytest.param([HOSTILE["lone_surrogate"], HOSTILE["number_out_of_range"]], id="screen-and-halving"),
    ],
)
def test_a_record_one_level_too_deep_is_a_reject_with_its_exact_text_on_every_path(company):
    too_deep = _nested(MAX_DEPTH, _DECOY)  # MAX_DEPTH levels below the record object itself
    just_fits = _nested(MAX_DEPTH - 1, _DECOY)
    raws = [*company, too_deep, just_fits]
    landing = land_records(
        raws, ["b"] * len(raws), source="s", ingested_at=drain_module.datetime.now(drain_module.UTC)
    )
    deep = [r for r in landing.rejects if r.error_class == "NestingTooDeep"]
    assert [r.raw for r in deep] == [too_deep]
    landed = sum(p.table.num_rows for p in landing.tables)
    assert landed + len(landing.rejects) == len(raws)
    assert just_fits not in [r.raw for r in landing.rejects]


def test_nesting_that_crashes_parsers_is_a_reject_not_a_crash():
    """pyarrow's JSON reader segfaults on nesting ~30,000 deep (measured), whatever the recursion
    limit, and msgspec does once that limit is raised far: the screen must come before both.
    A child process, so that a crash fails this test instead of killing the test run."""
    code = textwrap.dedent(
        """
        import sys, datetime
        sys.setrecursionlimit(200_000)
        from airflow_provider_ktexport.lake.rejects import land_records, rejects_table
        levels = 100_000
        deep_object = b'{"type":"telemetry","v":' + b'{"a":' * levels + b"1" + b"}" * levels + b"}"
        deep_list = b'{"type":"telemetry","v":' + b"[" * levels + b"]" * levels + b"}"
        good = b'{"type":"telemetry","v":1}'
        now = datetime.datetime.now(datetime.UTC)
        landing = land_records([deep_object, good, deep_list], ["b"] * 3, source="s", ingested_at=now)
        assert [r.raw for r in landing.rejects] == [deep_object, deep_list], landing.rejects
        table = rejects_table(landing.rejects, source="s", ingested_at=now)["telemetry"]
        assert table.column("_raw").to_pylist() == [deep_object.decode(), deep_list.decode()]
        print("ok", sum(p.table.num_rows for p in landing.tables))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["ok", "1"]


def test_a_too_deep_reject_is_stored_the_same_whatever_the_recursion_limit():
    """Its record type comes from its text and it has no record key: decoding it would depend on
    (and, far enough, crash with) the interpreter's recursion limit."""
    deep = HOSTILE["object_1000_deep"]
    now = drain_module.datetime.now(drain_module.UTC)
    stored = []
    old = sys.getrecursionlimit()
    for limit in (old, 20_000):
        sys.setrecursionlimit(limit)
        try:
            landing = land_records([deep], ["b"], source="s", ingested_at=now)
            stored.append(rejects_table(landing.rejects, source="s", ingested_at=now))
        finally:
            sys.setrecursionlimit(old)
    assert list(stored[0]) == list(stored[1]) == ["telemetry"]
    assert stored[0]["telemetry"].equals(stored[1]["telemetry"])
    assert stored[0]["telemetry"].column("_record_key").to_pylist() == [None]
