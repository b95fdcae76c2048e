"""KtExportClient (requests) against a tiny scripted HTTP server on loopback (no emulator).

What both transports must do alike is proven once, for both, in test_contract.py.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import quote

import pytest

import airflow_provider_ktexport.transport.sync_client as client_module
from airflow_provider_ktexport import __version__
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportBodyTooLargeError,
    KtExportConfigError,
    KtExportError,
    KtExportHTTPError,
    KtExportProtocolError,
    KtExportTransientError,
)
from airflow_provider_ktexport.transport.sync_client import Batch, KtExportClient
from tests.unit.transport.stub_server import KEY, Reply, Seen, Stub


def make_client(url: str, auth_location: str = "header", **kwargs: object) -> KtExportClient:
    settings: dict[str, object] = {
        "auth_location": auth_location,
        "long_poll_seconds": 1.0,
        "read_timeout": 5.0,
        "connect_timeout": 2.0,
        "max_retries": 3,
        "backoff_base": 0.01,
        "backoff_max": 0.05,
    }
    settings.update(kwargs)
    return KtExportClient(url, KEY, **settings)  # type: ignore[arg-type]


@pytest.fixture
def client(stub: Stub) -> Iterator[KtExportClient]:
    with make_client(stub.url) as c:
        yield c


def batch_body(batch_id: str = "b-1", n: int = 2) -> dict:
    return {
        "id": batch_id,
        "items": [{"type": "telemetry", "n": i, "nested": {"a": [1, 2]}} for i in range(n)],
    }


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the client's backoff sleeps instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", recorded.append)
    return recorded


# ---------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"auth_location": "cookie"}, "auth_location"),
        ({"read_timeout": 10.0, "long_poll_seconds": 45.0}, "read_timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"verify": "/no/such/ca-bundle.pem"}, "CA bundle"),
        ({"pool_size": 0}, "pool_size"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(KtExportConfigError, match=fragment):
        KtExportClient("https://export.us1.kt1.io", KEY, **kwargs)


def test_empty_key_is_refused() -> None:
    with pytest.raises(KtExportConfigError, match="API key"):
        KtExportClient("https://export.us1.kt1.io", "  ")


def test_default_read_timeout_outlasts_long_poll() -> None:
    c = KtExportClient("export.us1.kt1.io", KEY)
    assert c.settings.read_timeout == c.long_poll_seconds + 30
    c.close()


def test_repr_hides_key() -> None:
    for location in ("header", "query"):
        c = KtExportClient("export.us1.kt1.io", KEY, auth_location=location)
        assert KEY not in repr(c) and KEY not in str(c)
        assert "export.us1.kt1.io" in repr(c)
        c.close()


# ---------------------------------------------------------------------------- requests on the wire


def test_header_auth_and_default_headers(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(200, batch_body()))
    batch = client.get_batch()
    assert batch is not None
    seen = stub.seen[0]
    assert (seen.method, seen.path) == ("GET", "/v2/stream")
    assert seen.headers["x-access-token"] == KEY
    assert "token" not in seen.query
    assert "gzip" in seen.headers["accept-encoding"]
    assert seen.headers["user-agent"] == f"airflow-provider-ktexport/{__version__}"
    assert seen.headers["connection"].lower() == "keep-alive"


def test_query_auth(stub: Stub) -> None:
    stub.add(Reply(200, batch_body()))
    with make_client(stub.url, "query") as c:
        assert c.get_batch() is not None
    seen = stub.seen[0]
    assert seen.query["token"] == [KEY]
    assert "x-access-token" not in seen.headers


def test_batch_keeps_each_record_raw(stub: Stub, client: KtExportClient) -> None:
    body = b'{"id": "abc", "items": [ {"type":"telemetry","v":1} , {"type":"trip","u":"\\u00e9"}]}'
    stub.add(Reply(200, body))
    before = time.monotonic()
    batch = client.get_batch()
    assert isinstance(batch, Batch)
    assert batch.id == "abc"
    assert len(batch) == 2
    assert batch.raw_items == [b'{"type":"telemetry","v":1}', b'{"type":"trip","u":"\\u00e9"}']
    assert batch.items == [{"type": "telemetry", "v": 1}, {"type": "trip", "u": "é"}]
    assert batch.leased_at >= before
    assert batch.body_size == len(body)


def test_gzip_body_is_decoded(stub: Stub, client: KtExportClient) -> None:
    payload = batch_body("gz", n=200)
    stub.add(Reply(200, payload))
    batch = client.get_batch()
    assert batch is not None and len(batch) == 200
    # body_size is after decoding: the JSON itself, not the smaller gzip stream.
    assert batch.body_size == len(json.dumps(payload).encode())


@pytest.mark.parametrize(
    "broken",
    [
        Reply(200, batch_body(n=200), cut=300),  # the connection closes mid-body
        Reply(200, batch_body(n=200), raw_gzip=b"\x1f\x8b\x08\x00not-deflate-data"),
        Reply(200, batch_body(n=200), cut=300, stall=3.0),  # the body stops coming
    ],
    ids=["cut-short", "corrupt-gzip", "stalls-mid-body"],
)
def test_a_body_that_breaks_while_read_is_retried(stub: Stub, broken: Reply) -> None:
    # The body is read in one call (not requests' 10 KB steps); its failures must still be
    # transport errors the client retries, never a half batch or an unexplained exception.
    stub.add(broken, Reply(200, batch_body("b-2", n=200)))
    with make_client(stub.url, long_poll_seconds=0.5, read_timeout=1.0) as c:
        batch = c.get_batch()
    assert batch is not None and batch.id == "b-2" and len(batch) == 200
    assert stub.hits("GET") == 2


def test_a_body_that_keeps_breaking_gives_a_transient_error(stub: Stub) -> None:
    stub.default = lambda seen: Reply(200, batch_body(n=200), cut=300)
    with make_client(stub.url, max_retries=1) as c, pytest.raises(KtExportTransientError) as err:
        c.get_batch()
    assert "gave up after 2 attempts" in str(err.value)
    assert KEY not in str(err.value)


def test_keep_alive_reuses_one_connection(stub: Stub, client: KtExportClient) -> None:
    stub.default = lambda seen: Reply(200, batch_body()) if seen.method == "GET" else Reply(200)
    for _ in range(5):
        batch = client.get_batch()
        assert batch is not None
        assert client.ack(batch.id)
    assert stub.connections == 1


# ---------------------------------------------------------------------------- empty forms


def test_500_is_empty(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(500, "no data"))
    assert client.get_batch() is None
    assert stub.hits() == 1


@pytest.mark.parametrize("body", [{}, {"items": [{"a": 1}]}, {"id": None, "items": []}, "  "])
def test_200_without_id_is_empty(stub: Stub, client: KtExportClient, body: object) -> None:
    stub.add(Reply(200, body))
    assert client.get_batch() is None
    assert stub.hits("DELETE") == 0


def test_id_with_empty_items_is_acked_at_once(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(200, {"id": "empty-1", "items": []}), Reply(200))
    assert client.get_batch() is None
    deletes = [s for s in stub.seen if s.method == "DELETE"]
    assert [s.path for s in deletes] == ["/v2/stream/empty-1"]


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x-1"},
        {"id": "x-1", "items": None},
        {"id": "x-1", "records": [{"a": 1}]},
        {"id": "x-1", "items": [], "cursor": "c"},
        {"id": "x-1", "items": [{"a": 1}], "more": True},
        {"id": "x-1", "items": "[]"},
    ],
    ids=["missing", "null", "renamed", "unknown-key-empty", "unknown-key-data", "string"],
)
def test_a_changed_envelope_is_never_acknowledged(stub: Stub, client: KtExportClient, body: dict) -> None:
    # A changed API must not make us delete what we did not read: quarantine, never DELETE.
    stub.add(Reply(200, body))
    with pytest.raises(KtExportProtocolError, match="not acknowledged|not a batch object") as info:
        client.get_batch()
    assert info.value.batch_id == "x-1"
    assert stub.hits("DELETE") == 0


@pytest.mark.parametrize("batch_id", ["..", ".", "a/b", "a?b", "a#b", "a b", "a\nb", "a\\b", ""])
def test_an_id_unfit_for_a_delete_is_a_protocol_problem(
    stub: Stub, client: KtExportClient, batch_id: str
) -> None:
    stub.add(Reply(200, {"id": batch_id, "items": []}), Reply(200, {"id": batch_id, "items": [{"a": 1}]}))
    for _ in range(2):
        with pytest.raises(KtExportProtocolError, match="cannot be used in a DELETE") as info:
            client.get_batch()
        assert info.value.batch_id is None  # so nothing downstream acknowledges it either
    assert stub.hits("DELETE") == 0


@pytest.mark.parametrize("batch_id", ["..", ".", "a/b", "a?x=1", "a#b", "a b", "a\tb", "a\x00"])
def test_ack_refuses_an_id_unfit_for_a_delete_without_sending(
    stub: Stub, client: KtExportClient, batch_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.ack(batch_id) is False
    assert stub.hits() == 0
    assert "never used in a DELETE" in caplog.text


def test_redact_body_masks_the_clients_own_key(client: KtExportClient) -> None:
    body = (
        b'{"echo":"https://x/v2/stream?token='
        + quote(KEY, safe="").encode()
        + b'","k":"'
        + KEY.encode()
        + b'"}'
    )
    masked = client.redact_body(body)
    assert KEY.encode() not in masked and quote(KEY, safe="").encode() not in masked
    assert masked == b'{"echo":"https://x/v2/stream?token=***","k":"***"}'


def test_a_deep_record_comes_out_raw_with_the_others(stub: Stub, client: KtExportClient) -> None:
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    stub.add(Reply(200, b'{"id":"deep-1","items":[{"n":1},' + deep + b"]}"))
    batch = client.get_batch()
    assert batch is not None and batch.raw_items == [b'{"n":1}', deep]


# ---------------------------------------------------------------------------- body size


def _gzip_bomb(decoded: int) -> bytes:
    """A gzip stream of ``decoded`` bytes of JSON-ish text, streamed so the test never holds it."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    head = b'{"id":"big-1","items":[{"pad":"'
    tail = b'"}]}'
    block = b"a" * (1 << 20)
    parts = [packer.compress(head)]
    for _ in range((decoded - len(head) - len(tail)) // len(block)):
        parts.append(packer.compress(block))
    parts.append(packer.compress(tail))
    parts.append(packer.flush())
    return b"".join(parts)


def test_a_body_past_max_body_bytes_is_abandoned_in_bounded_memory(stub: Stub) -> None:
    import tracemalloc

    bomb = _gzip_bomb(300 * 1024 * 1024)
    assert len(bomb) < 400_000  # ~305 KB on the wire
    limit = 16 * 1024 * 1024
    stub.add(Reply(200, b"x", raw_gzip=bomb))
    with make_client(stub.url, max_body_bytes=limit) as c:
        tracemalloc.start()
        try:
            with pytest.raises(KtExportBodyTooLargeError) as info:
                c.get_batch()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    err = info.value
    assert not err.retryable and not isinstance(err, KtExportProtocolError)  # never quarantined
    assert err.limit == limit and err.received > limit
    assert str(limit) in str(err) and "max_body_bytes" in str(err) and "abandoned" in str(err)
    assert peak < 3 * limit, f"peak {peak / 2**20:.0f} MiB for a {limit / 2**20:.0f} MiB limit"
    assert stub.hits() == 1 and stub.hits("DELETE") == 0  # not retried, nothing acknowledged


def test_a_body_just_under_max_body_bytes_is_read(stub: Stub) -> None:
    body = json.dumps({"id": "b-1", "items": [{"pad": "a" * 5000}]}).encode()
    stub.add(Reply(200, body), Reply(200, body))
    with make_client(stub.url, max_body_bytes=len(body)) as c:
        batch = c.get_batch()
    assert batch is not None and batch.body_size == len(body)
    with make_client(stub.url, max_body_bytes=len(body) - 1) as c, pytest.raises(KtExportBodyTooLargeError):
        c.get_batch()


@pytest.mark.parametrize("value", [0, 1023, -1, 1.5, "64", True])
def test_max_body_bytes_is_checked(value: object) -> None:
    with pytest.raises(KtExportConfigError, match="max_body_bytes"):
        make_client("http://127.0.0.1:1", max_body_bytes=value)


# ---------------------------------------------------------------------------- ack / check


def test_ack_true_on_2xx_and_quotes_id(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(200), Reply(204))
    assert client.ack("a:b%c") is True  # still quoted: '%' must not read as an escape
    assert client.ack("plain") is True
    assert stub.seen[0].path == "/v2/stream/a%3Ab%25c"
    assert stub.seen[0].headers["x-access-token"] == KEY


@pytest.mark.parametrize("status", [500, 404])
def test_ack_false_on_unknown_id(stub: Stub, client: KtExportClient, status: int) -> None:
    stub.add(Reply(status, "unknown id"))
    assert client.ack("gone") is False
    assert stub.hits() == 1


def test_ack_retries_transient(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(503), Reply(reset=True), Reply(200))
    assert client.ack("x") is True
    assert stub.hits("DELETE") == 3


def test_ack_raises_auth(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(401))
    with pytest.raises(KtExportAuthError):
        client.ack("x")
    assert stub.hits() == 1


@pytest.mark.parametrize("status", [500, 404, 200])
def test_check_accepts_key(stub: Stub, client: KtExportClient, status: int) -> None:
    stub.add(Reply(status))
    client.check()
    assert stub.hits("GET") == 0  # never leases data
    assert stub.seen[0].method == "DELETE"
    assert stub.seen[0].path.startswith("/v2/stream/ktexport-connection-test-")


@pytest.mark.parametrize("status", [401, 403])
def test_check_refused_key(stub: Stub, client: KtExportClient, status: int) -> None:
    stub.add(Reply(status))
    with pytest.raises(KtExportAuthError, match=f"HTTP {status}"):
        client.check()
    assert stub.hits() == 1


# ---------------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "failure",
    [Reply(429), Reply(502), Reply(503), Reply(504), Reply(reset=True)],
    ids=["429", "502", "503", "504", "reset"],
)
def test_transient_failure_then_success(stub: Stub, client: KtExportClient, failure: Reply) -> None:
    stub.add(failure, failure, Reply(200, batch_body("ok")))
    batch = client.get_batch()
    assert batch is not None and batch.id == "ok"
    assert stub.hits("GET") == 3


def test_read_timeout_then_success(stub: Stub) -> None:
    stub.add(Reply(200, batch_body("late"), hang=3.0), Reply(200, batch_body("ok")))
    with make_client(stub.url, long_poll_seconds=0.2, read_timeout=0.5) as c:
        batch = c.get_batch()
    assert batch is not None and batch.id == "ok"


def test_retry_after_seconds_is_honoured(stub: Stub, client: KtExportClient, sleeps: list[float]) -> None:
    stub.add(Reply(429, headers={"Retry-After": "0.04"}), Reply(200, batch_body()))
    assert client.get_batch() is not None
    assert sleeps == [pytest.approx(0.04)]


def test_retry_after_http_date_is_honoured(stub: Stub, sleeps: list[float]) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    stub.add(Reply(503, headers={"Retry-After": when}), Reply(200, batch_body()))
    with make_client(stub.url, backoff_max=60.0) as c:
        assert c.get_batch() is not None
    assert len(sleeps) == 1 and 10 < sleeps[0] <= 21


def test_retry_after_is_capped_by_backoff_max(stub: Stub, sleeps: list[float]) -> None:
    stub.add(Reply(429, headers={"Retry-After": "3600"}), Reply(200, batch_body()))
    with make_client(stub.url, backoff_max=2.0) as c:
        assert c.get_batch() is not None
    assert sleeps == [2.0]


def test_retries_are_bounded(stub: Stub, client: KtExportClient) -> None:
    stub.default = lambda seen: Reply(503, "busy")
    with pytest.raises(KtExportTransientError, match="gave up after 4 attempts") as info:
        client.get_batch()
    assert info.value.status_code == 503 and info.value.retryable
    assert not info.value.out_of_time  # retries ran out: never a quiet end
    assert stub.hits() == 4  # 1 + max_retries


@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_are_never_retried(stub: Stub, client: KtExportClient, status: int) -> None:
    stub.default = lambda seen: Reply(status, "bad key")
    with pytest.raises(KtExportAuthError, match="refused the API key") as info:
        client.get_batch()
    assert info.value.status_code == status and not info.value.retryable
    assert stub.hits() == 1


def test_404_is_an_http_error_naming_the_url(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(404, "not found"))
    with pytest.raises(KtExportHTTPError, match="base URL") as info:
        client.get_batch()
    assert info.value.status_code == 404
    assert stub.hits() == 1


def test_redirect_is_not_followed(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(302, headers={"Location": "https://elsewhere.example.com/v2/stream"}))
    with pytest.raises(KtExportHTTPError, match="elsewhere.example.com"):
        client.get_batch()
    assert stub.hits() == 1


def test_connection_refused_is_transient() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with make_client(f"http://127.0.0.1:{port}", max_retries=1, conn_label="connection 'kt_prod'") as c:
        with pytest.raises(KtExportTransientError, match="connection failed") as err:
            c.get_batch()
    # The final message names the connection to check (a refused port is still an outage: retryable).
    assert "gave up after 2 attempts at connection 'kt_prod'" in str(err.value)
    assert err.value.retryable


# ---------------------------------------------------------------------------- protocol errors


@pytest.mark.parametrize(
    ("body", "batch_id", "fragment"),
    [
        (b'{"id": "p-1", "items": [{"a": 1}', "p-1", "not valid JSON"),
        (b"<html>oops</html>", None, "not valid JSON"),
        (b'{"id": "p-2", "items": [{"a": "\xff"}]}', "p-2", "UTF-8"),
        (b'{"id": "p-3", "items": {"a": 1}}', "p-3", "not a batch object"),
        (b'{"id": "p-4", "items": null}', "p-4", "missing or null"),
        (b'{"id": "p-5", "items": [], "next": 3}', "p-5", "unknown top-level keys"),
        (b'[{"id": "p-6"}]', None, "not a batch object"),  # a record's id is never the batch's
        (b'{"items": [{"id": "r-7"}, {"a": 1}], "id": "p-7', None, "not valid JSON"),
        (b'{"items": [{"id": "r-8"}], "id": "p-8", "it', "p-8", "not valid JSON"),
    ],
    ids=[
        "truncated",
        "html",
        "utf8",
        "items-object",
        "items-null",
        "unknown-key",
        "body-list",
        "cut-in-id",
        "cut-after-id",
    ],
)
def test_protocol_errors_keep_body_and_id(
    stub: Stub, client: KtExportClient, body: bytes, batch_id: str | None, fragment: str
) -> None:
    stub.add(Reply(200, body))
    with pytest.raises(KtExportProtocolError, match=fragment) as info:
        client.get_batch()
    assert info.value.body == body
    assert info.value.batch_id == batch_id
    assert not info.value.retryable
    assert stub.hits() == 1  # not retried: the lease must come back, the body goes to quarantine


@pytest.mark.parametrize("auth_location", ["header", "query"])
def test_a_body_kept_for_quarantine_holds_no_key(stub: Stub, auth_location: str) -> None:
    # A proxy's error page that echoes the request URL, answered with 200.
    page = f"<html>upstream failed for /v2/stream?token={quote(KEY, safe='')} (key {KEY})</html>".encode()
    stub.add(Reply(200, page))
    with make_client(stub.url, auth_location) as c, pytest.raises(KtExportProtocolError) as info:
        c.get_batch()
    body = info.value.body
    assert KEY.encode() not in body and quote(KEY, safe="").encode() not in body
    assert body == b"<html>upstream failed for /v2/stream?token=*** (key ***)</html>"


def test_items_that_are_not_objects_are_records_for_the_drain_to_reject(
    stub: Stub, client: KtExportClient
) -> None:
    """One bad record is not a bad batch: the client hands it over raw, the drain keeps it as a reject."""
    stub.add(Reply(200, b'{"id": "p-9", "items": [{"a": 1}, 7, [1]]}'))
    batch = client.get_batch()
    assert batch is not None and batch.id == "p-9"
    assert [bytes(r) for r in batch.raw_items] == [b'{"a": 1}', b"7", b"[1]"]


# ---------------------------------------------------------------------------- deadline


def test_deadline_cap_returns_none(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(500, hang=20.0))
    start = time.monotonic()
    assert client.get_batch(deadline=start + 0.5) is None
    assert time.monotonic() - start < 10  # far before the 20 s hang or the 5 s read timeout


def test_past_deadline_sends_nothing(stub: Stub, client: KtExportClient) -> None:
    assert client.get_batch(deadline=time.monotonic() - 1) is None
    assert stub.hits() == 0


def test_no_retry_starts_past_the_deadline(stub: Stub) -> None:
    stub.default = lambda seen: Reply(503, headers={"Retry-After": "5"})
    with make_client(stub.url, backoff_max=10.0) as c:
        start = time.monotonic()
        with pytest.raises(KtExportTransientError, match="deadline") as info:
            c.get_batch(deadline=start + 1.0)
    assert stub.hits() == 1
    assert time.monotonic() - start < 4
    assert info.value.out_of_time  # the drain may end its run quietly on this one


def test_deadline_far_away_changes_nothing(stub: Stub, client: KtExportClient) -> None:
    stub.add(Reply(200, batch_body("d")))
    batch = client.get_batch(deadline=time.monotonic() + 60)
    assert batch is not None and batch.id == "d"


# ---------------------------------------------------------------------------- redaction


def _texts(exc: BaseException) -> Iterator[str]:
    """Everything a traceback or log could print about ``exc`` and its whole chain."""
    yield "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield str(item)
        yield repr(item)
        yield from (repr(a) for a in item.args)
        stack.extend([item.__cause__, item.__context__])


def _assert_no_key(exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    encoded = "Sup3r-Secret-Key%2F"
    for text in _texts(exc):
        assert KEY not in text and encoded not in text
    assert KEY not in caplog.text and encoded not in caplog.text


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SCENARIOS: dict[str, tuple[list[Reply], dict, type[KtExportError]]] = {
    "401": ([Reply(401, f"bad token {KEY}")], {}, KtExportAuthError),
    "404": ([Reply(404, f"no route /v2/stream?token={KEY}")], {}, KtExportHTTPError),
    "503-exhausted": ([Reply(503)] * 4, {}, KtExportTransientError),
    "reset-exhausted": ([Reply(reset=True)] * 4, {}, KtExportTransientError),
    "read-timeout": (
        [Reply(200, hang=3.0)] * 2,
        {"long_poll_seconds": 0.1, "read_timeout": 0.3, "max_retries": 1},
        KtExportTransientError,
    ),
    "protocol": ([Reply(200, b"not json")], {}, KtExportProtocolError),
}


@pytest.mark.parametrize("location", ["header", "query"])
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_key_never_leaks_from_errors(
    stub: Stub, caplog: pytest.LogCaptureFixture, location: str, scenario: str
) -> None:
    replies, kwargs, expected = SCENARIOS[scenario]
    stub.add(*replies)
    caplog.set_level(logging.DEBUG)
    with make_client(stub.url, location, **kwargs) as c:
        with pytest.raises(expected) as info:
            c.get_batch()
        assert KEY not in repr(c)
    _assert_no_key(info.value, caplog)


@pytest.mark.parametrize("location", ["header", "query"])
def test_key_never_leaks_from_connection_errors(caplog: pytest.LogCaptureFixture, location: str) -> None:
    caplog.set_level(logging.DEBUG)
    with make_client(f"http://127.0.0.1:{_closed_port()}", location, max_retries=1) as c:
        with pytest.raises(KtExportTransientError) as info:
            c.ack("some-id")
    # requests' own text would hold ".../v2/stream/some-id?token=<key>": it must be gone.
    assert "connection failed" in str(info.value)
    _assert_no_key(info.value, caplog)


QUOTED_KEY = 'kt-"quo\\ted/key-9'  # a key holding " and \ that a JSON body can only hold escaped


def test_a_key_holding_a_quote_or_backslash_is_masked_in_a_401_message(stub: Stub) -> None:
    escaped = json.dumps(QUOTED_KEY)[1:-1]  # kt-\"quo\\ted/key-9
    stub.add(Reply(401, '{"error":"token ' + escaped + ' revoked"}'))
    with KtExportClient(stub.url, QUOTED_KEY, max_retries=0) as c:
        with pytest.raises(KtExportAuthError) as info:
            c.get_batch()
    for text in _texts(info.value):
        assert escaped not in text and "ted/key-9" not in text, text
    assert "token *** revoked" in str(info.value)


def test_a_key_holding_a_quote_or_backslash_is_masked_in_a_quarantined_body(stub: Stub) -> None:
    escaped = json.dumps(QUOTED_KEY)[1:-1]
    body = '{"id":"b1","items":[{"echo":"' + escaped + '"}],"proxy":"https://f.example.com/r?token=abc"}'
    stub.add(Reply(200, body))
    with KtExportClient(stub.url, QUOTED_KEY, max_retries=0) as c:
        with pytest.raises(KtExportProtocolError) as info:
            c.get_batch()
    # The key is masked; the other service's token= value is data and is kept exactly.
    assert info.value.body == body.replace(escaped, "***").encode()
    assert escaped not in str(info.value)


def test_transport_error_has_no_chained_requests_exception(stub: Stub) -> None:
    stub.add(Reply(reset=True))
    with make_client(stub.url, "query", max_retries=0) as c:
        with pytest.raises(KtExportTransientError) as info:
            c.get_batch()
    assert info.value.__cause__ is None and info.value.__context__ is None


# ---------------------------------------------------------------------------- threads


def test_concurrent_get_batch_and_ack(stub: Stub) -> None:
    counter = iter(range(10_000))
    lock = threading.Lock()

    def answer(seen: Seen) -> Reply:
        if seen.method == "DELETE":
            return Reply(200)
        with lock:
            n = next(counter)
        return Reply(200, batch_body(f"b-{n}", n=3))

    stub.default = answer
    ids: list[str] = []
    errors: list[BaseException] = []

    def worker(c: KtExportClient) -> None:
        try:
            for _ in range(10):
                batch = c.get_batch()
                assert batch is not None and len(batch) == 3
                assert c.ack(batch.id)
                with lock:
                    ids.append(batch.id)
        except BaseException as exc:  # collected: an assert in a thread would be lost
            errors.append(exc)

    with make_client(stub.url, pool_size=4) as c:
        threads = [threading.Thread(target=worker, args=(c,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors
    assert len(ids) == 40 and len(set(ids)) == 40
    assert stub.hits("DELETE") == 40
    assert stub.connections <= 4  # the pool is reused, not a connection per request
