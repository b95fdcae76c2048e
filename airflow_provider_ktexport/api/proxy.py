"""Proxy URLs: checked, shown without credentials, and their secrets listed for masking (no I/O).

Which proxy the environment names for a URL is a transport matter (requests' rules):
:func:`airflow_provider_ktexport.transport.environment.env_proxy`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from airflow_provider_ktexport.exceptions import KtExportConfigError

__all__ = ["check_proxy", "proxy_credentials", "proxy_secrets", "safe_proxy"]

_MASK = "***"

# user:password@ in any URL of a text (a proxy URL echoed by an HTTP library).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"<>]+@")


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


def proxy_secrets(proxy: str | None) -> list[str]:
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
