"""lake.rejects: which records cannot be rows, and why (the screen, the halving, the depth limit)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ktexport.lake.record_limits import too_deep_positions
from airflow_provider_ktexport.lake.rejects import (
    MAX_DEPTH,
    land_records,
    nests_deeper_than,
    rejects_table,
)
from tests.unit.drain.support import (
    HOSTILE,
    good_records,
)


def test_rejects_say_what_is_wrong():
    landing = land_records(
        [HOSTILE["lone_surrogate"], HOSTILE["object_1000_deep"], HOSTILE["year_0_utc"]],
        ["b", "b", "b"],
        source="s",
        ingested_at=datetime.now(UTC),
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
    landing = land_records(raws, ["b"] * len(raws), source="s", ingested_at=datetime.now())
    assert [r.raw for r in landing.rejects] == [raws[37]]
    assert sum(p.table.num_rows for p in landing.tables) == 57


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
            ingested_at=datetime.now(UTC),
        )
    finally:
        sys.setrecursionlimit(old)
    assert sorted(r.error_class for r in landing.rejects) == ["NestingTooDeep", "NestingTooDeep"]
    assert sum(p.table.num_rows for p in landing.tables) == 2


def test_records_64_levels_deep_still_land():
    deep = b'{"type":"t","v":' + b'{"a":' * 62 + b"1" + b"}" * 62 + b"}"
    landing = land_records([deep], ["b"], source="s", ingested_at=datetime.now(UTC))
    assert landing.rejects == [] and sum(p.table.num_rows for p in landing.tables) == 1


def test_a_time_a_reject_leaves_out_of_range_is_rejected_too():
    # "note" is text beside a's plain words; once a (a year-0 eventDate) is rejected, b's note is
    # the column's only value, the column becomes a timestamp, and b's year-0 time must not land.
    a = b'{"type":"event","eventDate":"0001-01-01T00:30:00+01:00","note":"plain words","id":"a"}'
    b = b'{"type":"event","note":"0001-01-01T00:30:00+01:00","id":"b"}'
    c = b'{"type":"event","eventDate":"2026-11-25T10:00:00Z","id":"c"}'
    landing = land_records([a, b, c], ["b1"] * 3, source="s", ingested_at=datetime.now(UTC))
    assert sorted((r.raw, r.error_class) for r in landing.rejects) == [
        (a, "OutOfRangeTime"),
        (b, "OutOfRangeTime"),
    ]
    (part,) = landing.tables
    assert part.table.column("id").to_pylist() == ["c"]


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
    landing = land_records(raws, ["b"] * len(raws), source="s", ingested_at=datetime.now(UTC))
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
    now = datetime.now(UTC)
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


def test_land_records_given_the_depth_screen_lands_what_it_lands_screening_itself():
    """Differential: the drain's buffer screens nesting as a batch joins and the flush hands the
    positions over; the tables, keys and rejects are those of land_records screening itself."""
    raws = [*good_records(6), *HOSTILE.values(), *good_records(4, start=6), HOSTILE["object_1000_deep"]]
    batch_ids = [f"b{j % 3}" for j in range(len(raws))]
    now = datetime.now(UTC)
    deep = too_deep_positions(raws)
    assert deep  # the corpus holds records nested too deep, long and short
    given = land_records(raws, batch_ids, too_deep=deep, source="s", ingested_at=now)
    itself = land_records(raws, batch_ids, source="s", ingested_at=now)
    assert given.rejects == itself.rejects
    assert [(p.partition, p.table) for p in given.tables] == [(p.partition, p.table) for p in itself.tables]
