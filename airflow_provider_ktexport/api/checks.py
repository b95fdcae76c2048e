"""The checks of single client options, each refusing a bad value with the fix in its message.

:func:`~.settings.build_client_settings` runs them all once; the hook runs
:func:`normalize_base_url` on the connection's host and port. Re-exported by :mod:`.settings`.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_ktexport.api.errors import EXAMPLE_BASE_URL
from airflow_provider_ktexport.api.exchange import STREAM_PATH
from airflow_provider_ktexport.api.keymask import MIN_API_KEY_LENGTH
from airflow_provider_ktexport.exceptions import KtExportConfigError

__all__ = [
    "AUTH_LOCATIONS",
    "DEFAULT_MAX_BODY_BYTES",
    "check_api_key",
    "check_auth_location",
    "check_max_body_bytes",
    "check_read_timeout",
    "check_verify",
    "normalize_base_url",
]

AUTH_LOCATIONS = ("header", "query")
#: The largest body accepted once gzip is undone (a real batch is well under 1 MiB).
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# Whitespace or a control character inside a key: a paste gone wrong (a line break, a tab).
_BAD_IN_KEY = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def check_verify(verify: Any) -> bool | str:
    """``verify``: a boolean, or a CA bundle path that exists."""
    if isinstance(verify, bool):
        return verify
    if isinstance(verify, str) and verify:
        if not os.path.exists(verify):
            raise KtExportConfigError(
                f"verify={verify!r} is neither true/false nor an existing CA bundle path: fix the path"
            )
        return verify
    raise KtExportConfigError(f"verify must be true, false or a CA bundle path, not {verify!r}")


def normalize_base_url(url: str, port: int | None = None) -> str:
    """Turn a full URL or a bare host (https assumed) into ``scheme://host[:port][/prefix]``.

    Trailing slashes and a pasted ``/v2/stream`` endpoint are tolerated. Raises
    :class:`KtExportConfigError` naming the problem and the fix.
    """
    if not isinstance(url, str) or not url.strip():
        raise KtExportConfigError(f"the export API base URL is empty: set it, e.g. {EXAMPLE_BASE_URL}")
    text = url.strip()
    if "://" not in text:
        text = "https://" + text
    try:
        parts = urlsplit(text)
        url_port = parts.port
    except ValueError as exc:
        raise KtExportConfigError(
            f"the export API base URL is not a valid URL ({exc}): use e.g. {EXAMPLE_BASE_URL}"
        ) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise KtExportConfigError(
            f"the export API base URL has scheme {scheme!r}: use https:// (or http:// for a local emulator)"
        )
    if parts.query or parts.fragment:
        raise KtExportConfigError(
            "the export API base URL must not carry a query or fragment: "
            "remove it (put the API key in the connection password, not in the URL)"
        )
    if parts.username is not None or parts.password is not None:
        raise KtExportConfigError(
            "the export API base URL must not carry user info: put the API key in the connection password"
        )
    host = parts.hostname
    if not host:
        raise KtExportConfigError(f"the export API base URL has no host name: use e.g. {EXAMPLE_BASE_URL}")
    final_port = _one_port(url_port, port)
    netloc = f"[{host}]" if ":" in host else host
    if final_port is not None:
        netloc = f"{netloc}:{final_port}"
    path = parts.path.rstrip("/")
    for endpoint in (STREAM_PATH, "/v2"):
        if path.endswith(endpoint):
            path = path[: -len(endpoint)].rstrip("/")
            break
    return urlunsplit((scheme, netloc, path, "", ""))


def _one_port(url_port: int | None, port: int | None) -> int | None:
    """The port of the URL or of the connection's port field (both only when they agree)."""
    if port is not None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise KtExportConfigError(f"the export API port {port!r} is not a TCP port (1-65535)")
        if url_port is not None and url_port != port:
            raise KtExportConfigError(
                f"the export API base URL says port {url_port} but the port field says {port}: keep one"
            )
    if url_port is not None and not 0 < url_port < 65536:
        raise KtExportConfigError(f"the export API port {url_port} is not a TCP port (1-65535)")
    return url_port if url_port is not None else port


def check_api_key(value: Any, where: str) -> str:
    """The key without surrounding spaces; refused when missing, blank, shorter than
    :data:`MIN_API_KEY_LENGTH` characters, or holding whitespace or control characters inside
    (``where``: the connection). The message never shows the key.

    A short key is refused because the key is masked wherever stored data holds it: a key of a
    few characters would match inside ordinary words and rewrite records that merely contain it.
    """
    if not isinstance(value, str) or not value.strip():
        raise KtExportConfigError(f"no API key for {where}: set the key (the connection's password)")
    key = value.strip()
    if _BAD_IN_KEY.search(key):
        raise KtExportConfigError(
            f"the API key of {where} holds whitespace or a control character (a line break or tab "
            "pasted with it?): set the password again to the key alone"
        )
    if len(key) < MIN_API_KEY_LENGTH:
        raise KtExportConfigError(
            f"the API key of {where} has {len(key)} character{'s' if len(key) != 1 else ''}, shorter than the "
            f"{MIN_API_KEY_LENGTH} this provider accepts (a key that short is no secret, and masking "
            "it would rewrite stored records that merely contain it): set the connection's password "
            "to the export task's full API key"
        )
    return key


def check_auth_location(value: Any) -> str:
    """``"header"`` or ``"query"`` (case and spaces ignored; empty means header)."""
    location = str(value or "header").strip().lower()
    if location not in AUTH_LOCATIONS:
        raise KtExportConfigError(
            f"auth_location {value!r} is not valid: use 'header' (x-access-token, recommended) or "
            "'query' (?token=)"
        )
    return location


def check_read_timeout(read_timeout: float, long_poll_seconds: float) -> float:
    """``read_timeout``, refused unless it outlasts the long poll (else every empty poll times out)."""
    if read_timeout <= long_poll_seconds:
        raise KtExportConfigError(
            f"read_timeout ({read_timeout:g} s) must be longer than long_poll_seconds "
            f"({long_poll_seconds:g} s), or every empty long poll ends in a timeout: raise "
            "read_timeout or leave it unset (long poll + 30 s)"
        )
    return read_timeout


def check_max_body_bytes(value: Any) -> int:
    """``max_body_bytes``: an integer number of bytes, at least 1 KiB (None means the default)."""
    if value is None:
        return DEFAULT_MAX_BODY_BYTES
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        raise KtExportConfigError(
            f"max_body_bytes must be an integer number of bytes >= 1024, not {value!r} "
            f"(default {DEFAULT_MAX_BODY_BYTES}, 64 MiB)"
        )
    return value
