"""One set of validated client settings for both transports (no Airflow import).

:func:`build_client_settings` validates a connection's settings once into a frozen
:class:`ClientSettings`; the drain's sync client (requests) and the trigger's async
prober (httpx) both take it, so they cannot disagree on the base URL, the key's
place, TLS trust, timeouts, the body cap, the proxy or the user agent.

Two rules live here because both transports must apply them the same way:

- **Proxy**: the connection's ``proxy`` extra wins; otherwise the environment's
  ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY``, read exactly as
  ``requests`` reads them (lowercase names first; ``NO_PROXY`` hosts, domain
  suffixes and CIDR blocks). Loopback is *not* exempt unless ``NO_PROXY`` says so.
- **TLS trust**: ``verify=True`` means ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``
  when set (what the drain always honoured), else certifi's bundle; a path is a CA
  bundle; ``False`` turns verification off. The async side takes an
  :class:`ssl.SSLContext` from :func:`ssl_context`, cached per process and per file,
  because loading a bundle costs 20-200 ms of CPU that must not run on the
  triggerer's event loop.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_USER_AGENT,
    check_api_key,
    check_auth_location,
    check_max_body_bytes,
    check_read_timeout,
    normalize_base_url,
    redact,
    redact_bytes,
)

__all__ = [
    "CA_BUNDLE_ENV",
    "ClientSettings",
    "build_client_settings",
    "check_proxy",
    "env_proxy",
    "proxy_credentials",
    "safe_proxy",
    "ssl_context",
]

#: Environment variables naming a CA bundle for ``verify=True``, in the order requests reads them.
CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_MASK = "***"
# user:password@ in any URL of a text (a proxy URL echoed by an HTTP library).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"<>]+@")


@dataclass(frozen=True)
class ClientSettings:
    """Validated settings of one export connection; make them with :func:`build_client_settings`.

    Holds the API key (and maybe proxy credentials): never log it; ``repr`` hides both.

    :param base_url: ``scheme://host[:port][/prefix]``, normalised
    :param api_key: the export task's API key
    :param auth_location: ``"header"`` (``x-access-token``) or ``"query"`` (``?token=``)
    :param verify: ``True``, ``False`` or an existing CA bundle path (see :meth:`ca_bundle`)
    :param connect_timeout: seconds to open a connection
    :param read_timeout: seconds between bytes; longer than ``long_poll_seconds``
    :param long_poll_seconds: how long the server holds an empty GET
    :param max_retries: the drain's retries of a transient failure (a waiting trigger retries on)
    :param backoff_base: first backoff in seconds (exponential, full jitter)
    :param backoff_max: cap of one backoff, ``Retry-After`` included
    :param pool_size: keep-alive connections of the sync client
    :param user_agent: the ``User-Agent`` header of both transports
    :param conn_label: what messages name, e.g. ``"connection 'ktexport_default'"``
    :param max_body_bytes: the largest body accepted once gzip is undone
    :param proxy: the connection's proxy URL (wins over the environment), or ``None``
    """

    base_url: str
    api_key: str = field(repr=False)
    auth_location: str = "header"
    verify: bool | str = True
    connect_timeout: float = 10.0
    read_timeout: float = 75.0
    long_poll_seconds: float = 45.0
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    pool_size: int = 8
    user_agent: str = DEFAULT_USER_AGENT
    conn_label: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    proxy: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return (
            f"ClientSettings(base_url={self.base_url!r}, auth_location={self.auth_location!r}, "
            f"verify={self.verify!r}, proxy={safe_proxy(self.proxy)!r}, conn_label={self.conn_label!r})"
        )

    @property
    def where(self) -> str:
        """What an error message names: the connection, or a generic phrase."""
        return self.conn_label or "the connection"

    def redact(self, text: str) -> str:
        """``text`` with the API key, any ``token=`` value and any proxy credentials masked."""
        text = redact(text, self.api_key)
        for secret in _proxy_secrets(self.proxy):
            text = text.replace(secret, _MASK)
        return _USERINFO.sub(r"\1" + _MASK + "@", text)

    def redact_bytes(self, body: bytes) -> bytes:
        """A body fit to store (quarantine): the API key in every spelling and the proxy
        credentials masked, nothing else (another service's ``token=`` value is data)."""
        body = redact_bytes(body, self.api_key)
        for secret in _proxy_secrets(self.proxy):
            body = body.replace(secret.encode("utf-8"), _MASK.encode())
        return body

    def proxy_url(self) -> str | None:
        """The proxy both transports use for the base URL: the ``proxy`` extra, else the environment's.

        :raises KtExportConfigError: an environment proxy that is not an http(s) URL
        """
        return self.proxy if self.proxy is not None else env_proxy(self.base_url)

    def ca_bundle(self) -> bool | str:
        """What TLS trusts: ``False``, a CA bundle path, or ``True`` (certifi's bundle).

        ``verify=True`` takes ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` when set.
        """
        if self.verify is not True:
            return self.verify
        for name in CA_BUNDLE_ENV:
            path = os.environ.get(name)
            if path:
                if not os.path.exists(path):
                    raise KtExportConfigError(
                        f"environment variable {name}={path!r} names no file: fix it or unset it "
                        f"(it sets the CA bundle of {self.where})"
                    )
                return path
        return True

    def headers(self) -> dict[str, str]:
        """The headers every request carries (the key's header is added by ``auth_parts``)."""
        return {"user-agent": self.user_agent, "accept-encoding": "gzip", "accept": "application/json"}


def build_client_settings(
    base_url: str,
    api_key: str,
    *,
    auth_location: str = "header",
    verify: bool | str = True,
    connect_timeout: float = 10.0,
    read_timeout: float | None = None,
    long_poll_seconds: float = 45.0,
    max_retries: int = 5,
    backoff_base: float = 0.5,
    backoff_max: float = 30.0,
    pool_size: int = 8,
    user_agent: str | None = None,
    conn_label: str | None = None,
    max_body_bytes: int | None = None,
    proxy: str | None = None,
) -> ClientSettings:
    """Validate everything once; every problem is a :class:`KtExportConfigError` naming the fix.

    :param read_timeout: default ``long_poll_seconds + 30``; must exceed the long poll
    :param user_agent: default ``airflow-provider-ktexport/<version>``
    :param max_body_bytes: default 64 MiB, at least 1 KiB
    :param proxy: ``http://[user:password@]host:port`` (``https://`` for TLS to the proxy)
    """
    where = conn_label or "the export API"
    long_poll = _positive("long_poll_seconds", long_poll_seconds)
    if read_timeout is None:
        read_timeout = long_poll + 30.0
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise KtExportConfigError(f"max_retries must be an integer >= 0, not {max_retries!r}")
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise KtExportConfigError(f"pool_size must be an integer >= 1, not {pool_size!r}")
    if user_agent is not None and (not isinstance(user_agent, str) or not user_agent.strip()):
        raise KtExportConfigError(f"user_agent must be a non-empty string, not {user_agent!r}")
    return ClientSettings(
        base_url=normalize_base_url(base_url),
        api_key=check_api_key(api_key, where),
        auth_location=check_auth_location(auth_location),
        verify=_check_verify(verify),
        connect_timeout=_positive("connect_timeout", connect_timeout),
        read_timeout=check_read_timeout(_positive("read_timeout", read_timeout), long_poll),
        long_poll_seconds=long_poll,
        max_retries=max_retries,
        backoff_base=_positive("backoff_base", backoff_base, allow_zero=True),
        backoff_max=_positive("backoff_max", backoff_max, allow_zero=True),
        pool_size=pool_size,
        user_agent=(user_agent or DEFAULT_USER_AGENT).strip(),
        conn_label=conn_label,
        max_body_bytes=check_max_body_bytes(max_body_bytes),
        proxy=None if proxy is None or proxy == "" else check_proxy(proxy, f"the 'proxy' of {where}"),
    )


def settings_of(value: ClientSettings | Mapping[str, Any]) -> ClientSettings:
    """``value`` itself, or a mapping of :func:`build_client_settings` arguments validated."""
    if isinstance(value, ClientSettings):
        return value
    return build_client_settings(**value)


# -- proxy ---------------------------------------------------------------------------------------


def check_proxy(value: Any, what: str) -> str:
    """A proxy URL fit for both transports: ``http(s)://[user:password@]host[:port]``.

    A bare ``host:port`` means ``http://`` (as requests reads it). The message of a refused
    value never shows its credentials.
    """
    if not isinstance(value, str) or not value.strip():
        raise KtExportConfigError(f"{what} must be a proxy URL such as http://proxy:3128, not {value!r}")
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    shown = safe_proxy(text)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.netloc.count("@") > 1:
        raise KtExportConfigError(
            f"{what} ({shown}) is not a valid URL: use e.g. http://user:password@proxy:3128, with "
            "'@', ':' and '/' in the user name or password percent-encoded (%40, %3A, %2F)"
        )
    if parts.scheme.lower() not in ("http", "https"):
        raise KtExportConfigError(
            f"{what} ({shown}) has scheme {parts.scheme!r}: only http:// and https:// proxies are supported"
        )
    if not parts.hostname:
        raise KtExportConfigError(f"{what} ({shown}) has no host: use e.g. http://proxy:3128")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise KtExportConfigError(f"{what} ({shown}) must be scheme://host:port only, without a path")
    if port is not None and not 0 < port < 65536:
        raise KtExportConfigError(f"{what} ({shown}) has port {port}, not a TCP port (1-65535)")
    return text.rstrip("/")


def safe_proxy(url: str | None) -> str | None:
    """A proxy URL fit for logs: its ``user:password@`` masked."""
    if url is None:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    # The last '@' ends the credentials, even when a password holds a raw '@' or '/'.
    return f"{scheme}://{_MASK}@{rest.rpartition('@')[2]}"


def env_proxy(url: str) -> str | None:
    """The environment's proxy for ``url``, as requests chooses it, or None (none, or ``NO_PROXY``).

    requests' own functions decide, so the rule is exactly the one the drain always had:
    ``https_proxy``/``HTTPS_PROXY`` for https URLs, ``http_proxy`` for http, ``all_proxy``
    for both, ``no_proxy`` entries (hosts, ``.domain`` suffixes, CIDR blocks, ``*``) exempt.
    """
    from requests.utils import get_environ_proxies, select_proxy

    chosen = select_proxy(url, get_environ_proxies(url))
    if not chosen:
        return None
    return check_proxy(chosen, "the environment's proxy (HTTPS_PROXY/HTTP_PROXY/ALL_PROXY)")


def proxy_credentials(proxy: Any) -> list[str]:
    """The password of a proxy URL, decoded (for a log masker); [] when it has none or is no URL."""
    if not isinstance(proxy, str) or "@" not in proxy:
        return []
    text = proxy.strip() if "://" in proxy else "http://" + proxy.strip()
    try:
        password = urlsplit(text).password
    except ValueError:
        return []
    return [unquote(password)] if password else []


def _proxy_secrets(proxy: str | None) -> list[str]:
    """The proxy's password (and user) in the forms a text may show: raw, decoded, encoded."""
    if not proxy:
        return []
    parts = urlsplit(proxy)
    found: set[str] = set()
    for raw in (parts.password, parts.username):
        if raw:
            decoded = unquote(raw)
            found.update({raw, decoded, quote(decoded, safe=""), quote_plus(decoded)})
    # Longest first, so a user name inside a password cannot leave the password half shown;
    # one-character values would mask half of every message, they are left to the URL rule.
    return sorted((s for s in found if len(s) > 2), key=len, reverse=True)


# -- TLS ------------------------------------------------------------------------------------------


def ssl_context(verify: bool | str) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` for a :meth:`ClientSettings.ca_bundle` value, one per process.

    Cached per (bundle path, its size and mtime): a replaced bundle is read again, an unchanged
    one never. The first call for a bundle loads it (20-200 ms of CPU): call it off the event
    loop (``await asyncio.to_thread(ssl_context, verify)``).
    """
    if verify is False:
        return _ssl_context(False, None)
    if verify is True:
        import certifi

        path = certifi.where()
    else:
        path = verify
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise KtExportConfigError(
            f"the CA bundle {path!r} cannot be read ({exc.strerror}): fix the path"
        ) from None
    return _ssl_context(path, (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _ssl_context(path: str | bool, _version: tuple[int, int] | None) -> ssl.SSLContext:
    if path is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    assert isinstance(path, str)
    try:
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise KtExportConfigError(f"the CA bundle {path!r} cannot be loaded ({exc}): fix the file") from None


# -- numbers --------------------------------------------------------------------------------------


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not (number >= 0 if allow_zero else number > 0) or number == float("inf"):
        bound = ">= 0" if allow_zero else "> 0"
        raise KtExportConfigError(f"{name} must be a number of seconds {bound}, not {value!r}")
    return number


def _check_verify(verify: Any) -> bool | str:
    if isinstance(verify, bool):
        return verify
    if isinstance(verify, str) and verify:
        if not os.path.exists(verify):
            raise KtExportConfigError(
                f"verify={verify!r} is neither true/false nor an existing CA bundle path: fix the path"
            )
        return verify
    raise KtExportConfigError(f"verify must be true, false or a CA bundle path, not {verify!r}")
