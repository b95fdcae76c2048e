"""The export API's contract, without an HTTP library: shared by the sync client and the async trigger.

What a status means, where the key goes, what a batch body looks like, how long to back off,
which errors to raise with which advice, and how the key is kept out of text. ``client.py``
(requests, threads) and ``triggers/ktexport.py`` (httpx, asyncio) both speak through these
pure helpers, so the drain and the sensor cannot drift apart on what the server said.
"""

from __future__ import annotations

import email.utils
import random
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

import msgspec

from airflow_provider_ktexport import __version__
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportConfigError,
    KtExportHTTPError,
    KtExportTransientError,
)

__all__ = [
    "AUTH_HEADER",
    "AUTH_LOCATIONS",
    "AUTH_QUERY_PARAM",
    "AUTH_STATUSES",
    "DEFAULT_USER_AGENT",
    "EMPTY_STATUSES",
    "EXAMPLE_BASE_URL",
    "STREAM_PATH",
    "TRANSIENT_STATUSES",
    "Envelope",
    "auth_error",
    "auth_parts",
    "backoff_delay",
    "batch_id_in",
    "check_api_key",
    "check_auth_location",
    "check_read_timeout",
    "has_cause",
    "http_error",
    "normalize_base_url",
    "parse_retry_after",
    "read_envelope",
    "redact",
    "tls_error",
    "transient_status_error",
]

STREAM_PATH = "/v2/stream"
AUTH_HEADER = "x-access-token"
AUTH_QUERY_PARAM = "token"
AUTH_LOCATIONS = ("header", "query")
DEFAULT_USER_AGENT = f"airflow-provider-ktexport/{__version__}"
EXAMPLE_BASE_URL = "https://export.us1.kt1.io"

# 408 and 429 say "later"; 502-504 are proxies/load balancers in front of the API.
TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
#: A GET that found nothing within the long poll: 500 is the documented answer, 204 is tolerated.
EMPTY_STATUSES = frozenset({500, 204})

_MASK = "***"
# Any ``token=`` query value, whatever the key: a belt to the exact-key braces of redact().
_TOKEN_IN_URL = re.compile(r"(?i)([?&;]token=)[^&\s'\"<>)]*")
# Finds the batch id in a body JSON could not decode, so the quarantine can name it.
_ID_IN_BODY = re.compile(rb'"id"\s*:\s*"([^"\\\x00-\x1f]{1,256})"')


# -- the key never in text ------------------------------------------------------------------------------


def redact(text: str, secret: str | None) -> str:
    """Return ``text`` with ``secret`` (raw and URL-encoded) and any ``token=`` query value masked."""
    if secret:
        for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
            text = text.replace(form, _MASK)
    return _TOKEN_IN_URL.sub(r"\1" + _MASK, text)


# -- settings ------------------------------------------------------------------------------------------


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
    if port is not None:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise KtExportConfigError(f"the export API port {port!r} is not a TCP port (1-65535)")
        if url_port is not None and url_port != port:
            raise KtExportConfigError(
                f"the export API base URL says port {url_port} but the port field says {port}: keep one"
            )
    final_port = url_port if url_port is not None else port
    if url_port is not None and not 0 < url_port < 65536:
        raise KtExportConfigError(f"the export API port {url_port} is not a TCP port (1-65535)")
    netloc = f"[{host}]" if ":" in host else host
    if final_port is not None:
        netloc = f"{netloc}:{final_port}"
    path = parts.path.rstrip("/")
    for endpoint in (STREAM_PATH, "/v2"):
        if path.endswith(endpoint):
            path = path[: -len(endpoint)].rstrip("/")
            break
    return urlunsplit((scheme, netloc, path, "", ""))


def check_api_key(value: Any, where: str) -> str:
    """The key without surrounding spaces; refused when missing or blank (``where``: the connection)."""
    if not isinstance(value, str) or not value.strip():
        raise KtExportConfigError(f"no API key for {where}: set the key (the connection's password)")
    return value.strip()


def auth_parts(api_key: str, location: str) -> tuple[dict[str, str], dict[str, str] | None]:
    """The headers and the query parameters that carry the key: ``x-access-token`` or ``?token=``."""
    if location == "query":
        return {}, {AUTH_QUERY_PARAM: api_key}
    return {AUTH_HEADER: api_key}, None


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


# -- retries -------------------------------------------------------------------------------------------


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP-date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def backoff_delay(
    failures: int, retry_after: float | None, *, base: float, cap: float, floor: float = 0.0
) -> float:
    """Seconds to wait before attempt ``failures + 1``: ``Retry-After`` if the server gave one,
    else full jitter (concurrent callers spread out instead of retrying in lockstep); never above
    ``cap``, never below ``floor``."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return max(floor, random.uniform(0.0, min(cap, base * (2 ** (failures - 1)))))


def has_cause(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``kind`` appears in the chain HTTP libraries build (cause, context, args, reason)."""
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:
        item = stack.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, kind):
            return True
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None), *item.args])
    return False


# -- errors with advice --------------------------------------------------------------------------------


def _said(detail: str) -> str:
    return f"; server said: {detail}" if detail else ""


def auth_error(status: int, where: str, detail: str = "") -> KtExportAuthError:
    """401/403: the key; ``where`` names the connection, ``detail`` is a redacted body excerpt."""
    return KtExportAuthError(
        f"the export API refused the API key (HTTP {status}): check the password (API key) "
        f"of {where} and that the export task is enabled" + _said(detail),
        status_code=status,
    )


def transient_status_error(
    method: str, safe_url: str, status: int, retry_after_header: str | None
) -> KtExportTransientError:
    """408/429/502-504, carrying the server's ``Retry-After``."""
    label = "rate limited" if status == 429 else "temporarily unavailable"
    return KtExportTransientError(
        f"{method} {safe_url} answered HTTP {status} ({label})",
        status_code=status,
        retry_after=parse_retry_after(retry_after_header),
    )


def http_error(
    method: str,
    safe_url: str,
    status: int,
    *,
    base_url: str,
    where: str,
    location: str | None = None,
    detail: str = "",
) -> KtExportHTTPError:
    """A status the protocol does not expect; 404 and redirects get their own advice.

    :param location: the redirect's ``Location``, already redacted
    """
    if status == 404:
        hint = f"check the base URL of {where} (it is {base_url}; expected e.g. {EXAMPLE_BASE_URL})"
    elif 300 <= status < 400:
        target = (location or "?").split("?")[0]
        hint = f"the API redirected to {target}: set the base URL of {where} to it"
    else:
        hint = "the export API answered a status this provider does not expect; check the server"
    return KtExportHTTPError(
        f"{method} {safe_url} answered HTTP {status}: {hint}" + _said(detail), status_code=status
    )


def tls_error(base_url: str, safe_text: str, where: str) -> KtExportConfigError:
    """The server's certificate is not trusted: a setting to fix, never retried."""
    return KtExportConfigError(
        f"TLS certificate verification failed for {base_url} ({safe_text}): fix the server "
        f"certificate, or set extra 'verify' of {where} to a CA bundle path"
    )


# -- the batch body ------------------------------------------------------------------------------------


class Envelope(msgspec.Struct):
    """A GET body: ``Raw`` keeps each record's own bytes without building dicts."""

    id: str | int | None = None
    items: list[msgspec.Raw] | None = None

    @property
    def batch_id(self) -> str | None:
        """The id as text; None (or empty) means the body cannot be acknowledged."""
        return None if self.id is None else str(self.id)


_ENVELOPE_DECODER = msgspec.json.Decoder(Envelope)


def read_envelope(body: bytes) -> Envelope | str:
    """The decoded body, or what is wrong with it (a sentence for the quarantine's error)."""
    try:
        body.decode("utf-8")  # msgspec does not validate the UTF-8 inside Raw items
    except UnicodeDecodeError as exc:
        return f"the body is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        return _ENVELOPE_DECODER.decode(body)
    except msgspec.ValidationError as exc:
        return f"the body is JSON but not a batch object ({exc})"
    except msgspec.DecodeError as exc:
        return f"the body is not valid JSON ({exc})"


def batch_id_in(body: bytes) -> str | None:
    """The batch id of a body that could not be decoded, if one can be seen in it."""
    match = _ID_IN_BODY.search(body)
    return match.group(1).decode("utf-8", "replace") if match else None


def is_ackable_id(batch_id: str) -> bool:
    """Placeholder until the transport branch lands (merged over)."""
    return (
        bool(batch_id)
        and batch_id not in (".", "..")
        and not any(c in batch_id for c in "/\\?#")
        and batch_id.isprintable()
        and not any(c.isspace() for c in batch_id)
    )
