"""The transport contract: the sync client (requests) and the async prober (httpx) answer alike.

One suite, run against both transports over real HTTP on loopback: status mapping, retries
with backoff and ``Retry-After``, transport errors, the empty-batch ack, the body cap,
redaction, and ids unfit for a DELETE. A rule changed in :mod:`airflow_provider_ktexport.api`
is proven here once for both; a transport that drifts fails here.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

import airflow_provider_ktexport.transport.async_client as async_module
import airflow_provider_ktexport.transport.sync_client as sync_module
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportBodyTooLargeError,
    KtExportHTTPError,
    KtExportProtocolError,
    KtExportTransientError,
)
from airflow_provider_ktexport.transport.async_client import AsyncProber
from airflow_provider_ktexport.transport.sync_client import KtExportClient
from tests.unit.transport.stub_server import KEY, Reply, Stub

#: What a GET gave, the same for both transports: None (empty), ("lease", id, records) or
#: ("problem", id) (a body never acknowledged: the drain quarantines it, a sensor counts it).
Got = tuple[Any, ...] | None

BASE_SETTINGS: dict[str, Any] = {
    "long_poll_seconds": 1.0,
    "read_timeout": 5.0,
    "connect_timeout": 2.0,
    "max_retries": 3,
    "backoff_base": 0.01,
    "backoff_max": 30.0,
    "conn_label": "connection 'kt'",
}


class SyncSide:
    """The drain's client."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.client = KtExportClient(url, KEY, **(BASE_SETTINGS | settings))

    def get(self) -> Got:
        try:
            batch = self.client.get_batch()
        except KtExportProtocolError as exc:
            return ("problem", exc.batch_id)
        return None if batch is None else ("lease", batch.id, len(batch))

    def ack(self, batch_id: str) -> bool:
        return self.client.ack(batch_id)


class AsyncSide:
    """The sensor's trigger's client."""

    def __init__(self, url: str, **settings: Any) -> None:
        self.settings = {"base_url": url, "api_key": KEY} | BASE_SETTINGS | settings

    def _run(self, use: Callable[[AsyncProber], Any]) -> Any:
        async def go() -> Any:
            async with AsyncProber(self.settings, lease_seconds=120) as prober:
                return await use(prober)

        return asyncio.run(go())

    def get(self) -> Got:
        probe = self._run(lambda p: p.probe_once())
        if probe is None:
            return None
        if probe.record_count is None:
            return ("problem", probe.batch_id)
        return ("lease", probe.batch_id, probe.record_count)

    def ack(self, batch_id: str) -> bool:
        return self._run(lambda p: p.ack(batch_id))


@pytest.fixture(params=["sync", "async"])
def side(request: pytest.FixtureRequest, stub: Stub) -> Callable[..., SyncSide | AsyncSide]:
    """A factory of the transport under test, pointed at the stub server."""
    kind = SyncSide if request.param == "sync" else AsyncSide
    return lambda **settings: kind(settings.pop("url", stub.url), **settings)


@pytest.fixture(autouse=True)
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    """Every backoff of either transport, recorded instead of slept."""
    recorded: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_async_sleep(delay: float, *args: Any, **kwargs: Any) -> None:
        recorded.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(sync_module.time, "sleep", recorded.append)
    monkeypatch.setattr(async_module.asyncio, "sleep", fake_async_sleep)
    yield recorded


def lease_body(batch_id: str = "b-1", n: int = 2) -> dict[str, Any]:
    return {"id": batch_id, "items": [{"type": "telemetry", "n": i} for i in range(n)]}


# ---------------------------------------------------------------------------- status mapping


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(500, "No data available"), None),
        (Reply(204), None),
        (Reply(200, {}), None),
        (Reply(200, lease_body("b-7", 3)), ("lease", "b-7", 3)),
        # Items that are not objects are records the drain rejects one by one, not a bad batch.
        (Reply(200, b'{"id":"m-1","items":[{"a":1},7,"x",null,[1]]}'), ("lease", "m-1", 5)),
        (Reply(200, {"id": "x-1"}), ("problem", "x-1")),
        (Reply(200, {"id": "x-2", "items": [], "cursor": 1}), ("problem", "x-2")),
        (Reply(200, b'{"id":"x-3","items":[{"a":'), ("problem", "x-3")),
    ],
    ids=[
        "500-empty",
        "204-empty",
        "no-id-empty",
        "lease",
        "odd-items",
        "items-missing",
        "unknown-key",
        "truncated",
    ],
)
def test_a_get_answer_means_the_same_to_both(side, stub: Stub, reply: Reply, expected: Got) -> None:
    stub.add(reply)
    assert side().get() == expected
    assert stub.hits("DELETE") == 0  # nothing leased is ever acknowledged by the transport


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (401, KtExportAuthError),
        (403, KtExportAuthError),
        (404, KtExportHTTPError),
        (400, KtExportHTTPError),
        (429, KtExportTransientError),
        (503, KtExportTransientError),
    ],
)
def test_a_get_failure_raises_the_same_error_from_both(side, stub: Stub, status: int, kind: type) -> None:
    stub.default = lambda seen: Reply(status, "nope")
    with pytest.raises(kind) as info:
        side(max_retries=0).get()
    assert info.value.status_code == status
    if kind is KtExportHTTPError and status == 404:
        assert "check the base URL of connection 'kt'" in str(info.value)


@pytest.mark.parametrize("auth_location", ["header", "query"])
def test_both_send_the_same_headers_and_key(side, stub: Stub, auth_location: str) -> None:
    stub.add(Reply(500))
    assert side(auth_location=auth_location, user_agent="acme-etl/2").get() is None
    (seen,) = stub.seen
    assert seen.headers["user-agent"] == "acme-etl/2" and "gzip" in seen.headers["accept-encoding"]
    if auth_location == "header":
        assert seen.headers["x-access-token"] == KEY and not seen.query
    else:
        assert seen.query == {"token": [KEY]} and "x-access-token" not in seen.headers


def test_a_redirect_is_never_followed_by_either(side, stub: Stub) -> None:
    stub.add(Reply(302, headers={"Location": "https://elsewhere.example.com/v2/stream"}))
    with pytest.raises(KtExportHTTPError, match="elsewhere.example.com"):
        side().get()
    assert stub.hits() == 1


@pytest.mark.parametrize(("status", "acked"), [(200, True), (204, True), (404, False), (500, False)])
def test_a_delete_answer_means_the_same_to_both(side, stub: Stub, status: int, acked: bool) -> None:
    stub.add(Reply(status))
    assert side().ack("a:b%c") is acked
    assert stub.seen[0].path == "/v2/stream/" + quote("a:b%c", safe="")


# ---------------------------------------------------------------------------- retries


def test_both_retry_with_backoff_and_honour_retry_after(side, stub: Stub, sleeps: list[float]) -> None:
    stub.add(Reply(429, headers={"Retry-After": "7"}), Reply(503), Reply(200))
    assert side().ack("b-1") is True
    assert stub.hits("DELETE") == 3
    assert sleeps[0] == 7 and len(sleeps) == 2 and 0 <= sleeps[1] <= 0.02


def test_both_cap_retry_after_at_backoff_max(side, stub: Stub, sleeps: list[float]) -> None:
    stub.add(Reply(429, headers={"Retry-After": "3600"}), Reply(200))
    assert side(backoff_max=2.0).ack("b-1") is True
    assert sleeps == [2.0]


def test_both_give_up_after_max_retries(side, stub: Stub) -> None:
    stub.default = lambda seen: Reply(503, "busy")
    with pytest.raises(KtExportTransientError, match="gave up after 3 attempts at connection 'kt'") as info:
        side(max_retries=2).ack("b-1")
    assert info.value.status_code == 503 and stub.hits("DELETE") == 3


@pytest.mark.parametrize("status", [401, 403])
def test_neither_retries_a_refused_key(side, stub: Stub, status: int) -> None:
    stub.default = lambda seen: Reply(status, "bad key")
    with pytest.raises(KtExportAuthError, match="refused the API key"):
        side().ack("b-1")
    assert stub.hits() == 1


# ---------------------------------------------------------------------------- transport errors


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_refused_connection_is_the_same_transient_error_without_the_key(side) -> None:
    with pytest.raises(KtExportTransientError) as info:
        side(url=_closed_port_url(), auth_location="query", max_retries=0).get()
    message = str(info.value)
    assert "connection failed" in message and "/v2/stream" in message
    assert KEY not in message and quote(KEY, safe="") not in message
    # The HTTP library's exception (its text holds the URL, with ?token=) is not chained.
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_a_reset_connection_is_retried_by_both(side, stub: Stub) -> None:
    stub.add(Reply(reset=True), Reply(200))
    assert side().ack("b-1") is True
    assert stub.hits("DELETE") == 2


# ---------------------------------------------------------------------------- the empty batch


@pytest.mark.parametrize(
    ("deletes", "warning"),
    [
        ([Reply(200)], None),
        ([Reply(503), Reply(200)], None),
        ([Reply(500)], "was unknown when acknowledged"),
        ([Reply(503)] * 3, "could not acknowledge empty batch"),
    ],
    ids=["acked", "retried", "unknown", "gave-up"],
)
def test_both_acknowledge_an_empty_batch_at_once(
    side, stub: Stub, caplog: pytest.LogCaptureFixture, deletes: list[Reply], warning: str | None
) -> None:
    stub.add(Reply(200, {"id": "e:1", "items": []}), *deletes)
    with caplog.at_level("WARNING"):
        assert side(max_retries=2).get() is None
    assert [s.path for s in stub.seen if s.method == "DELETE"] == ["/v2/stream/e%3A1"] * len(deletes)
    about_the_ack = [r.getMessage() for r in caplog.records if "empty batch" in r.getMessage()]
    assert (warning is None and not about_the_ack) or any(warning in m for m in about_the_ack)


def test_both_warn_about_items_without_an_id(side, stub: Stub, caplog: pytest.LogCaptureFixture) -> None:
    stub.add(Reply(200, {"items": [{"a": 1}]}))
    with caplog.at_level("WARNING"):
        assert side().get() is None
    assert any("holds 1 items but no id" in r.getMessage() for r in caplog.records)
    assert stub.hits("DELETE") == 0


# ---------------------------------------------------------------------------- the body cap


def test_both_refuse_a_body_past_max_body_bytes(side, stub: Stub) -> None:
    stub.add(Reply(200, {"id": "big", "items": [{"pad": "a" * 20_000}]}))
    with pytest.raises(KtExportBodyTooLargeError, match="max_body_bytes") as info:
        side(max_body_bytes=2048).get()
    assert info.value.limit == 2048 and info.value.received > 2048
    assert stub.hits("DELETE") == 0


# ---------------------------------------------------------------------------- redaction


@pytest.mark.parametrize("status", [401, 404])
@pytest.mark.parametrize("auth_location", ["header", "query"])
def test_neither_quotes_the_key_from_an_echoing_body(
    side, stub: Stub, status: int, auth_location: str
) -> None:
    echo = json.dumps({"error": f"bad token {KEY}", "url": f"/v2/stream?token={quote(KEY, safe='')}"})
    stub.default = lambda seen: Reply(status, echo)
    with pytest.raises((KtExportAuthError, KtExportHTTPError)) as info:
        side(auth_location=auth_location).get()
    message = str(info.value)
    assert "server said" in message
    assert KEY not in message and quote(KEY, safe="") not in message


# ---------------------------------------------------------------------------- ids unfit for a DELETE


@pytest.mark.parametrize("batch_id", ["..", ".", "a/b", "a?x=1", "a#b", "a b", "a\tb"])
def test_neither_sends_a_delete_for_an_unfit_id(
    side, stub: Stub, caplog: pytest.LogCaptureFixture, batch_id: str
) -> None:
    with caplog.at_level("WARNING"):
        assert side().ack(batch_id) is False
    assert stub.hits() == 0
    assert any("never used in a DELETE" in r.getMessage() for r in caplog.records)
