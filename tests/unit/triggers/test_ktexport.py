"""KtExportTrigger / KtExportEventTrigger / AsyncProber against an in-memory httpx transport."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from datetime import datetime

import httpx
import pytest

from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportBodyTooLargeError,
    KtExportConfigError,
    KtExportError,
    KtExportHTTPError,
    KtExportProtocolError,
    KtExportTransientError,
)
from airflow_provider_ktexport.triggers import ktexport as trig_mod
from airflow_provider_ktexport.triggers.ktexport import (
    AsyncProber,
    KtExportEventTrigger,
    KtExportTrigger,
    Probe,
    error_event,
    error_from_event,
)

KEY = "s3cr3t-key-123456"
BASE = "http://export.test"


def settings(**extra):
    return {"base_url": BASE, "api_key": KEY, "long_poll_seconds": 1, "conn_label": "connection 'kt'"} | extra


class Script:
    """A fake export API: answers GETs from a list of responses, records every request."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.responses = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "DELETE":
            return httpx.Response(200, json={})
        item = self.responses.pop(0) if len(self.responses) > 1 else self.responses[0]
        if isinstance(item, Exception):
            raise item
        return item

    @property
    def gets(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET"]

    @property
    def deletes(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "DELETE"]


def batch(n: int = 3, batch_id: str = "b-1") -> httpx.Response:
    return httpx.Response(
        200, json={"id": batch_id, "items": [{"type": "telemetry", "n": i} for i in range(n)]}
    )


EMPTY = httpx.Response(500, text="No data available")


def prober(script: Script, **extra) -> AsyncProber:
    return AsyncProber(settings(**extra), lease_seconds=120, transport=httpx.MockTransport(script))


async def wait(script: Script, deadline: float | None = None, **extra) -> Probe | None:
    async with prober(script, **extra) as p:
        return await p.wait_for_data(deadline=deadline)


@pytest.fixture(autouse=True)
def no_real_sleep(monkeypatch):
    """Back-offs and the empty-cycle pause take no wall time here (recorded instead)."""
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay, *args, **kwargs):
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(trig_mod.asyncio, "sleep", fake_sleep)
    return slept


def test_loops_on_empty_answers_until_data_and_reports_the_lease_end():
    script = Script(EMPTY, httpx.Response(200, json={}), EMPTY, batch(4, "abc"))
    before = time.time()
    found = asyncio.run(wait(script))
    after = time.time()
    assert found is not None
    assert (found.record_count, found.batch_id) == (4, "abc")
    assert before + 120 <= found.lease_ends_at <= after + 120
    assert len(script.gets) == 4
    assert not script.deletes  # the probed batch is never acknowledged


def test_key_goes_in_the_header_by_default_and_in_the_query_when_asked():
    script = Script(batch())
    asyncio.run(wait(script))
    assert script.gets[0].headers["x-access-token"] == KEY
    assert "token" not in script.gets[0].url.params

    script = Script(batch())
    asyncio.run(wait(script, auth_location="query"))
    assert script.gets[0].url.params["token"] == KEY
    assert "x-access-token" not in script.gets[0].headers


def test_an_id_with_no_items_is_acknowledged_and_counts_as_empty():
    script = Script(httpx.Response(200, json={"id": "empty:1", "items": []}), batch(2, "real"))
    found = asyncio.run(wait(script))
    assert found is not None and found.batch_id == "real"
    assert [r.url.raw_path for r in script.deletes] == [b"/v2/stream/empty%3A1"]


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x-1"},
        {"id": "x-1", "items": None},
        {"id": "x-1", "records": [{"a": 1}]},
        {"id": "x-1", "items": [], "cursor": "c"},
        {"id": "../x", "items": []},
    ],
    ids=["missing", "null", "renamed", "unknown-key", "unfit-id"],
)
def test_a_changed_envelope_is_data_for_the_drain_and_never_acknowledged(body):
    # The same rules as the client (protocol.classify_body): the drain quarantines it.
    script = Script(httpx.Response(200, json=body))
    found = asyncio.run(wait(script))
    assert found is not None and found.record_count is None
    assert found.batch_id == ("x-1" if body["id"] == "x-1" else None)
    assert script.deletes == []


@pytest.mark.parametrize(
    "content",
    [
        b'{"id":"x-1","items":[{"a":1},{"a":2}],"items":[]}',
        b'{"id":"x-1","items":[{"a":1},{"a":2}],"i\\u0074ems":[]}',
        b'{"id":"x-1","items":[{"a":1}],"id":"x-2"}',
    ],
    ids=["items-twice", "items-escaped", "id-twice"],
)
def test_a_repeated_top_level_key_is_data_for_the_drain_never_an_empty_batch(content):
    # Read last-key-wins, the first two are an empty batch (acknowledged at once): their records
    # would be lost. The sensor and the AssetWatcher's event trigger share this prober.
    script = Script(httpx.Response(200, content=content), batch(2, "next"))
    found = asyncio.run(wait(script))
    assert found is not None and found.record_count is None
    assert found.batch_id == (None if b'"id":"x-2"' in content else "x-1")
    assert script.deletes == []


def test_a_deep_record_is_counted_not_raised():
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    script = Script(httpx.Response(200, content=b'{"id":"d-1","items":[{"n":1},' + deep + b"]}"))
    found = asyncio.run(wait(script))
    assert found is not None and found.record_count == 2 and found.batch_id == "d-1"


def test_a_body_past_max_body_bytes_is_an_error_event_not_data():
    import gzip

    body = gzip.compress(b'{"id":"big","items":[{"p":"' + b"a" * 200_000 + b'"}]}')
    script = Script(httpx.Response(200, content=body, headers={"content-encoding": "gzip"}))
    with pytest.raises(KtExportBodyTooLargeError) as info:
        asyncio.run(wait(script, max_body_bytes=100_000))
    assert info.value.limit == 100_000 and "max_body_bytes" in str(info.value)
    event = error_event(info.value)
    assert event["cause"] == "body_too_large"
    rebuilt = error_from_event(event)
    assert isinstance(rebuilt, KtExportBodyTooLargeError) and rebuilt.limit == 100_000


def test_an_undecodable_200_counts_as_data_for_the_drain_to_quarantine():
    script = Script(httpx.Response(200, content=b'{"id":"x1","items":[{"a":'))
    found = asyncio.run(wait(script))
    assert found is not None
    assert found.record_count is None


@pytest.mark.parametrize("status", [401, 403])
def test_refused_key_raises_auth_error_at_once(status):
    script = Script(httpx.Response(status, text="bad key"))
    with pytest.raises(KtExportAuthError) as info:
        asyncio.run(wait(script))
    assert info.value.status_code == status
    assert "connection 'kt'" in str(info.value)
    assert len(script.gets) == 1


def test_unexpected_status_raises_http_error():
    script = Script(httpx.Response(404, text="not here"))
    with pytest.raises(KtExportHTTPError) as info:
        asyncio.run(wait(script))
    assert info.value.status_code == 404


def test_transient_failures_back_off_honour_retry_after_and_keep_waiting(no_real_sleep, caplog):
    script = Script(
        httpx.Response(429, headers={"retry-after": "7"}),
        httpx.Response(503),
        httpx.ConnectError(f"cannot connect to {BASE}/v2/stream?token={KEY}"),
        batch(1),
    )
    with caplog.at_level("WARNING"):
        found = asyncio.run(wait(script, auth_location="query"))
    assert found is not None
    assert 7 in no_real_sleep
    assert len(script.gets) == 4
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3
    assert all(KEY not in w for w in warnings)
    assert any("ConnectError" in w for w in warnings)


def test_deadline_ends_the_wait_with_none():
    script = Script(EMPTY)
    found = asyncio.run(wait(script, deadline=time.time() - 1))
    assert found is None
    assert not script.gets


def test_fast_empty_answers_are_paced(no_real_sleep):
    script = Script(EMPTY, EMPTY, batch(1))
    asyncio.run(wait(script))
    assert len([d for d in no_real_sleep if d > 0.5]) == 2


def test_read_timeout_must_exceed_long_poll():
    with pytest.raises(KtExportConfigError, match="read_timeout"):
        AsyncProber(settings(long_poll_seconds=45, read_timeout=30))


# ---------------------------------------------------------------------------- the triggers


def test_trigger_serialises_the_connection_id_never_the_key():
    trigger = KtExportTrigger(ktexport_conn_id="kt_prod", lease_seconds=90, timeout_at=1_700_000_000.5)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_ktexport.triggers.ktexport.KtExportTrigger"
    assert kwargs == {"ktexport_conn_id": "kt_prod", "lease_seconds": 90.0, "timeout_at": 1_700_000_000.5}
    json.dumps(kwargs)
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(__import__(module, fromlist=[name]), name)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


def test_event_trigger_serialises_round_trip():
    trigger = KtExportEventTrigger(ktexport_conn_id="kt_prod", lease_seconds=60)
    classpath, kwargs = trigger.serialize()
    assert classpath == "airflow_provider_ktexport.triggers.ktexport.KtExportEventTrigger"
    assert KtExportEventTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert all(KEY not in str(v) for v in kwargs.values())


@pytest.fixture
def wired(monkeypatch):
    """Route the triggers' connection lookup and HTTP to a Script."""

    def install(script: Script, **extra):
        async def fake_settings(conn_id):
            assert conn_id == "kt"
            return settings(**extra)

        monkeypatch.setattr(trig_mod, "aclient_settings", fake_settings)
        monkeypatch.setattr(
            trig_mod, "AsyncProber", functools.partial(AsyncProber, transport=httpx.MockTransport(script))
        )
        return script

    return install


async def first_event(trigger):
    gen = trigger.run()
    try:
        return await anext(gen)
    finally:
        await gen.aclose()


def test_trigger_yields_success_with_lease_end(wired):
    wired(Script(EMPTY, batch(5, "b9")))
    event = asyncio.run(first_event(KtExportTrigger(ktexport_conn_id="kt", lease_seconds=8)))
    payload = event.payload
    assert payload["status"] == "success"
    assert payload["record_count"] == 5
    assert payload["batch_id"] == "b9"
    lease_end = datetime.fromisoformat(payload["lease_ends_at"]).timestamp()
    assert time.time() < lease_end <= time.time() + 8


def test_trigger_yields_an_auth_error_event_that_keeps_the_cause(wired):
    wired(Script(httpx.Response(401)))
    event = asyncio.run(first_event(KtExportTrigger(ktexport_conn_id="kt")))
    assert event.payload["status"] == "error"
    assert event.payload["cause"] == "auth"
    assert event.payload["status_code"] == 401
    assert isinstance(error_from_event(event.payload), KtExportAuthError)


def test_trigger_yields_timeout_after_timeout_at(wired):
    script = wired(Script(EMPTY))
    event = asyncio.run(first_event(KtExportTrigger(ktexport_conn_id="kt", timeout_at=time.time() - 1)))
    assert event.payload["status"] == "timeout"
    assert not script.gets


def test_trigger_reports_a_missing_connection_as_config(monkeypatch):
    async def missing(conn_id):
        raise KtExportConfigError(f"connection {conn_id!r} is not defined")

    monkeypatch.setattr(trig_mod, "aclient_settings", missing)
    event = asyncio.run(first_event(KtExportTrigger(ktexport_conn_id="nope")))
    assert event.payload["cause"] == "config"
    assert "nope" in event.payload["message"]


def test_event_trigger_pauses_past_the_lease_before_probing_again(wired, no_real_sleep):
    script = wired(Script(batch(2, "first"), batch(3, "second")))
    trigger = KtExportEventTrigger(ktexport_conn_id="kt", lease_seconds=100)

    async def two_events():
        gen = trigger.run()
        try:
            first = await anext(gen)
            gets_after_first = len(script.gets)
            second = await anext(gen)
            return first, gets_after_first, second
        finally:
            await gen.aclose()

    first, gets_after_first, second = asyncio.run(two_events())
    assert first.payload["batch_id"] == "first" and second.payload["batch_id"] == "second"
    assert gets_after_first == 1
    # One lease (100 s) plus the drain's grace long poll (1 s) before the next GET.
    assert max(no_real_sleep) >= 100


def test_event_trigger_raises_on_a_refused_key(wired):
    wired(Script(httpx.Response(403)))
    with pytest.raises(KtExportAuthError):
        asyncio.run(first_event(KtExportEventTrigger(ktexport_conn_id="kt")))


@pytest.mark.parametrize(
    ("exc", "cause", "kind"),
    [
        (KtExportAuthError("no", status_code=401), "auth", KtExportAuthError),
        (KtExportConfigError("bad host"), "config", KtExportConfigError),
        (KtExportHTTPError("404", status_code=404), "http", KtExportHTTPError),
        (KtExportProtocolError("junk", body=b"x"), "protocol", KtExportProtocolError),
        (KtExportTransientError("503", status_code=503), "transient", KtExportTransientError),
        (KtExportError("other"), "error", KtExportError),
    ],
)
def test_error_events_round_trip_to_the_same_error_class(exc, cause, kind):
    payload = error_event(exc)
    json.dumps(payload)
    assert payload["cause"] == cause
    rebuilt = error_from_event(payload)
    assert type(rebuilt) is kind
    assert str(rebuilt) == str(exc)
    assert rebuilt.status_code == exc.status_code
