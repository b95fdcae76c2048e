"""The lake's layout (lake/layout.py): record type folders and tables, hive paths, the event day,
meta columns and the folders it reserves."""

from __future__ import annotations

import ast
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_provider_ktexport.lake import layout
from airflow_provider_ktexport.lake.layout import (
    BATCH_ID_COLUMN,
    EVENT_DATE_COLUMN,
    FLUSH_DIR,
    INGESTED_AT_COLUMN,
    MAX_NAME_BYTES,
    PARTITION_KEYS,
    PROBE_DIR,
    QUARANTINE_DIR,
    RAW_COLUMN,
    RECORD_KEY_COLUMN,
    REJECTED_DIR,
    SCHEMA_DIR,
    SOURCE_COLUMN,
    TIMESTAMP,
    UNKNOWN_DAY,
    LakeRoot,
    UnsafePartitionError,
    dataset_dir,
    event_date,
    event_day_value,
    folder_table,
    hive_path,
    is_partition_segment,
    is_safe_folder_name,
    parse_hive_path,
    record_type_folder,
    record_type_of_folder,
    record_type_table,
    schema_folder,
    type_dir,
    type_dir_folder,
)
from airflow_provider_ktexport.lake.partitions import record_type_of
from airflow_provider_ktexport.lake.rejects import record_type_of_raw

ORDINARY = ("telemetry", "trip", "changenotification", "event", "diagnostic", "driverlog")
CJK_120 = "\u6570" * 120
EMOJI_70 = "\U0001f69a" * 70
#: Types that made names a file system or a catalog refuses, or that the lake reserves.
BAD = (
    "trip\ud800",
    "\udfff",
    CJK_120,
    EMOJI_70,
    "\u00e9" * 150,
    "x" * 300,
    "_rejected",
    "_quarantine",
    "_schema",
    "_anything",
    "__",
    ".hidden",
    "..",
    "a/b",
    "a%2Fb",
)


def test_ordinary_types_keep_their_folder_and_table():
    for rtype in ORDINARY:
        assert record_type_folder(rtype) == rtype
        assert record_type_table(rtype) == rtype
        assert schema_folder(record_type_folder(rtype)) == f"{SCHEMA_DIR}/{rtype}"


def test_names_of_earlier_versions_stay_as_they_were():
    # Fixed values: a lake written before keeps finding its folders, schema store and tables.
    assert record_type_folder("a/b") == "a%2Fb"
    assert schema_folder("a%2Fb") == "_schema/a%252Fb"
    assert record_type_table("Trip") == "trip_0eba0734"
    long = "y" * 150
    assert record_type_folder(long) == "y" * 100 + "~86adac6fe1875f52"


@pytest.mark.parametrize("rtype", BAD, ids=lambda t: t.encode("utf-8", "backslashreplace").decode()[:20])
def test_every_name_is_valid_short_and_not_reserved(rtype):
    for name in (
        record_type_folder(rtype),
        record_type_table(rtype),
        schema_folder(record_type_folder(rtype)),
    ):
        encoded = name.encode("utf-8")  # a lone surrogate would raise here
        assert len(encoded) <= MAX_NAME_BYTES + len(SCHEMA_DIR) + 1
    folder = record_type_folder(rtype)
    assert len(folder.encode("utf-8")) <= MAX_NAME_BYTES and is_safe_folder_name(folder)
    assert not folder.startswith(("_", ".")) and not record_type_table(rtype).startswith("_")
    assert record_type_table(rtype) not in (REJECTED_DIR, QUARANTINE_DIR, SCHEMA_DIR)


def test_cjk_and_emoji_types_fit_in_200_bytes():
    for rtype in (CJK_120, EMOJI_70):
        folder = record_type_folder(rtype)
        assert len(folder.encode("utf-8")) <= 200
        assert rtype.startswith(folder.rsplit("~", 1)[0])  # readable: the type's own beginning
    assert len(record_type_folder("\u6570" * 60).encode("utf-8")) == 180  # short enough: uncut


def test_reserved_names_are_escaped_and_decode_back():
    for rtype in ("_rejected", "_quarantine", "_schema", "_x"):
        folder = record_type_folder(rtype)
        assert folder == "%5F" + rtype[1:]
        assert record_type_of_folder(folder) == rtype


def test_a_lone_surrogate_gets_a_valid_folder():
    folder = record_type_folder("trip\ud800")
    assert folder == "trip%ED%A0%80"
    assert record_type_of_folder(folder) == "trip\ufffd\ufffd\ufffd"  # as DuckDB and pyarrow read it
    # The rejects table finds the folder from the record's text, which msgspec refuses to decode.
    assert record_type_of_raw(b'{"type":"trip\\ud800","v":1}') == folder


def test_distinct_long_types_get_distinct_names():
    types = [CJK_120, CJK_120[:-1] + "x", EMOJI_70, EMOJI_70 + "!", "x" * 300, "x" * 299 + "y"]
    assert len({record_type_folder(t) for t in types}) == len(types)
    assert len({record_type_table(t) for t in types}) == len(types)
    # Escaping keeps types apart that a plain replacement would merge.
    assert len({record_type_folder(t) for t in ("a/b", "a%2Fb", "a%252Fb", "_x", "%5Fx")}) == 5


def test_names_round_trip_and_are_stable():
    for rtype in (*ORDINARY, "_rejected", "a/b", "Tr\u00efp #1", "\u6570" * 60, ".x"):
        assert record_type_of_folder(record_type_folder(rtype)) == rtype
    for rtype in BAD:
        assert record_type_folder(rtype) == record_type_folder(rtype)
        assert record_type_table(rtype) == folder_table(record_type_folder(rtype))
        # A cut name read back names the same folder again (read_lake's keys work as filters).
        back = record_type_of_folder(record_type_folder(rtype))
        if "\ufffd" not in back and len(back) <= 100:
            assert record_type_folder(back) == record_type_folder(rtype)


def test_the_engine_keys_records_by_their_folder():
    for rtype in (*BAD, *ORDINARY):
        assert record_type_of({"type": rtype}) == record_type_folder(rtype)
        raw = json.dumps({"type": rtype}).encode()
        assert record_type_of_raw(raw) == record_type_folder(rtype)
        # A record that does not decode (a lone surrogate elsewhere) is filed under its type too.
        assert record_type_of_raw(raw[:-1] + b',"s":"\\ud800"}') == record_type_folder(rtype)
    assert record_type_of({"type": ""}) == record_type_of({"type": 5}) == record_type_of({}) == "unknown"


# -- partitions, meta columns and the event day: one owner -------------------------------------------


def test_a_hive_path_parses_back_to_its_partition() -> None:
    partition = {"record_type": record_type_folder("a/b=c"), "event_date": "2026-11-25"}
    rel = hive_path(partition)
    assert rel == "record_type=a%2Fb%3Dc/event_date=2026-11-25"
    assert parse_hive_path(rel) == partition
    assert parse_hive_path(hive_path(partition, REJECTED_DIR)) == partition  # the area is no partition
    assert all(is_partition_segment(s) for s in rel.split("/"))
    assert type_dir_folder(f"/lake/{type_dir('a%2Fb')}/") == "a%2Fb"
    assert type_dir_folder("/lake/_schema") is None


@pytest.mark.parametrize("value", ["../etc", "a/b", "k=v", "", ".."])
def test_a_hive_path_refuses_an_unsanitised_value(value: str) -> None:
    with pytest.raises(UnsafePartitionError, match="not sanitised") as err:
        hive_path({"record_type": value})
    assert (err.value.key, err.value.value) == ("record_type", value)


def test_a_dataset_is_the_record_type_folder_or_the_root() -> None:
    assert dataset_dir({"record_type": "t", "event_date": "2026-11-25"}) == "record_type=t"
    assert dataset_dir({"event_date": "2026-11-25", "record_type": "t"}) == ""
    assert dataset_dir({"record_type": "t", "ingest_date": "2026-11-25"}, REJECTED_DIR) == REJECTED_DIR


@pytest.mark.parametrize(
    ("time", "day"),
    [
        ("2026-11-25T23:30:00-05:00", "2026-11-26"),  # west of UTC, late evening: the next UTC day
        ("2026-11-26T00:30:00+05:00", "2026-11-25"),  # east of UTC, just past midnight: the day before
        ("2026-11-25T23:59:59.999999-00:01", "2026-11-26"),
        ("2026-11-25 23:30-0500", "2026-11-26"),
        ("2026-11-25T10:00:00", "2026-11-25"),  # no zone: read as UTC
        ("2026-11-25", "2026-11-25"),
    ],
)
def test_the_event_day_is_the_utc_day_for_parquet_the_buffer_and_iceberg(time: str, day: str) -> None:
    """One rule for the ``event_date`` folder, the buffer's count of files and Iceberg's column."""
    from airflow_provider_ktexport.drain.buffer import partitions_of
    from airflow_provider_ktexport.lake.schema import build_tables

    raw = json.dumps({"type": "t", "date": time}).encode()
    assert event_date({"date": time}) == day
    (part,) = build_tables([raw], ["b"], source="s", ingested_at=datetime(2026, 12, 1, tzinfo=UTC))
    assert part.partition["event_date"] == day
    assert partitions_of([raw], ("record_type", "event_date")) == {("t", day)}
    assert event_day_value(part.partition["event_date"]) == date.fromisoformat(day)


@settings(max_examples=300, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.sampled_from(["Z", "+05:30"]),
)
def test_the_event_day_is_written_as_strftime_writes_it(when: datetime, zone: str) -> None:
    """``utc_day`` writes days by ``date.isoformat`` for speed: the same text as the strftime every
    version wrote, including the unpadded years below 1000 (existing lakes' folders)."""
    text = when.isoformat() + zone
    parsed = layout.parse_time(text)
    assert parsed is not None
    assert layout.utc_day(text) == parsed.strftime("%Y-%m-%d")


def _day_by_datetime(text: str) -> str | None:
    """``utc_day`` as every version computed it: through a parsed datetime."""
    parsed = layout.parse_time(text)
    if parsed is None:
        return None
    return parsed.date().isoformat() if parsed.year >= 1000 else parsed.strftime("%Y-%m-%d")


# Times of the API's UTC shape with each field anywhere in its digits' range (impossible dates,
# hours, minutes and seconds), fractions of 0-9 digits, either separator, and a trailing newline
# (which ``$`` in the loose pattern lets through).
_NEAR_UTC_TIMES = st.builds(
    "{:04d}-{:02d}-{:02d}{}{:02d}:{:02d}{}{}Z{}".format,
    st.integers(0, 9999),
    st.integers(0, 13),
    st.integers(0, 32),
    st.sampled_from(["T", " ", "t"]),
    st.integers(0, 25),
    st.integers(0, 61),
    st.one_of(st.just(""), st.integers(0, 61).map(":{:02d}".format)),
    st.one_of(st.just(""), st.text("0123456789", max_size=9).map(lambda f: "." + f)),
    st.sampled_from(["", "", "", "\n"]),
)


@settings(max_examples=2000, deadline=None)
@given(_NEAR_UTC_TIMES)
def test_the_utc_day_of_a_z_time_is_read_from_its_text_as_a_datetime_would_give_it(text: str) -> None:
    """``utc_day`` takes a ``...Z`` time's day from its first ten characters (no datetime): the same
    answer as parsing it, for real and impossible dates and times alike."""
    assert layout.utc_day(text) == _day_by_datetime(text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-29T10:00:00Z",  # not a leap year
        "2024-02-29T10:00:00Z",
        "0999-12-31T23:59:59Z",  # below year 1000: strftime's unpadded year
        "0000-01-01T00:00:00Z",
        "2026-11-25T24:00:00Z",
        "2026-11-25T23:59:60Z",
        "2026-11-25T10:00Z",
        "2026-11-25 10:00:00.1234567Z",
        "2026-11-25T10:00:00Z\n",
    ],
)
def test_the_utc_day_of_edge_times_matches_the_datetime_rule(text: str) -> None:
    assert layout.utc_day(text) == _day_by_datetime(text)


def test_a_record_types_folder_is_remembered_only_for_text() -> None:
    assert layout.record_type_folder("a/b") == layout.record_type_folder("a/b") == "a%2Fb"
    assert layout.record_type_folder(["unhashable"]) == layout.UNKNOWN_TYPE


def test_an_unknown_event_day_is_null_in_iceberg() -> None:
    assert event_date({"date": "garbage"}) == UNKNOWN_DAY
    assert event_day_value(UNKNOWN_DAY) is None and event_day_value(None) is None


def test_the_utc_timestamp_type_is_defined_once() -> None:
    from airflow_provider_ktexport.lake import naming, rejects, schema, types

    assert TIMESTAMP == pa.timestamp("us", tz="UTC")
    assert types.TIMESTAMP is TIMESTAMP and schema.TIMESTAMP is TIMESTAMP
    assert naming.VARIANT_TAGS[TIMESTAMP] == "timestamp"
    assert rejects.REJECTS_SCHEMA.field(INGESTED_AT_COLUMN).type == TIMESTAMP


def test_the_lake_modules_spell_no_folder_or_meta_column_of_their_own() -> None:
    """The layout's names live in layout.py alone: another lake module spelling one as a string
    (a path part or a column name) is a second owner that can drift, as the event day and the
    hive paths did."""
    owned = {
        SCHEMA_DIR,
        REJECTED_DIR,
        QUARANTINE_DIR,
        PROBE_DIR,
        FLUSH_DIR,
        *PARTITION_KEYS,
        EVENT_DATE_COLUMN,
    }
    owned |= {RECORD_KEY_COLUMN, BATCH_ID_COLUMN, SOURCE_COLUMN, INGESTED_AT_COLUMN, RAW_COLUMN}
    prefixes = tuple(f"{k}=" for k in PARTITION_KEYS)
    found = [
        f"{path.name}:{line}: {value!r}"
        for path in sorted(Path(layout.__file__).parent.glob("*.py"))
        if path.name != "layout.py"
        for line, value in _strings(ast.parse(path.read_text()))
        if value in owned or value.startswith(prefixes)
    ]
    assert found == []


def _strings(tree: ast.Module) -> list[tuple[int, str]]:
    """The string constants of a module, but those of its ``__all__`` (names of functions)."""
    exported = {
        id(elt)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
        for elt in ast.walk(node.value)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in exported
    ]


def test_a_lake_root_joins_paths_and_spells_uris() -> None:
    lake = LakeRoot.open("memory://bucket/lake/")
    assert lake.root == "/bucket/lake"
    assert lake.join(type_dir("t"), "") == "/bucket/lake/record_type=t"
    assert lake.uri_of(lake.join("x")) == "memory:///bucket/lake/x"
    prefixed = LakeRoot(lake.fs, "/bucket/lake", uri_prefix="s3://b/lake/")
    assert prefixed.uri_of(prefixed.schema_dir("t")) == "s3://b/lake/_schema/t"
    assert prefixed.relative(prefixed.quarantine_file("d", ".body")) == "_quarantine/d.body"
    with pytest.raises(ValueError, match="root"):
        LakeRoot.open(lake.fs)
