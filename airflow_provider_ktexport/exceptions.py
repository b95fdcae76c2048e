"""Errors of the provider: one root, few subclasses, no Airflow import.

Each error says what happened and what to do; retry decisions are made on the
class and ``retryable``, never on message text.
"""

from __future__ import annotations


class KtExportError(Exception):
    """Root of every error this provider raises."""

    retryable: bool = False

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class KtExportConfigError(KtExportError, ValueError):
    """A setting is invalid (connection, operator argument); fix the configuration."""


class KtExportAuthError(KtExportError):
    """The server refused the API key (401/403). Retrying cannot help."""


class KtExportTransientError(KtExportError):
    """A failure a later attempt may not see: 429, 502-504, reset, timeout.

    ``out_of_time`` is true when retries remained but the caller's deadline left no room for
    the next one (the failure came in the last seconds of a run), false when they ran out.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
        out_of_time: bool = False,
    ):
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after
        self.out_of_time = out_of_time


class KtExportHTTPError(KtExportError):
    """An HTTP status the protocol does not expect (e.g. 404 on a wrong base URL)."""


class KtExportProtocolError(KtExportError):
    """A 200 whose body is not the expected JSON; keeps the raw body for quarantine."""

    def __init__(self, message: str, *, body: bytes, batch_id: str | None = None) -> None:
        super().__init__(message, status_code=200)
        self.body = body
        self.batch_id = batch_id


class KtExportBodyTooLargeError(KtExportError):
    """A 200's body passed ``max_body_bytes`` once decoded. Not retried, not quarantined.

    The body was not kept (storing gigabytes would be the harm the limit prevents) and its batch
    was not acknowledged: the lease is abandoned and the server delivers it again later.

    :param limit: the ``max_body_bytes`` in force
    :param received: decoded bytes read before reading stopped (more than ``limit``)
    """

    def __init__(self, message: str, *, limit: int, received: int) -> None:
        super().__init__(message, status_code=200)
        self.limit = limit
        self.received = received


class KtExportWriteError(KtExportError):
    """Writing or verifying a file in the lake failed; nothing was acknowledged."""

    def __init__(self, message: str, *, destination: str) -> None:
        super().__init__(message)
        self.destination = destination


class KtExportRejectsError(KtExportError):
    """More of a flush's records were rejected than ``max_reject_share`` allows (they are kept)."""

    def __init__(self, message: str, *, rejected: int, records: int) -> None:
        super().__init__(message)
        self.rejected = rejected
        self.records = records
