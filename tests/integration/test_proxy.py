"""Behind an egress proxy: the drain's client, the prober and the trigger all reach the emulator
through a real forward proxy on loopback, from the environment's variables or the ``proxy`` extra.

Loopback is *not* exempt from proxying by default (requests' rule, which both transports apply):
only ``NO_PROXY`` exempts a host. Each test sets ``NO_PROXY`` itself, so a developer's or CI's
own proxy variables cannot decide the outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from airflow_provider_ktexport.exceptions import KtExportHTTPError
from airflow_provider_ktexport.hooks.ktexport import KtExportHook
from airflow_provider_ktexport.testing.emulator import Emulator
from airflow_provider_ktexport.transport.sync_client import KtExportClient
from airflow_provider_ktexport.triggers.ktexport import AsyncProber, KtExportTrigger
from tests.integration.forward_proxy import ForwardProxy

LONG_POLL = 0.3

pytestmark = [pytest.mark.integration, pytest.mark.emulator(long_poll_seconds=LONG_POLL, batch_size=2)]

PROXY_USER = "proxy-user"
PROXY_PASSWORD = "pr0xy-p@ss:w/rd"  # characters that URL-encode, to catch partial redaction
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def clean_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable from the machine running the tests (upper- and lowercase)."""
    for name in _PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as p:
        yield p


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    emulator.generate(12)  # six batches: each client and the trigger lease their own
    return emulator


def settings(emu: Emulator, **extra: Any) -> dict[str, Any]:
    return {"base_url": emu.url, "api_key": emu.api_key, "long_poll_seconds": LONG_POLL} | extra


def drain_once(client: KtExportClient) -> int:
    """One GET and its DELETE through the sync client: the records leased."""
    with client:
        batch = client.get_batch()
        assert batch is not None
        assert client.ack(batch.id) is True
        return len(batch)


async def probe(conf: dict[str, Any]) -> Any:
    async with AsyncProber(conf, lease_seconds=3) as prober:
        return await prober.wait_for_data(deadline=time.time() + 5)


def trigger_event(monkeypatch: pytest.MonkeyPatch, conn: dict[str, Any]) -> dict[str, Any]:
    """The deferrable sensor's trigger, run as the triggerer runs it, reading connection 'kt_proxy'."""
    monkeypatch.setenv("AIRFLOW_CONN_KT_PROXY", json.dumps(conn))

    async def first() -> dict[str, Any]:
        gen = KtExportTrigger(ktexport_conn_id="kt_proxy", lease_seconds=3, timeout_at=time.time() + 5).run()
        try:
            return (await anext(gen)).payload
        finally:
            await gen.aclose()

    return asyncio.run(first())


def conn_of(emu: Emulator, **extra: Any) -> dict[str, Any]:
    return {
        "conn_type": "ktexport",
        "host": emu.url,
        "password": emu.api_key,
        "extra": {"long_poll_seconds": LONG_POLL, **extra},
    }


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
def test_the_environment_proxy_carries_the_drain_the_prober_and_the_trigger(
    clean_proxy_env, proxy, emu, variable
):
    clean_proxy_env.setenv(variable, proxy.url)
    clean_proxy_env.setenv("NO_PROXY", "")  # loopback is proxied unless NO_PROXY says otherwise

    assert drain_once(KtExportClient(**settings(emu))) > 0
    found = asyncio.run(probe(settings(emu)))
    assert found is not None and found.record_count
    event = trigger_event(clean_proxy_env, conn_of(emu))
    assert event["status"] == "success", event

    methods = [method for method, _ in proxy.stats()["forwarded"]]
    assert methods.count("DELETE") >= 1  # the drain's ack
    assert methods.count("GET") >= 3  # the drain, the prober, the trigger
    assert all(url.startswith(emu.url + "/v2/stream") for _, url in proxy.stats()["forwarded"])


def test_no_proxy_exempts_loopback_for_both_transports(clean_proxy_env, proxy, emu):
    clean_proxy_env.setenv("HTTP_PROXY", proxy.url)
    clean_proxy_env.setenv("NO_PROXY", "127.0.0.1")
    assert drain_once(KtExportClient(**settings(emu))) > 0
    assert asyncio.run(probe(settings(emu))) is not None
    assert proxy.stats()["forwarded"] == [] and proxy.stats()["tunnels"] == []


def test_the_proxy_extra_wins_over_the_environment_and_its_password_is_never_shown(
    clean_proxy_env, emu, caplog
):
    caplog.set_level(logging.DEBUG)
    with ForwardProxy(username=PROXY_USER, password=PROXY_PASSWORD) as proxy:
        # The environment points at a port nobody listens on, and exempts loopback: the extra wins.
        clean_proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        clean_proxy_env.setenv("NO_PROXY", "127.0.0.1,localhost")
        extra = {"proxy": proxy.url_with_credentials}
        monkeypatch = clean_proxy_env
        monkeypatch.setenv("AIRFLOW_CONN_KT_PROXY", json.dumps(conn_of(emu, **extra)))
        hook = KtExportHook("kt_proxy")
        try:
            batch = hook.get_batch()
            assert batch is not None and hook.ack(batch.id) is True
        finally:
            hook.close()
        event = trigger_event(monkeypatch, conn_of(emu, **extra))
        assert event["status"] == "success", event
        stats = proxy.stats()
        assert [m for m, _ in stats["forwarded"]].count("GET") >= 2 and stats["refused"] == 0

        # A wrong password: the proxy answers 407; no message or log line shows either password.
        wrong = proxy.url_with_credentials.replace("pr0xy", "wr0ng")
        with pytest.raises(KtExportHTTPError) as info, KtExportClient(**settings(emu, proxy=wrong)) as c:
            c.get_batch()
        assert info.value.status_code == 407
        event = trigger_event(monkeypatch, conn_of(emu, proxy=wrong))
        assert event["status"] == "error" and event["status_code"] == 407
        assert proxy.stats()["refused"] == 2
    shown = "\n".join([str(info.value), json.dumps(event), caplog.text, repr(hook.client_settings())])
    for secret in ("pr0xy-p@ss:w/rd", "pr0xy-p%40ss%3Aw%2Frd", "wr0ng-p@ss:w/rd", "wr0ng-p%40ss%3Aw%2Frd"):
        assert secret not in shown


@pytest.mark.parametrize("source", ["env", "extra"])
def test_https_goes_through_a_connect_tunnel(clean_proxy_env, proxy, tls_cert, source):
    certfile, keyfile = tls_cert
    with Emulator(long_poll_seconds=LONG_POLL, batch_size=2, certfile=certfile, keyfile=keyfile) as emu:
        emu.generate(8)
        if source == "env":
            clean_proxy_env.setenv("HTTPS_PROXY", proxy.url)
            clean_proxy_env.setenv("NO_PROXY", "")
            conf = settings(emu, verify=certfile)
        else:
            conf = settings(emu, verify=certfile, proxy=proxy.url)
        assert drain_once(KtExportClient(**conf)) > 0
        assert asyncio.run(probe(conf)) is not None
    port = emu.url.rsplit(":", 1)[1]
    tunnels = proxy.stats()["tunnels"]
    assert len(tunnels) >= 2 and set(tunnels) == {f"127.0.0.1:{port}"}
    assert proxy.stats()["forwarded"] == []  # TLS end to end: the proxy saw no request
