"""How a record type becomes a folder and an Iceberg table name (lake/layout.py)."""

from __future__ import annotations

import json

import pytest

from airflow_provider_ktexport.lake.layout import (
    MAX_NAME_BYTES,
    QUARANTINE_DIR,
    REJECTED_DIR,
    SCHEMA_DIR,
    folder_table,
    is_safe_folder_name,
    record_type_folder,
    record_type_of_folder,
    record_type_table,
    schema_folder,
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
