"""The errors the export API's answers turn into, each with the advice that fixes it.

Both transports build their exceptions here, so a status, a refused key, a transport failure
or a body past the cap reads the same from the drain (requests) and the sensor (httpx). Every
text passed in is already redacted by the caller (``ClientSettings.redact``).
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime
from typing import Any

from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportBodyTooLargeError,
    KtExportConfigError,
    KtExportError,
    KtExportHTTPError,
    KtExportTransientError,
)

__all__ = [
    "EXAMPLE_BASE_URL",
    "parse_retry_after",
    "BODY_EXCERPT_BYTES",
    "TRANSPORT_FAILURES",
    "auth_error",
    "body_excerpt",
    "body_too_large_error",
    "gave_up_error",
    "has_cause",
    "http_error",
    "out_of_time_error",
    "tls_error",
    "transient_status_error",
    "transport_error",
]

EXAMPLE_BASE_URL = "https://export.us1.kt1.io"


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


#: Bytes of a body quoted in an error message (redacted by the caller).
BODY_EXCERPT_BYTES = 200


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


def body_excerpt(body: bytes) -> str:
    """The start of a body, as text for an error message (redact it before use)."""
    return body[:BODY_EXCERPT_BYTES].decode("utf-8", "replace").strip()


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


def body_too_large_error(
    method: str, safe_url: str, *, limit: int, received: int, wire_bytes: int, where: str
) -> KtExportBodyTooLargeError:
    """A body past ``max_body_bytes``: abandoned, with the setting to raise if it was expected."""
    return KtExportBodyTooLargeError(
        f"{method} {safe_url} answered 200 with a body larger than max_body_bytes ({limit} bytes) "
        f"once decoded: reading stopped at {received} bytes ({wire_bytes} bytes received on the wire). "
        "The body was not kept and its batch was not acknowledged: the lease is abandoned and the "
        "server delivers it again later. If batches this large are expected, raise the extra "
        f"'max_body_bytes' of {where}",
        limit=limit,
        received=received,
    )


def tls_error(base_url: str, safe_text: str, where: str) -> KtExportConfigError:
    """The server's certificate is not trusted: a setting to fix, never retried."""
    return KtExportConfigError(
        f"TLS certificate verification failed for {base_url} ({safe_text}): fix the server "
        f"certificate, or set extra 'verify' of {where} to a CA bundle path"
    )


#: What a transport failure was, as both transports name it (their exception types differ).
TRANSPORT_FAILURES = {
    "timeout": "timed out",
    "connection": "connection failed",
    "other": "failed",
}


def transport_error(
    kind: str, method: str, safe_url: str, failure: str, *, base_url: str, where: str
) -> KtExportError:
    """A request that got no answer: ``kind`` is ``"tls"`` (the certificate is not trusted: a
    setting, never retried), ``"invalid_url"`` (a setting), or a key of :data:`TRANSPORT_FAILURES`
    (retried). ``failure`` is ``"<exception type>: <redacted text>"``: the original exception
    holds the full URL (with ``?token=`` in query mode), so only this text survives."""
    if kind == "tls":
        return tls_error(base_url, failure.partition(": ")[2], where)
    if kind == "invalid_url":
        return KtExportConfigError(f"the export API URL is not usable ({failure}): check the host of {where}")
    return KtExportTransientError(f"{method} {safe_url} {TRANSPORT_FAILURES[kind]} ({failure})")


def gave_up_error(failure: KtExportTransientError, attempts: int, where: str) -> KtExportTransientError:
    """Retries exhausted: the last failure, with how many attempts were made."""
    return KtExportTransientError(
        f"{failure} (gave up after {attempts} attempts at {where}: the server or "
        "network is still failing; the run can be retried later)",
        status_code=failure.status_code,
        retry_after=failure.retry_after,
    )


def out_of_time_error(failure: KtExportTransientError, attempt: int) -> KtExportTransientError:
    """A retry whose backoff would end past the caller's deadline is not started."""
    return KtExportTransientError(
        f"{failure} (no retry: the caller's deadline leaves no time for attempt {attempt})",
        status_code=failure.status_code,
        retry_after=failure.retry_after,
        out_of_time=True,
    )
