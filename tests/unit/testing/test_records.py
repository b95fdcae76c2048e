"""The emulator's record generator: realistic, deterministic, drifting."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from airflow_provider_ktexport.testing.records import KNOWN_TYPES, UNKNOWN_TYPES, RecordGenerator, iso_utc


def _size(record: dict) -> int:
    return len(json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode())


def test_all_types_present_in_a_realistic_mix() -> None:
    records = RecordGenerator(seed=1).records(1, 2000)
    counts = Counter(r["type"] for r in records)
    assert set(counts) == KNOWN_TYPES | UNKNOWN_TYPES
    assert counts["telemetry"] > len(records) / 2
    unknown_share = sum(counts[t] for t in UNKNOWN_TYPES) / len(records)
    assert 0.01 < unknown_share < 0.08


def test_records_carry_the_documented_fields() -> None:
    by_type = {r["type"]: r for r in RecordGenerator(seed=2).records(1, 500)}
    tel = by_type["telemetry"]
    assert {
        "date",
        "owner",
        "origin",
        "asset",
        "location",
        "telemetry",
        "counters",
        "io",
        "zones",
        "received",
    } <= set(tel)
    assert {"lat", "lon", "speed", "heading", "age", "address", "gc"} <= set(tel["location"])
    assert {"ignition", "odo_counter", "voltages"} <= set(tel["telemetry"])
    assert {"odometer", "hours"} <= set(tel["counters"])
    trip = by_type["trip"]
    assert {"id", "tripType", "dateStart", "dateEnd", "start", "end"} <= set(trip)
    event = by_type["event"]
    assert {"id", "eventDate", "eventClass", "eventType", "origin", "details"} <= set(event)
    assert "id" in event["details"]["asset"]
    change = by_type["changenotification"]
    assert change["operation"] in {"added", "modified", "deleted"}
    assert {"id", "type", "ownerId"} <= set(change["doc"])


def test_some_events_embed_a_whole_telemetry_record() -> None:
    events = [r for r in RecordGenerator(seed=3).records(1, 2000) if r["type"] == "event"]
    embedded = [e for e in events if "telemetry" in e["details"]]
    assert embedded and len(embedded) < len(events)
    assert embedded[0]["details"]["telemetry"]["type"] == "telemetry"


def test_same_seed_same_records_whatever_the_order() -> None:
    a = RecordGenerator(seed=7).records(1, 300)
    b = RecordGenerator(seed=7)
    assert [b.record(s) for s in range(300, 0, -1)][::-1] == a
    assert RecordGenerator(seed=8).records(1, 300) != a


def test_seqs_are_unique_and_consecutive() -> None:
    records = RecordGenerator(seed=0).records(10, 1000)
    assert [r["emulator_seq"] for r in records] == list(range(10, 1010))


def test_records_are_realistically_sized() -> None:
    sizes = [_size(r) for r in RecordGenerator(seed=4).records(1, 2000)]
    mean = sum(sizes) / len(sizes)
    assert 600 <= mean <= 1200
    assert max(sizes) < 4096


def test_timestamps_are_iso_utc_over_a_few_days() -> None:
    records = RecordGenerator(seed=5).records(1, 2000)
    dates = [r["date"] for r in records if "date" in r]
    canonical = [d for d in dates if len(d) == 24 and d.endswith("Z") and d[19] == "."]
    assert len(canonical) / len(dates) > 0.9
    days = {d[:10] for d in dates}
    assert 2 <= len(days) <= 5
    assert iso_utc(1795392000123) == "2026-11-23T00:00:00.123Z"


def test_fields_drift_after_some_records() -> None:
    gen = RecordGenerator(seed=6, drift_after=500)
    early = [r for r in gen.records(1, 500) if r["type"] == "telemetry"]
    late = [r for r in gen.records(501, 500) if r["type"] == "telemetry"]
    assert not any("can_fuel_level" in r["io"] for r in early)
    assert all("can_fuel_level" in r["io"] for r in late)
    # An int field later carries floats.
    assert all(isinstance(r["counters"]["hours"], int) for r in early)
    assert any(isinstance(r["counters"]["hours"], float) for r in late)


def test_returned_records_do_not_share_nested_objects() -> None:
    gen = RecordGenerator(seed=0)
    a, b = gen.records(1, 2)
    a["owner"]["name"] = "changed"
    assert gen.record(2)["owner"]["name"] != "changed"
    assert b["owner"]["name"] != "changed"


# -- hostile records ---------------------------------------------------------------------------------


def test_each_hostile_kind_is_the_documented_text() -> None:
    import math

    from airflow_provider_ktexport.testing.records import HOSTILE_KINDS, hostile_record

    texts = {kind: hostile_record(kind, 42) for kind in HOSTILE_KINDS}
    assert all(t.startswith(b'{"type":"') and t.endswith(b',"emulator_seq":42}') for t in texts.values())
    assert math.isinf(json.loads(texts["number_out_of_range"])["v"])  # no double holds 1e400
    deep_list = json.loads(texts["deep_list"])["deep"]
    depth = 0
    while isinstance(deep_list, list):
        deep_list, depth = deep_list[0], depth + 1
    assert depth == 400
    assert texts["deep_object"].count(b'{"a":') == 1000
    assert json.loads(texts["date_before_year_1"])["eventDate"] == "0001-01-01T00:30:00+01:00"
    assert json.loads(texts["date_after_year_9999"])["eventDate"] == "9999-12-31T23:30:00-01:00"
    assert json.loads(texts["lone_surrogate"])["name"] == "Truck \ud800 lone"
    types = {kind: json.loads(texts[kind])["type"] for kind in HOSTILE_KINDS if kind.startswith("type_")}
    assert types["type_lone_surrogate"] == "trip\ud800"
    assert len(types["type_cjk_120"]) == 120 and len(types["type_cjk_120"].encode()) == 360
    assert len(types["type_emoji_70"]) == 70 and len(types["type_emoji_70"].encode()) == 280
    assert (types["type_rejected"], types["type_quarantine"]) == ("_rejected", "_quarantine")
    with pytest.raises(ValueError, match="unknown hostile kind"):
        hostile_record("nope", 1)


def test_key_text_records_are_good_rows_holding_the_documented_text() -> None:
    from airflow_provider_ktexport.testing.records import FOREIGN_TOKEN_URL, KEY_TEXT_KINDS, key_text_record

    key = 'kt-"q\\/é-9'
    texts = {kind: key_text_record(kind, 7, key) for kind in KEY_TEXT_KINDS}
    foreign, echo = json.loads(texts["foreign_token_url"]), json.loads(texts["api_key_echo"])
    assert foreign["file"] == FOREIGN_TOKEN_URL and foreign["emulator_seq"] == 7
    assert echo["note"] == f"proxy said: GET /v2/stream?token={key}"
    assert echo["echo"] == echo["echo_slash"] == key
    raw = texts["api_key_echo"]
    assert b"\\u00e9" in raw and b"\\/" in raw and key.encode() not in raw  # escaped spellings only
    with pytest.raises(ValueError, match="unknown key-text kind"):
        key_text_record("nope", 1, key)


def test_trips_can_carry_a_gps_track_without_changing_anything_else() -> None:
    plain = RecordGenerator(seed=4).records(1, 300)
    tracked = RecordGenerator(seed=4, track_points=100).records(1, 300)
    for before, after in zip(plain, tracked, strict=True):
        if before["type"] != "trip":
            assert after == before
            continue
        track = after.pop("track")
        assert after == before
        assert len(track) == 100
        assert all(set(p) == {"date", "lat", "lon", "speed", "heading"} for p in track)
        assert [p["date"] for p in track] == sorted(p["date"] for p in track)


def test_the_mix_can_be_narrowed_to_some_record_types() -> None:
    records = RecordGenerator(seed=5, record_types=["trip"], track_points=3).records(1, 50)
    assert {r["type"] for r in records} == {"trip"}
    assert all(len(r["track"]) == 3 for r in records)
    with pytest.raises(ValueError, match="unknown record type"):
        RecordGenerator(record_types=["tripp"])
    with pytest.raises(ValueError, match="track_points"):
        RecordGenerator(track_points=-1)


def test_records_can_be_spread_over_many_record_types() -> None:
    plain = RecordGenerator(seed=6, record_types=["telemetry"]).records(1, 200)
    spread = RecordGenerator(seed=6, record_types=["telemetry"], type_names=50).records(1, 200)
    assert {r["type"] for r in spread} == {f"telemetry_{k}" for k in range(50)}
    for before, after in zip(plain, spread, strict=True):
        assert after["type"] == f"telemetry_{after['emulator_seq'] % 50}"
        assert {**after, "type": "telemetry"} == before
    with pytest.raises(ValueError, match="type_names"):
        RecordGenerator(type_names=-1)
