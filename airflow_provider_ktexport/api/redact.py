"""The API key kept out of text shown to humans: log lines, error messages, HTTP libraries' logs.

Stored data (rows, rejects, quarantined bodies) changes the exact key only (:mod:`.keymask`);
text for humans also loses any ``token=`` query value, whatever the key.
"""

from __future__ import annotations

import logging
import re
import threading

from airflow_provider_ktexport.api.keymask import MASK, key_mask

__all__ = ["HTTP_LOGGERS", "RedactTokenFilter", "guard_http_logs", "redact", "redact_bytes"]

_MASK = MASK

# Any ``token=`` query value, whatever the key: a belt to the exact-key braces of redact(), for
# text shown to humans only (stored data changes the exact key only: keymask.py).
_TOKEN_IN_URL = re.compile(r"(?i)([?&;]token=)[^&\s'\"<>)]*")


def redact(text: str, secret: str | None) -> str:
    """Text for humans (a log line, an error message): ``secret`` in every spelling (raw,
    URL-encoded, JSON-escaped) and, as a belt, any ``token=`` query value masked."""
    return _TOKEN_IN_URL.sub(r"\1" + _MASK, key_mask(secret).text(text))


def redact_bytes(body: bytes, secret: str | None) -> bytes:
    """A body fit to store (a quarantined body): ``secret`` masked in every spelling, nothing else.

    A proxy's error page or a body that echoes the request URL can hold the key, raw,
    URL-encoded or JSON-escaped (``\\"``, ``\\\\``, ``\\/``, ``\\u00XX``). Stored data is kept
    exactly otherwise: a ``token=`` value of another service's URL is data, not our key (the
    ``token=`` belt of :func:`redact` is for text shown to humans only).
    """
    return key_mask(secret).body(body)


class RedactTokenFilter(logging.Filter):
    """Masks ``token=`` values in HTTP libraries' log lines, which print each request's URL."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message.lower():
            record.msg, record.args = redact(message, None), None
        return True


#: The loggers that print request URLs: urllib3's (requests, the drain) and httpx's and
#: httpcore's (the trigger). A filter on a logger applies to its own records only, not to a
#: child's, so httpcore's children are named one by one.
HTTP_LOGGERS = (
    "urllib3.connectionpool",
    "httpx",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


_TOKEN_FILTER = RedactTokenFilter()


_TOKEN_FILTER_LOCK = threading.Lock()


def guard_http_logs() -> None:
    """Install the token filter on every HTTP library logger, once (a client that puts the key
    in the query string calls it before its first request)."""
    with _TOKEN_FILTER_LOCK:
        for name in HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if _TOKEN_FILTER not in logger.filters:
                logger.addFilter(_TOKEN_FILTER)
