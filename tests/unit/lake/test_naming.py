"""Column naming: every key path one reversible column name, case twins, partition-like keys."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ktexport.lake.naming import (
    NameAssigner,
    assign_name,
    base_name,
    is_meta_column,
    twin_name,
    twin_tag,
    variant_tag,
    variant_type,
)
from airflow_provider_ktexport.lake.schema import (
    META_COLUMNS,
    TIMESTAMP,
    column_name,
    column_path,
    record_key,
    variant_name,
)
from airflow_provider_ktexport.lake.writer import LakeWriter
from tests.unit.lake.build_support import by_path, one_table

# -- naming ------------------------------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=5).map(tuple))
def test_column_name_round_trips_for_any_path(path: tuple[str, ...]) -> None:
    name = column_name(path)
    assert column_path(name) == path
    assert name and not name.startswith("_") and not name.endswith("_")
    assert name.lower() not in ("record_type", "event_date", "ingest_date")
    # A data column is never mistaken for a variant, and its variants lead back to it.
    assert variant_tag(name) is None and base_name(name) == name
    for t in (pa.string(), pa.float64(), TIMESTAMP):
        v = variant_name(name, t)
        assert base_name(v) == name and variant_type(v) == t and column_path(v) == path


_KEYS = st.text(alphabet="aAbB_.%é É\u212aK", max_size=4)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.lists(_KEYS, min_size=1, max_size=3).map(tuple), min_size=2, max_size=4, unique=True))
def test_paths_published_in_turn_never_share_a_name_even_lower_cased(paths: list[tuple[str, ...]]) -> None:
    names: list[str] = []
    for p in paths:
        names.append(assign_name(p, names))
    assert len({n.lower() for n in names}) == len(names)
    assert [column_path(n) for n in names] == paths
    # A path already published keeps its name, whatever was published after it.
    assert [assign_name(p, names) for p in paths] == names
    # Nor does a variant of one ever equal (case-insensitively) another's name.
    assert not {variant_name(n, pa.string()).lower() for n in names} & {n.lower() for n in names}


def _assign_name_as_it_was(path: tuple[str, ...], published: list[str]) -> str:
    """assign_name before NameAssigner (the oracle): every published name decoded per call."""
    taken = set()
    for name in published:
        if is_meta_column(name):
            continue
        if variant_tag(name) is None and column_path(name) == path:
            return name
        taken.add(name.lower())
    n, name = 0, column_name(path)
    while name.lower() in taken:
        n += 1
        name = twin_name(path, n)
    return name


_NAMES = st.lists(_KEYS, min_size=1, max_size=3).map(tuple).map(column_name) | st.sampled_from(
    ["_source", "_record_key", "record_type", "a___string", "A___t1", "a___t1___double", "Speed___c20"]
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(_NAMES, max_size=6),
    st.lists(st.lists(_KEYS, min_size=1, max_size=3).map(tuple), min_size=1, max_size=6),
)
def test_name_assigner_names_as_assign_name_did(published: list[str], paths: list[tuple[str, ...]]) -> None:
    """Differential: naming columns one after the other (a publish) gives the names the per-call
    loop gave, over any published names (twins, variants, metadata, legacy case tags)."""
    names, expected = NameAssigner(published), list(published)
    for path in paths:
        name = names.assign(path)
        assert name == _assign_name_as_it_was(path, expected)
        names.add(name)
        expected.append(name)


def test_naming_examples() -> None:
    assert column_name(("location", "lat")) == "location__lat"
    assert column_name(("a.b",)) == "a%2Eb"
    assert column_name(("a__b",)) == "a%5F%5Fb"
    assert column_name(("_record_key",)) == "%5Frecord_key"
    assert column_name(("type",)) == "type"  # record fields keep their names...
    assert column_name(("record_type",)) == "%72ecord_type"  # ...unless they equal a partition key
    assert column_name(("",)) == "%-"
    assert column_name(("a/b", "x%")) == "a%2Fb__x%25"
    # A key keeps its spelling: the vendor's camelCase field is the column an analyst types.
    assert column_name(("Speed",)) == "Speed"
    assert column_name(("eventDate",)) == "eventDate"
    assert column_name(("doc", "ownerId")) == "doc__ownerId"
    assert column_name(("Öl",)) == "%C3%96l"  # non-ASCII capitals are escaped (engines fold them apart)
    assert variant_name("counters__hours", pa.string()) == "counters__hours___string"
    # dlt's spelling would be a real nested field here; ours cannot be.
    assert column_name(("counters", "hours", "v_double")) == "counters__hours__v_double"
    assert column_name(("counters", "hours", "_string")) == "counters__hours__%5Fstring"
    # Names of earlier versions (case tags) still decode to their key path.
    assert column_path("eventDate___c20") == ("eventDate",)
    assert column_path("location__Speed___c100___string") == ("location", "Speed")


def test_a_later_case_twin_gets_a_twin_tag() -> None:
    assert assign_name(("speed",), []) == "speed"
    assert assign_name(("Speed",), ["speed"]) == "Speed___t1"
    assert assign_name(("SPEED",), ["speed", "Speed___t1", "Speed___t1___string"]) == "SPEED___t2"
    assert assign_name(("Speed",), ["speed", "Speed___t1"]) == "Speed___t1"  # published: kept
    assert assign_name(("speed",), ["Speed", "speed___t1"]) == "speed___t1"
    assert assign_name(("_source",), ["_source"]) == "%5Fsource"  # metadata columns are no key's
    assert twin_tag("Speed___t1___double") == "___t1" and twin_tag("Speed") == ""
    assert (
        column_path("Speed___t1___double") == ("Speed",) and base_name("Speed___t1___double") == "Speed___t1"
    )


def test_dotted_double_underscore_and_nested_keys_get_distinct_columns() -> None:
    table = one_table([{"type": "t", "a.b": 1, "a__b": 2, "a": {"b": 3}}])
    cols = by_path(table)
    assert {p: table.column(f.name)[0].as_py() for p, f in cols.items() if p[0] != "type"} == {
        ("a.b",): 1,
        ("a__b",): 2,
        ("a", "b"): 3,
    }


def test_keys_differing_in_case_stay_distinct_case_insensitively(tmp_path: Path) -> None:
    built = one_table([{"type": "t", "Speed": 1, "speed": 2, "SPEED": 3}])
    # The lake decides the twins as it publishes them: the first spelling keeps its name.
    written = LakeWriter(LocalFileSystem(), str(tmp_path)).write(built, {"record_type": "t"})
    table = pq.read_table(written.path)
    data = [n for n in table.column_names if n not in META_COLUMNS]
    assert sorted(data) == ["SPEED", "Speed___t1", "speed___t2", "type"]
    assert len({n.lower() for n in data}) == len(data)
    cols = by_path(table)
    assert table.column(cols[("speed",)].name)[0].as_py() == 2
    assert table.column(cols[("Speed",)].name)[0].as_py() == 1
    assert table.column(cols[("SPEED",)].name)[0].as_py() == 3
    for path, field in cols.items():
        assert column_path(field.name) == path


def test_tables_spell_keys_as_sent_and_leave_twins_to_the_schema_store() -> None:
    alone = one_table([{"type": "t", "speed": 3, "Speed": 4, "eventDate": "x"}])
    cols = by_path(alone)
    assert (cols[("speed",)].name, cols[("Speed",)].name, cols[("eventDate",)].name) == (
        "speed",
        "Speed",
        "eventDate",
    )


def test_record_fields_named_like_partitions_or_metadata_are_kept() -> None:
    rec = {
        "type": "t",
        "date": "2026-01-02T03:04:05Z",
        "record_type": "x",
        "_record_key": "mine",
        "event_date": 5,
    }
    table = one_table([rec])
    cols = by_path(table)
    assert table.column(cols[("type",)].name)[0].as_py() == "t"
    assert table.column(cols[("record_type",)].name)[0].as_py() == "x"
    assert table.column(cols[("_record_key",)].name)[0].as_py() == "mine"
    assert table.column(cols[("event_date",)].name)[0].as_py() == 5
    assert table.column("_record_key")[0].as_py() == record_key(rec)
    assert cols[("date",)].name == "date"
    assert table.column("date")[0].as_py() == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
