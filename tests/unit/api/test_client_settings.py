"""ClientSettings: one validation, the proxy rule, the CA rule, redaction and the cached SSL context."""

from __future__ import annotations

import os
import ssl
import time

import httpx
import pytest

from airflow_provider_ktexport.api.proxy import safe_proxy
from airflow_provider_ktexport.api.settings import ClientSettings, build_client_settings
from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.transport.async_client import AsyncProber
from airflow_provider_ktexport.transport.environment import env_proxy, ssl_context
from airflow_provider_ktexport.transport.sync_client import KtExportClient

KEY = "s3cr3t-key-123456"
PASSWORD = "p@ss:w/rd-9"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*_PROXY_VARS, "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    return monkeypatch


def build(**extra) -> ClientSettings:
    return build_client_settings("https://export.us1.kt1.io", KEY, **extra)


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:3128"}, "https://export.us1.kt1.io", "http://p:3128"),
        ({"HTTPS_PROXY": "http://p:3128"}, "http://127.0.0.1:8080", None),
        ({"HTTP_PROXY": "http://p:3128"}, "http://127.0.0.1:8080", "http://p:3128"),
        ({"HTTP_PROXY": "http://p:3128"}, "http://localhost:8080", "http://p:3128"),
        ({"ALL_PROXY": "p:3128"}, "https://export.us1.kt1.io", "http://p:3128"),
        ({"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"}, "https://x.kt1.io", "http://low:1"),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "kt1.io"}, "https://export.us1.kt1.io", None),
        ({"HTTPS_PROXY": "http://p:3128", "NO_PROXY": ".kt1.io"}, "https://export.us1.kt1.io", None),
        (
            {"HTTPS_PROXY": "http://p:3128", "NO_PROXY": "other.io"},
            "https://export.us1.kt1.io",
            "http://p:3128",
        ),
        ({"HTTP_PROXY": "http://p:3128", "NO_PROXY": "127.0.0.0/8"}, "http://127.0.0.1:8080", None),
        ({"HTTP_PROXY": "http://p:3128", "NO_PROXY": "*"}, "http://127.0.0.1:8080", None),
        ({"HTTP_PROXY": "http://p:3128", "NO_PROXY": ""}, "http://127.0.0.1:8080", "http://p:3128"),
    ],
    ids=[
        "https",
        "https-var-not-for-http",
        "http",
        "localhost-not-exempt",
        "all-schemeless",
        "lowercase-first",
        "no-proxy-domain",
        "no-proxy-dot-domain",
        "no-proxy-other",
        "no-proxy-cidr",
        "no-proxy-star",
        "no-proxy-empty",
    ],
)
def test_the_environment_proxy_rule_is_requests_rule(no_proxy_env, env, url, expected):
    for name, value in env.items():
        no_proxy_env.setenv(name, value)
    assert env_proxy(url) == expected


def test_the_proxy_extra_wins_over_the_environment(no_proxy_env):
    no_proxy_env.setenv("HTTPS_PROXY", "http://env-proxy:1")
    no_proxy_env.setenv("NO_PROXY", "kt1.io")
    assert build(proxy="http://extra:3128").proxy_url() == "http://extra:3128"
    assert build().proxy_url() is None  # NO_PROXY exempts the host when only the environment speaks


ENCODED = "p%40ss%3Aw%2Frd-9"


@pytest.mark.parametrize(
    ("proxy", "match"),
    [
        ("http://u:" + PASSWORD + "@p:3128", "percent-encoded"),
        ("socks5://u:" + ENCODED + "@p:1080", "only http:// and https://"),
        ("http://u:" + ENCODED + "@p:99999", "TCP port|not a valid URL"),
        ("http://u:" + ENCODED + "@p:3128/path", "without a path"),
        ("http://u:" + ENCODED + "@:3128", "no host"),
    ],
    ids=["raw-password", "socks", "port", "path", "no-host"],
)
def test_a_bad_proxy_is_refused_without_showing_its_password(proxy, match):
    with pytest.raises(KtExportConfigError, match=match) as info:
        build(proxy=proxy)
    for form in (PASSWORD, ENCODED, "w/rd", "w%2Frd"):
        assert form not in str(info.value)


def test_proxy_credentials_never_show(no_proxy_env):
    from urllib.parse import quote

    url = f"http://user:{quote(PASSWORD, safe='')}@proxy.corp:3128"
    settings = build(proxy=url)
    shown = settings.redact(f"ProxyError: {url} said no to {PASSWORD} ({quote(PASSWORD, safe='')}) key {KEY}")
    assert PASSWORD not in shown and quote(PASSWORD, safe="") not in shown and KEY not in shown
    assert "proxy.corp:3128" in shown  # the host stays: it is what a user must check
    assert PASSWORD.encode() not in settings.redact_bytes(f"echo {PASSWORD} {KEY}".encode())
    for text in (repr(settings), repr(KtExportClient.from_settings(settings)), safe_proxy(url)):
        assert "w%2Frd" not in text and PASSWORD not in text and KEY not in text


def test_verify_true_takes_the_environment_bundle_as_the_drain_always_did(no_proxy_env, tmp_path):
    import certifi

    assert build().ca_bundle() is True
    assert build(verify=False).ca_bundle() is False
    no_proxy_env.setenv("CURL_CA_BUNDLE", certifi.where())
    assert build().ca_bundle() == certifi.where()
    no_proxy_env.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "missing.pem"))
    with pytest.raises(KtExportConfigError, match="REQUESTS_CA_BUNDLE"):
        build().ca_bundle()
    assert build(verify=certifi.where()).ca_bundle() == certifi.where()  # an explicit path wins


def test_the_ssl_context_is_built_once_per_bundle_and_again_when_the_file_changes(tmp_path):
    import certifi

    bundle = tmp_path / "ca.pem"
    bundle.write_bytes(open(certifi.where(), "rb").read())
    first = ssl_context(str(bundle))
    assert ssl_context(str(bundle)) is first
    assert ssl_context(True) is ssl_context(True)
    assert ssl_context(False).verify_mode == ssl.CERT_NONE
    later = time.time() + 5
    os.utime(bundle, (later, later))
    assert ssl_context(str(bundle)) is not first
    with pytest.raises(KtExportConfigError, match="cannot be read"):
        ssl_context(str(tmp_path / "gone.pem"))


def test_both_transports_take_the_same_settings(no_proxy_env):
    settings = build(
        user_agent="my-agent/1",
        connect_timeout=4,
        long_poll_seconds=20,
        proxy="http://proxy.corp:3128",
        auth_location="query",
    )
    client = KtExportClient.from_settings(settings)
    assert client.settings is settings
    assert client._session.headers["user-agent"] == "my-agent/1"
    assert client._proxies == {"http": "http://proxy.corp:3128", "https": "http://proxy.corp:3128"}

    async def built() -> httpx.AsyncClient:
        async with AsyncProber(settings) as prober:
            return prober._client

    import asyncio

    http = asyncio.run(built())
    assert http.headers["user-agent"] == "my-agent/1"
    assert http.timeout.connect == 4 and http.timeout.read == 50
    (pattern, transport), *_ = http._mounts.items()
    assert pattern.pattern == "all://"
    assert transport._pool._proxy_url.host == b"proxy.corp"  # type: ignore[union-attr]
    client.close()


def test_keyword_construction_still_validates_as_before():
    with pytest.raises(KtExportConfigError, match="read_timeout"):
        KtExportClient("https://export.us1.kt1.io", KEY, long_poll_seconds=45, read_timeout=30)
    with pytest.raises(KtExportConfigError, match="read_timeout"):
        AsyncProber({"base_url": "https://export.us1.kt1.io", "api_key": KEY, "read_timeout": 30})
    with pytest.raises(KtExportConfigError, match="connect_timeout"):
        AsyncProber({"base_url": "https://export.us1.kt1.io", "api_key": KEY, "connect_timeout": 0})
    with pytest.raises(KtExportConfigError, match="CA bundle"):
        AsyncProber({"base_url": "https://export.us1.kt1.io", "api_key": KEY, "verify": "/no/such.pem"})
