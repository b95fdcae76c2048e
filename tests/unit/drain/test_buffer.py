"""The buffer's partition count: the files a flush of the held batches writes, exactly."""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime

import pytest

from airflow_provider_ktexport.drain.buffer import Buffer, partitions_of
from airflow_provider_ktexport.lake.schema import build_tables
from airflow_provider_ktexport.transport.sync_client import Batch
from tests.unit.drain.support import HOSTILE, batch_of, good_records


def _batch(batch_id: str, records: list[dict]) -> Batch:
    raws = [json.dumps(r).encode() for r in records]
    return Batch(id=batch_id, raw_items=raws, leased_at=time.monotonic(), body_size=sum(map(len, raws)))


def _backfill(n: int, days: int, types: int, seed: int) -> list[dict]:
    """Records whose times spread over ``days`` days in random order (a backfill's batch)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_700_000_000 + rng.randrange(days * 86_400)))
        out.append({"type": f"t{rng.randrange(types)}", "date": stamp, "i": i})
    return out


def _files_written(records: list[dict], partition_by: tuple[str, ...]) -> int:
    raws = [json.dumps(r).encode() for r in records]
    tables = build_tables(
        raws,
        ["b"] * len(raws),
        source="s",
        ingested_at=datetime.now(UTC),
        partition_by=partition_by,
        include_raw=False,
        known_schema=lambda _t: None,
    )
    return len(tables)


def test_a_batch_spread_over_hundreds_of_days_is_counted_exactly():
    """A 500-record batch over 400 days and 5 types writes ~440 files; 8 samples saw 8 at most."""
    records = _backfill(500, 400, 5, seed=1)
    buf = Buffer(("record_type", "event_date"))
    buf.add(_batch("b1", records))
    assert buf.partitions == _files_written(records, ("record_type", "event_date")) > 400


def test_batches_count_only_the_partitions_they_add():
    first, second = _backfill(300, 50, 2, seed=2), _backfill(300, 50, 2, seed=3)
    buf = Buffer(("record_type", "event_date"))
    buf.add(_batch("b1", first))
    alone = buf.partitions
    buf.add(_batch("b2", second))
    assert alone < buf.partitions == _files_written(first + second, ("record_type", "event_date"))


def test_the_count_follows_the_event_day_rules_of_the_tables():
    """UTC day of the first time that parses (an offset moves the day), the record type's folder
    even when it is not a partition key, ``unknown`` without a time."""
    records = [
        {"type": "a", "date": "2026-01-01T23:30:00-05:00"},  # 2026-01-02 in UTC
        {"type": "a", "date": "2026-01-02T04:00:00Z"},
        {"type": "a", "date": "not a time", "received": "2026-01-03T00:00:00Z"},
        {"type": "b", "date": 5},
        {"type": "b"},
        {"type": 7, "date": "2026-01-03"},
    ]
    for partition_by in [("record_type", "event_date"), ("event_date",), ("record_type", "ingest_date")]:
        raws = [json.dumps(r).encode() for r in records]
        assert len(partitions_of(raws, partition_by)) == _files_written(records, partition_by), partition_by


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


def test_buffer_counts_the_bytes_it_holds_and_take_resets_them():
    buffer = Buffer(("record_type",))
    first, second = good_records(3), good_records(2, start=3)
    buffer.add(batch_of("a", first))
    buffer.add(batch_of("b", second))
    assert buffer.bytes == sum(map(len, first + second))
    buffer.take()
    assert buffer.bytes == 0 and buffer.records == 0


def test_buffer_counts_bytes_per_record_type_for_the_flush_cap():
    """The largest record type's bytes bound what building a flush costs (pace.FLUSH_BYTES);
    a record that is a reject (undecodable, too deep) counts in the total only."""
    buf = Buffer(("record_type", "event_date"))
    small = [json.dumps({"type": "a", "date": "2026-01-01T00:00:00Z", "i": i}).encode() for i in range(3)]
    large = [json.dumps({"type": "b", "i": i, "pad": "x" * 100}).encode() for i in range(2)]
    buf.add(batch_of("one", small + large))
    assert buf.largest_type_bytes == sum(map(len, large))
    buf.add(batch_of("two", small * 20 + [b"{not json", HOSTILE["object_1000_deep"]]))
    assert buf.largest_type_bytes == 21 * sum(map(len, small))
    assert buf.bytes == 21 * sum(map(len, small)) + sum(map(len, large)) + 9 + len(
        HOSTILE["object_1000_deep"]
    )
    buf.take()
    assert buf.largest_type_bytes == 0


def test_the_flush_reuses_the_types_the_buffer_read_unless_a_record_changed():
    from airflow_provider_ktexport.drain.buffer import record_types_in

    buf = Buffer(("record_type", "event_date"))
    raws = [b'{"type":"a/b"}', b"{not json", b'{"type":7}', b'{"x":1}']
    buf.add(batch_of("one", raws))
    (held,) = buf.take()
    assert list(held.record_types) == ["a%2Fb", None, "unknown", "unknown"]
    assert record_types_in([held], list(raws)) == ["a%2Fb", None, "unknown", "unknown"]
    masked = [bytes(bytearray(raws[0])), *raws[1:]]  # another object: the key mask rewrote it
    assert record_types_in([held], masked) == [None, None, "unknown", "unknown"]
