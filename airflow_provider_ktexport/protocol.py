"""Deprecated alias: the protocol moved to :mod:`airflow_provider_ktexport.api` (removed next release)."""

from __future__ import annotations

from airflow_provider_ktexport._moved import warn_moved
from airflow_provider_ktexport.api.envelope import (
    ENVELOPE_KEYS,
    BatchBody,
    Envelope,
    classify_body,
    envelope_id,
    is_ackable_id,
    read_envelope,
    shown_id,
    sighting_digest,
)
from airflow_provider_ktexport.api.errors import (
    BODY_EXCERPT_BYTES,
    EXAMPLE_BASE_URL,
    auth_error,
    body_excerpt,
    body_too_large_error,
    has_cause,
    http_error,
    parse_retry_after,
    tls_error,
    transient_status_error,
)
from airflow_provider_ktexport.api.exchange import (
    AUTH_HEADER,
    AUTH_QUERY_PARAM,
    AUTH_STATUSES,
    EMPTY_STATUSES,
    SENSOR_BACKOFF_FLOOR,
    STREAM_PATH,
    TRANSIENT_STATUSES,
    UNKNOWN_ID_STATUSES,
    ack_answer,
    auth_parts,
    backoff_delay,
)
from airflow_provider_ktexport.api.redact import (
    HTTP_LOGGERS,
    RedactTokenFilter,
    guard_http_logs,
    redact,
    redact_bytes,
)
from airflow_provider_ktexport.api.settings import (
    AUTH_LOCATIONS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_USER_AGENT,
    check_api_key,
    check_auth_location,
    check_max_body_bytes,
    check_read_timeout,
    normalize_base_url,
)

__all__ = [
    "AUTH_HEADER",
    "AUTH_LOCATIONS",
    "AUTH_QUERY_PARAM",
    "AUTH_STATUSES",
    "BODY_EXCERPT_BYTES",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_USER_AGENT",
    "EMPTY_STATUSES",
    "EXAMPLE_BASE_URL",
    "HTTP_LOGGERS",
    "STREAM_PATH",
    "TRANSIENT_STATUSES",
    "UNKNOWN_ID_STATUSES",
    "ENVELOPE_KEYS",
    "BatchBody",
    "Envelope",
    "RedactTokenFilter",
    "SENSOR_BACKOFF_FLOOR",
    "ack_answer",
    "auth_error",
    "auth_parts",
    "backoff_delay",
    "body_excerpt",
    "body_too_large_error",
    "check_api_key",
    "check_auth_location",
    "check_max_body_bytes",
    "check_read_timeout",
    "classify_body",
    "envelope_id",
    "guard_http_logs",
    "has_cause",
    "http_error",
    "is_ackable_id",
    "normalize_base_url",
    "parse_retry_after",
    "read_envelope",
    "redact",
    "redact_bytes",
    "shown_id",
    "sighting_digest",
    "tls_error",
    "transient_status_error",
]

warn_moved(
    "airflow_provider_ktexport.protocol",
    "airflow_provider_ktexport.api (settings, exchange, envelope, errors, redact)",
)
