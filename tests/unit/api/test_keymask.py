"""Stored data changes the exact API key only (keymask.py, issue 18)."""

from __future__ import annotations

import json

import msgspec
import pytest

from airflow_provider_ktexport.api.keymask import KeyMask, key_mask

KEY = "Kt-8c4f/x"  # 9 characters, one that JSON writers may escape


def test_a_record_keeps_other_services_token_urls_byte_for_byte() -> None:
    raw = b'{"type":"event","file":"https://files.example.com/r.csv?token=abc","p":"a?TOKEN=zz&b=2"}'
    assert key_mask(KEY).record(raw) is raw
    assert key_mask(KEY).records([raw, raw]) == [raw, raw]


def test_only_the_exact_key_is_masked_not_text_that_merely_resembles_it() -> None:
    key = "ab1ab1ab"  # 8 characters: the shortest key accepted
    raw = b'{"a":"tab1ab1","b":"ab1ab1a","c":"b1ab1ab","d":"xab1ab1aby","e":"ab1ab1ab"}'
    # Parts of the key are not the key; an exact occurrence is, even inside a longer word.
    assert key_mask(key).record(raw) == b'{"a":"tab1ab1","b":"ab1ab1a","c":"b1ab1ab","d":"x***y","e":"***"}'


@pytest.mark.parametrize(
    "spelled",
    [
        KEY,
        KEY.replace("/", "\\/"),  # PHP, some Java writers
        KEY.replace("/", "\\u002f"),
        KEY.replace("/", "\\u002F"),
        KEY.replace("/", "%2F"),  # a URL echoed into a record
    ],
)
def test_a_record_echoing_the_key_in_any_spelling_lands_masked_and_valid(spelled: str) -> None:
    raw = b'{"type":"telemetry","echo":"GET /v2/stream?token=' + spelled.encode() + b'&n=1","v":1.5}'
    masked = key_mask(KEY).record(raw)
    assert masked == b'{"type":"telemetry","echo":"GET /v2/stream?token=***&n=1","v":1.5}'


def test_the_key_is_masked_in_field_names_too() -> None:
    raw = json.dumps({KEY: 1, "x": [KEY, {"y": "pre-" + KEY}]}).encode()
    masked = key_mask(KEY).record(raw)
    assert json.loads(masked) == {"***": 1, "x": ["***", {"y": "pre-***"}]}


def test_a_mask_never_cuts_an_escape_in_half() -> None:
    # "\\u0041..." is a backslash followed by the letters u0041...: not the key spelled \u0041.
    key = "A2345678"
    raw = b'{"a":"\\\\u00412345678","b":"\\u00412345678","c":"\\\\A2345678"}'
    masked = key_mask(key).record(raw)
    assert masked == b'{"a":"\\\\u00412345678","b":"\\u00412345678","c":"\\\\***"}'
    assert json.loads(masked) == {"a": "\\u00412345678", "b": "A2345678", "c": "\\***"}


def test_a_number_equal_to_the_key_is_data_not_text() -> None:
    raw = b'{"odo":12345678,"s":"12345678"}'
    assert key_mask("12345678").record(raw) == b'{"odo":12345678,"s":"***"}'


def test_bytes_that_are_not_text_stay_exact_around_the_mask() -> None:
    raw = b'{"type":"telemetry","s":"\xff\xfe ' + KEY.encode() + b' \\ud800","n":1e400}'
    assert key_mask(KEY).record(raw) == b'{"type":"telemetry","s":"\xff\xfe *** \\ud800","n":1e400}'


def test_a_key_without_a_plain_run_is_still_found() -> None:
    key = '"\\/<>&+é'  # every character one that writers escape
    raw = json.dumps({"a": "x" + key + "y"}).encode()
    masked = key_mask(key).record(raw)
    assert masked == b'{"a": "x***y"}'
    msgspec.json.decode(masked)


def test_a_mask_never_shows_its_key() -> None:
    assert KEY not in repr(KeyMask(KEY)) and KEY not in str(KeyMask(KEY))
    assert KeyMask(None).record(b'{"a":"x"}') == b'{"a":"x"}'
