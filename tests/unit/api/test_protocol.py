"""The export API's transport-free rules (api/: settings checks, exchange, envelope, errors, redact)."""

from __future__ import annotations

import logging
import random
import re

import pytest

from airflow_provider_ktexport.api.envelope import (
    BatchBody,
    Envelope,
    classify_body,
    envelope_id,
    is_ackable_id,
    read_envelope,
    sighting_digest,
)
from airflow_provider_ktexport.api.errors import (
    auth_error,
    http_error,
    parse_retry_after,
    transient_status_error,
)
from airflow_provider_ktexport.api.exchange import auth_parts, backoff_delay
from airflow_provider_ktexport.api.redact import (
    HTTP_LOGGERS,
    RedactTokenFilter,
    guard_http_logs,
    redact,
    redact_bytes,
)
from airflow_provider_ktexport.api.settings import (
    check_api_key,
    check_auth_location,
    check_read_timeout,
    normalize_base_url,
)
from airflow_provider_ktexport.exceptions import KtExportConfigError

SECRET = "Sup3r-Secret-Key/+=%42"  # characters that URL-encode differently, to catch partial redaction


# -- settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "port", "expected"),
    [
        ("export.us1.kt1.io", None, "https://export.us1.kt1.io"),
        ("https://export.eu1.kt1.io/", None, "https://export.eu1.kt1.io"),
        ("  HTTPS://Export.UK1.kt1.io//  ", None, "https://export.uk1.kt1.io"),
        ("http://127.0.0.1:8080", None, "http://127.0.0.1:8080"),
        ("127.0.0.1", 8080, "https://127.0.0.1:8080"),
        ("http://localhost", 9000, "http://localhost:9000"),
        ("https://export.us1.kt1.io/v2/stream", None, "https://export.us1.kt1.io"),
        ("https://proxy.example.com/kt/", None, "https://proxy.example.com/kt"),
        ("http://[::1]:8080/", None, "http://[::1]:8080"),
        ("[::1]", 8443, "https://[::1]:8443"),
    ],
)
def test_base_url_is_normalised(given: str, port: int | None, expected: str) -> None:
    assert normalize_base_url(given, port) == expected


@pytest.mark.parametrize(
    ("given", "port", "fragment"),
    [
        ("", None, "empty"),
        ("ftp://export.us1.kt1.io", None, "scheme"),
        ("https://export.us1.kt1.io/?token=abc", None, "query"),
        ("https://user:pw@export.us1.kt1.io", None, "user info"),
        ("https://export.us1.kt1.io:99999", None, "port"),
        ("https://export.us1.kt1.io:8080", 9090, "port"),
        ("https://", None, "host"),
        ("export.us1.kt1.io", 0, "port"),
    ],
)
def test_bad_base_url_says_what_is_wrong(given: str, port: int | None, fragment: str) -> None:
    with pytest.raises(KtExportConfigError, match=fragment):
        normalize_base_url(given, port)


@pytest.mark.parametrize("value", ["cookie", "body", 5])
def test_auth_location_is_header_or_query(value: object) -> None:
    with pytest.raises(KtExportConfigError, match="use 'header'"):
        check_auth_location(value)
    assert check_auth_location(" Query ") == "query"
    assert check_auth_location(None) == "header"


@pytest.mark.parametrize("value", [None, "", "   ", 42])
def test_a_missing_key_is_refused_naming_the_connection(value: object) -> None:
    with pytest.raises(KtExportConfigError, match="no API key for connection 'kt'"):
        check_api_key(value, "connection 'kt'")
    assert check_api_key(f"  {SECRET} ", "c") == SECRET


@pytest.mark.parametrize("key", ["ab1", "dev-key", "1234567"])
def test_a_key_shorter_than_8_characters_is_refused_naming_the_connection(key: str) -> None:
    with pytest.raises(
        KtExportConfigError, match="API key of connection 'kt' has .* shorter than the 8"
    ) as info:
        check_api_key(f" {key} ", "connection 'kt'")
    assert "full API key" in str(info.value) and key not in str(info.value)
    assert check_api_key(" abcd1234 ", "connection 'kt'") == "abcd1234"  # 8 is enough


@pytest.mark.parametrize("key", ["abc def", "abc\tdef", "abc\ndef", "abc\x00def", "abc\x7fdef", "ab\u2028c"])
def test_a_key_holding_whitespace_or_control_characters_is_refused_without_showing_it(key: str) -> None:
    with pytest.raises(KtExportConfigError, match="connection 'kt' holds whitespace") as info:
        check_api_key(f" {key} ", "connection 'kt'")
    assert "abc" not in str(info.value) and "def" not in str(info.value)


def test_the_key_goes_in_the_header_or_the_query_never_both() -> None:
    assert auth_parts(SECRET, "header") == ({"x-access-token": SECRET}, None)
    assert auth_parts(SECRET, "query") == ({}, {"token": SECRET})


def test_read_timeout_must_outlast_the_long_poll() -> None:
    assert check_read_timeout(75.0, 45.0) == 75.0
    with pytest.raises(KtExportConfigError, match=r"read_timeout \(45 s\) must be longer"):
        check_read_timeout(45.0, 45.0)


# -- the key never in text ------------------------------------------------------------------------------


def test_redact_masks_raw_and_encoded_forms() -> None:
    text = f"url /v2/stream?token=Sup3r-Secret-Key%2F%2B%3D%2542 and {SECRET}"
    out = redact(text, SECRET)
    assert "Sup3r" not in out and "***" in out
    # An unknown token value is masked too.
    assert redact("GET /v2/stream?token=abcdef&x=1", None) == "GET /v2/stream?token=***&x=1"


# -- retries -------------------------------------------------------------------------------------------


def test_redact_bytes_masks_the_key_in_every_form_a_body_can_hold_it() -> None:
    from urllib.parse import quote, quote_plus

    body = (
        b'{"raw":"' + SECRET.encode() + b'","pct":"' + quote(SECRET, safe="").encode() + b'","plus":"'
        + quote_plus(SECRET).encode() + b'","json":"' + SECRET.replace("/", "\\/").encode() + b'"}'
    )  # fmt: skip
    masked = redact_bytes(body, SECRET)
    for form in (SECRET, quote(SECRET, safe=""), quote_plus(SECRET), "Sup3r"):
        assert form.encode() not in masked, form
    assert masked == b'{"raw":"***","pct":"***","plus":"***","json":"***"}'
    assert redact_bytes(b'{"a":1}', SECRET) == b'{"a":1}'  # nothing to mask: bytes unchanged


def test_stored_bodies_keep_other_services_token_values_byte_for_byte() -> None:
    """Issue 18: a quarantined body is stored, then may be acknowledged; only our key may change."""
    body = (
        b'{"file":"https://files.example.com/r.csv?token=abc","upper":"/p?TOKEN=zz&b=2",'
        b'"ours":"https://x/v2/stream?token=' + SECRET.encode() + b'"}'
    )
    assert redact_bytes(body, SECRET) == (
        b'{"file":"https://files.example.com/r.csv?token=abc","upper":"/p?TOKEN=zz&b=2",'
        b'"ours":"https://x/v2/stream?token=***"}'
    )
    assert redact_bytes(b"?token=abc", None) == b"?token=abc"
    # Text for humans keeps the belt: any token= value is masked in a message.
    assert redact("see https://files.example.com/r.csv?token=abc", SECRET) == (
        "see https://files.example.com/r.csv?token=***"
    )


@pytest.mark.parametrize("key", ['kt-"quo\\te-9', 'kt\\"/<&>+é😀-x'])
def test_a_key_holding_backslash_or_quote_is_masked_in_its_json_escaped_forms(key: str) -> None:
    import json

    spellings = {
        json.dumps(key, ensure_ascii=False)[1:-1],  # \" and \\ (most writers)
        json.dumps(key)[1:-1],  # and \u00e9 / surrogate pairs (Python's ensure_ascii)
        re.sub(r"\\u[0-9a-f]{4}", lambda m: "\\u" + m[0][2:].upper(), json.dumps(key)[1:-1]),  # .NET
        json.dumps(key)[1:-1].replace("/", "\\/"),  # \/ (PHP, some Java)
        json.dumps(key)[1:-1].replace("<", "\\u003c").replace("&", "\\u0026").replace(">", "\\u003e"),  # Go
    }
    for spelled in spellings:
        body = b'{"error":"token ' + spelled.encode() + b' revoked"}'
        assert redact_bytes(body, key) == b'{"error":"token *** revoked"}', spelled
        assert redact(body.decode(), key) == '{"error":"token *** revoked"}', spelled


@pytest.mark.parametrize("logger", HTTP_LOGGERS)
def test_http_library_log_lines_have_token_values_masked(
    logger: str, caplog: pytest.LogCaptureFixture
) -> None:
    guard_http_logs()
    guard_http_logs()  # twice: installed once
    caplog.set_level(logging.DEBUG, logger=logger)  # Airflow's logging config may quiet httpx
    logging.getLogger(logger).debug(
        'HTTP Request: GET %s "HTTP/1.1 200 OK"', f"https://x/v2/stream?token={SECRET}"
    )
    assert SECRET not in caplog.text and "token=***" in caplog.text
    assert sum(isinstance(f, RedactTokenFilter) for f in logging.getLogger(logger).filters) == 1


def test_backoff_honours_retry_after_up_to_the_cap() -> None:
    assert backoff_delay(1, 7.0, base=0.5, cap=30.0) == 7.0
    assert backoff_delay(1, 120.0, base=0.5, cap=30.0) == 30.0
    assert backoff_delay(1, -3.0, base=0.5, cap=30.0) == 0.0


def test_backoff_is_full_jitter_within_the_exponential_bound_and_the_floor() -> None:
    random.seed(1)
    for failures in range(1, 10):
        bound = min(30.0, 0.5 * 2 ** (failures - 1))
        delays = [backoff_delay(failures, None, base=0.5, cap=30.0) for _ in range(200)]
        assert all(0.0 <= d <= bound for d in delays)
        assert max(delays) > bound / 2  # spread over the range, not pinned
        assert min(backoff_delay(failures, None, base=0.5, cap=30.0, floor=0.2) for _ in range(200)) >= 0.2


@pytest.mark.parametrize(
    ("header", "expected"), [("5", 5.0), (" 2.5 ", 2.5), ("-4", 0.0), ("soon", None), (None, None)]
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


# -- the batch body ------------------------------------------------------------------------------------


def test_a_batch_body_keeps_each_record_raw() -> None:
    found = read_envelope(b'{"id":42,"items":[{"a": 1},{"b":"\\u00e9"}]}')
    assert isinstance(found, Envelope)
    assert found.batch_id == "42"
    assert [bytes(r) for r in found.items or ()] == [b'{"a": 1}', b'{"b":"\\u00e9"}']


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"id":"b-1","items":[', "not valid JSON"),
        (b'[{"id":"b-1"}]', "not a batch object"),
        (b'{"id":"b-1","items":{"a":1}}', "not a batch object"),
        (b'{"id":"b-1","items":["\xff"]}', "not valid UTF-8"),
    ],
)
def test_a_bad_body_is_described(body: bytes, problem: str) -> None:
    found = read_envelope(body)
    assert isinstance(found, str) and problem in found


def _deep(depth: int, open_: bytes = b'{"a":', close: bytes = b"}") -> bytes:
    return open_ * depth + b"1" + close * depth


def test_a_deep_record_never_makes_read_envelope_raise_and_the_others_come_out_raw() -> None:
    for depth in (1000, 100_000):
        deep = _deep(depth)
        body = b'{"id":"b-9","items":[{"n":1},' + deep + b',{"n":2}]}'
        found = read_envelope(body)
        assert isinstance(found, Envelope), found
        assert found.batch_id == "b-9"
        assert [bytes(r) for r in found.items or ()] == [b'{"n":1}', deep, b'{"n":2}']


def test_a_lone_surrogate_in_one_record_does_not_cost_the_batch() -> None:
    body = b'{"id":"b-3","items":[{"s":"\\ud800"}, {"v":1e400},{"n":2}]}'
    found = read_envelope(body)
    assert isinstance(found, Envelope), found
    assert [bytes(r) for r in found.items or ()] == [b'{"s":"\\ud800"}', b'{"v":1e400}', b'{"n":2}']


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"b-1","items":[' + _deep(5000),  # cut inside the deep record
        b'{"id":"b-1","items":[' + _deep(5000) + b"]",  # the outer object never closes
        b'{"id":"b-1","items":[' + _deep(5000) + b"]}}",  # text after the end
        b'{"id":"b-1" "items":[' + _deep(5000) + b"]}",  # a comma missing at the top
        b'{"id":"b-1","items":[' + _deep(5000) + b",]}",  # an element missing
    ],
    ids=["cut", "unclosed", "trailing", "no-comma", "empty-element"],
)
def test_a_broken_envelope_around_a_deep_record_is_still_a_problem(body: bytes) -> None:
    found = read_envelope(body)
    assert isinstance(found, str) and "not valid JSON" in found


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"id":"b-1","items":[{"id":"r-1"}]}', "b-1"),
        (b'{"items":[{"id":"r-1"}],"id":"b-1"}', "b-1"),
        (b'{"items":[{"id":"r-1"}],"id":"b-1"', "b-1"),  # cut after the id: still provably top-level
        (b'{"items":[{"id":"r-1"}],"id":"b-', None),
        (b'{"items":[{"id":"r-1"},{"id":"r-2"', None),  # only records' ids before the cut
        (b'{"items":[{"a":"\\"id\\":\\"r-3\\""}', None),  # an id inside a string
        (b'{"id":"b-2","items":[{"id":"r-1"', "b-2"),
        (b'{"id": 7, "items": [', "7"),
        (b'[{"id":"r-1"}]', None),  # not an object: nothing in it is an envelope id
        (b"<html>id</html>", None),
        (b'{"id":"b-1","items":[{"a":"\xff"}]}', "b-1"),  # invalid UTF-8 in a record
    ],
)
def test_envelope_id_is_the_envelopes_own_never_a_records(body: bytes, expected: str | None) -> None:
    assert envelope_id(body) == expected


@pytest.mark.parametrize("good", ["b-1", "0f3a9c", "a.b", "x:y", "%2F", "ünï"])
def test_ordinary_ids_are_ackable(good: str) -> None:
    assert is_ackable_id(good)


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "a/b", "a\\b", "a?b", "a#b", "a b", "a\tb", "a\nb", "a\x00", "a\x85", 7, None]
)
def test_ids_that_could_change_the_delete_are_not_ackable(bad: object) -> None:
    assert not is_ackable_id(bad)


@pytest.mark.parametrize(
    ("body", "kind", "batch_id"),
    [
        (b"", "empty", None),
        (b"{}", "empty", None),
        (b'{"id":null,"items":[]}', "empty", None),
        (b'{"items":[{"a":1}]}', "empty", None),
        (b'{"error":"x"}', "empty", None),
        (b'{"id":"e-1","items":[]}', "empty_batch", "e-1"),
        (b'{"id":"d-1","items":[{"a":1}]}', "data", "d-1"),
        (b'{"id":"m-1"}', "problem", "m-1"),
        (b'{"id":"n-1","items":null}', "problem", "n-1"),
        (b'{"id":"r-1","records":[{"a":1}]}', "problem", "r-1"),
        (b'{"id":"u-1","items":[],"next":"x"}', "problem", "u-1"),
        (b'{"id":"o-1","items":{"a":1}}', "problem", "o-1"),
        (b'{"id":"s-1","items":"x"}', "problem", "s-1"),
        (b'{"id":"..","items":[]}', "problem", None),
        (b'{"id":"a/b","items":[{"a":1}]}', "problem", None),
        (b'{"id":"","items":[{"a":1}]}', "problem", None),
        (b'{"id":"t-1","items":[', "problem", "t-1"),
        (b'{"id":"i-1","items":[{"a":1},7]}', "data", "i-1"),  # a non-object item is a record to reject
    ],
)
def test_envelope_rules(body: bytes, kind: str, batch_id: str | None) -> None:
    verdict = classify_body(body)
    assert isinstance(verdict, BatchBody)
    assert (verdict.kind, verdict.batch_id) == (kind, batch_id), verdict
    assert bool(verdict.problem) == (kind == "problem")
    assert bool(verdict.items) == (kind == "data")


_RECORDS = b'[{"a":1},{"b":"x,y"},{"c":[1,2]}]'


@pytest.mark.parametrize(
    ("body", "batch_id"),
    [
        (b'{"id":"x-1","items":' + _RECORDS + b',"items":[]}', "x-1"),
        (b'{"id":"x-1","items":[],"items":' + _RECORDS + b"}", "x-1"),
        (b'{"items":' + _RECORDS + b',"id":"x-1","items":[]}', "x-1"),
        (b'{"id":"x-1","items":' + _RECORDS + b',"i\\u0074ems":[]}', "x-1"),
        (b'{"id":"x-1","\\u0069\\u0074\\u0065\\u006d\\u0073":' + _RECORDS + b',"items":[]}', "x-1"),
        (b'{"id":"x-1","items":' + _RECORDS + b',"items":' + _RECORDS + b"}", "x-1"),
        (b'{ "id" : "x-1" ,\n "items" : ' + _RECORDS + b' ,\n\t"items" : [ ] }', "x-1"),
        (b'{"items":' + _RECORDS + b',"items":[]}', None),  # no id: still never read as empty
        # Two ids name two batches: deleting either could drop the other's records.
        (b'{"id":"A","items":' + _RECORDS + b',"id":"B"}', None),
        (b'{"id":"A","items":' + _RECORDS + b',"\\u0069d":"B"}', None),
        (b'{"\\u0069d":"A","items":[],"id":"A"}', None),
        (b'{"id":"A","id":"A","items":' + _RECORDS + b"}", None),
    ],
    ids=[
        "items-then-empty",
        "empty-then-items",
        "items-around-id",
        "escaped-items",
        "all-escaped-items",
        "items-twice-same",
        "whitespace",
        "no-id",
        "id-twice",
        "escaped-id-twice",
        "escaped-id-empty-batch",
        "same-id-twice",
    ],
)
def test_a_repeated_top_level_key_is_a_problem_never_an_empty_batch(
    body: bytes, batch_id: str | None
) -> None:
    verdict = classify_body(body)
    assert (verdict.kind, verdict.batch_id) == ("problem", batch_id), verdict
    assert "more than once" in verdict.problem and verdict.items == []
    if batch_id is None:
        assert envelope_id(body) is None


@pytest.mark.parametrize(
    ("body", "kind", "batch_id"),
    [
        (b'{"id":"x-1","i\\u0074ems":' + _RECORDS + b"}", "data", "x-1"),  # one items, escaped
        (b'{"\\u0069d":"x-1","items":[]}', "empty_batch", "x-1"),
        (b'{"id":"x-1","items":' + _RECORDS + b',"next":1,"next":2}', "problem", "x-1"),
        (b'{"id":"x-1","items":' + _RECORDS + b',"i\\u0074em":[]}', "problem", "x-1"),  # unknown key
    ],
)
def test_escaped_keys_are_read_as_their_text(body: bytes, kind: str, batch_id: str) -> None:
    verdict = classify_body(body)
    assert (verdict.kind, verdict.batch_id) == (kind, batch_id), verdict
    if kind == "data":
        assert verdict.items == [b'{"a":1}', b'{"b":"x,y"}', b'{"c":[1,2]}']


@pytest.mark.parametrize(
    "body",
    [
        b'{"id":"d-1","items":' + _RECORDS + b"}",
        b'{"items":' + _RECORDS + b',"id":"d-1"}',
        b'{ "id" : "d-1" , "items" : [ {"a":1} ,\n\t{"b":"x,y"},\r\n{"c":[1,2]} ] }',
        b'{"id":"1","items":[1,"1",[1],{"1":1}]}',  # a record's text also inside the id
        b'{"id":"d-1","items":[-0.0e-0,{"a":1}]}',  # the skeleton's own stand-in as a record
        b'{"id":"d-1","items":[{"a":1},{"a":1},{"a":1}]}',
    ],
    ids=["compact", "id-last", "whitespace", "record-in-id", "stand-in", "repeats"],
)
def test_an_ordinary_body_is_data_as_before(body: bytes) -> None:
    verdict = classify_body(body)
    assert (verdict.kind, verdict.batch_id) == ("data", verdict.batch_id) and verdict.batch_id in ("d-1", "1")
    found = read_envelope(body)
    assert isinstance(found, Envelope) and not found.repeated_keys
    assert verdict.items == [bytes(raw) for raw in found.items or ()]


def test_an_ordinary_body_keeps_the_one_pass_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The drain's hot path: a usual body is proven sound without scanning its records."""
    import airflow_provider_ktexport.api.envelope as protocol

    def no_full_scan(body: bytes) -> None:
        raise AssertionError("the whole body was scanned")

    monkeypatch.setattr(protocol, "_scanned", no_full_scan)
    records = b",".join(b'{"n":%d,"s":"a,b]}"}' % n for n in range(500))
    verdict = classify_body(b'{"id":"d-1","items":[' + records + b"]}")
    assert verdict.kind == "data" and len(verdict.items) == 500


def test_a_sighting_digest_is_the_same_for_a_body_redelivered_under_a_new_id() -> None:
    def body(batch_id: bytes, tail: bytes = b',"items":[]}') -> bytes:
        return b'{"id":' + batch_id + b',"items":[{"id":"rec-1"},{"id":"rec-2"}]' + tail

    first = sighting_digest(body(b'"0c9a"'))
    for other in (b'"ffffffffffffffff"', b"42", b"null", b'"\\u0041"'):
        assert sighting_digest(body(other)) == first, other
    assert sighting_digest(body(b'"A"').replace(b'"id"', b'"\\u0069d"', 1)) != first  # other text
    # The same spelling with another id is one body; a record's own id is part of the body.
    escaped = body(b'"A"').replace(b'"id"', b'"\\u0069d"', 1)
    assert sighting_digest(escaped) == sighting_digest(escaped.replace(b'"A"', b'"B"', 1))
    assert sighting_digest(body(b'"A"').replace(b"rec-2", b"rec-3")) != first
    # Two ids (a problem body) and a body cut short after its id: each id blanked.
    assert sighting_digest(body(b'"A"', b',"id":"B"}')) == sighting_digest(body(b'"C"', b',"id":"D"}'))
    assert sighting_digest(b'{"id":"A","items":[{"a":1},') == sighting_digest(b'{"id":"B","items":[{"a":1},')
    # Not JSON at all: the body itself.
    import hashlib

    assert sighting_digest(b"<html>502</html>") == hashlib.sha256(b"<html>502</html>").hexdigest()


# -- errors with advice --------------------------------------------------------------------------------


def test_errors_carry_status_and_advice() -> None:
    err = auth_error(403, "connection 'kt'", "denied")
    assert err.status_code == 403 and "connection 'kt'" in str(err) and "server said: denied" in str(err)
    slow = transient_status_error("GET", "https://h/v2/stream", 429, "3")
    assert slow.retryable and slow.retry_after == 3.0 and "rate limited" in str(slow)
    gone = http_error("GET", "https://h/v2/stream", 404, base_url="https://h", where="connection 'kt'")
    assert "check the base URL of connection 'kt' (it is https://h" in str(gone)
    moved = http_error(
        "GET",
        "https://h/v2/stream",
        301,
        base_url="https://h",
        where="c",
        location="https://new/v2?token=***",
    )
    assert "redirected to https://new/v2:" in str(moved) and "token" not in str(moved)
