"""The HTTP conversation as pure decisions: what a GET or DELETE answer means, and what comes next.

A transport (requests in :mod:`airflow_provider_ktexport.transport.sync_client`, httpx in
:mod:`airflow_provider_ktexport.transport.async_client`) only sends requests and reads bodies;
it hands each answer to :func:`read_get` or :func:`read_delete` and acts on the outcome:

- :class:`Empty`: nothing to land (a 500/204 after the long poll, a 200 without id, or an
  empty batch, whose ``ack_id`` the transport acknowledges at once: :func:`report_empty_ack`);
- :class:`Lease`: records to land, leased until :func:`lease_end`;
- :class:`Problem`: a 200 whose body is never acknowledged (the drain quarantines it; a
  waiting sensor counts it as data: :func:`probe_of`, in :mod:`.probe`);
- :class:`Acked`: a DELETE's verdict;
- :class:`Retry`: a transient failure; :class:`Retrying` says how long to wait, or gives up;
- :class:`Fail`: an error waiting cannot fix (a refused key, an unexpected status).

Nothing here reads a clock except :class:`Retrying`'s deadline check, which takes ``now``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_ktexport.api.envelope import classify_body, is_ackable_id, shown_id
from airflow_provider_ktexport.api.errors import (
    auth_error,
    body_excerpt,
    body_too_large_error,
    gave_up_error,
    http_error,
    out_of_time_error,
    transient_status_error,
)

if TYPE_CHECKING:
    from airflow_provider_ktexport.api.inflate import BodyTooLarge
    from airflow_provider_ktexport.exceptions import (
        KtExportBodyTooLargeError,
        KtExportError,
        KtExportTransientError,
    )

__all__ = [
    "AUTH_HEADER",
    "AUTH_QUERY_PARAM",
    "AUTH_STATUSES",
    "DEFAULT_LEASE_SECONDS",
    "EMPTY_STATUSES",
    "MIN_EMPTY_CYCLE",
    "SENSOR_BACKOFF_FLOOR",
    "STREAM_PATH",
    "TRANSIENT_STATUSES",
    "UNKNOWN_ID_STATUSES",
    "Acked",
    "Answer",
    "Call",
    "Empty",
    "Fail",
    "Lease",
    "Problem",
    "Retry",
    "Retrying",
    "ack_answer",
    "auth_parts",
    "backoff_delay",
    "lease_end",
    "read_delete",
    "read_get",
    "report_empty_ack",
    "unackable",
]

STREAM_PATH = "/v2/stream"
AUTH_HEADER = "x-access-token"
AUTH_QUERY_PARAM = "token"

# 408 and 429 say "later"; 502-504 are proxies/load balancers in front of the API.
TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})


AUTH_STATUSES = frozenset({401, 403})


#: A GET that found nothing within the long poll: 500 is the documented answer, 204 is tolerated.
EMPTY_STATUSES = frozenset({500, 204})


#: A DELETE of an id the server no longer knows (its lease had ended): 500, sometimes 404.
UNKNOWN_ID_STATUSES = frozenset({404, 500})


#: The shortest pause between a waiting sensor's tries, even when jitter draws near zero.
SENSOR_BACKOFF_FLOOR = 0.2

#: The server's lease (the API documents 120 s): an unacknowledged batch returns to the queue after it.
DEFAULT_LEASE_SECONDS = 120.0
#: An empty answer that came back faster than this (a server without long poll) is followed by a
#: pause, so a waiting sensor never polls an idle queue in a tight loop.
MIN_EMPTY_CYCLE = 1.0


def auth_parts(api_key: str, location: str) -> tuple[dict[str, str], dict[str, str] | None]:
    """The headers and the query parameters that carry the key: ``x-access-token`` or ``?token=``."""
    if location == "query":
        return {}, {AUTH_QUERY_PARAM: api_key}
    return {AUTH_HEADER: api_key}, None


def backoff_delay(
    failures: int, retry_after: float | None, *, base: float, cap: float, floor: float = 0.0
) -> float:
    """Seconds to wait before attempt ``failures + 1``: ``Retry-After`` if the server gave one,
    else full jitter (concurrent callers spread out instead of retrying in lockstep); never above
    ``cap``, never below ``floor``."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return max(floor, random.uniform(0.0, min(cap, base * (2 ** (failures - 1)))))


def ack_answer(status: int) -> bool | None:
    """What a DELETE's final status means: ``True`` acknowledged (2xx), ``False`` the id was
    unknown or its lease had ended (404/500: redelivered later), ``None`` a status the protocol
    does not expect (raise :func:`http_error`). Auth and transient statuses are the caller's
    retry loop's, before this."""
    if 200 <= status < 300:
        return True
    if status in UNKNOWN_ID_STATUSES:
        return False
    return None


def lease_end(leased_at: float, lease_seconds: float, *, now_mono: float, now_wall: float) -> float:
    """Epoch seconds (wall clock) when a batch leased at ``leased_at`` (``time.monotonic()`` when
    the GET's headers arrived) returns to the queue: the lease is measured on the monotonic clock
    and carried to the wall clock once, so a clock step cannot shorten it."""
    return now_wall - (now_mono - leased_at) + lease_seconds


# -- what an answer means ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP answer as a transport read it: status, body (gzip undone, capped), two headers."""

    status: int
    body: bytes = b""
    retry_after: str | None = None
    location: str | None = None
    #: ``time.monotonic()`` when the headers arrived: a GET's lease clock starts then.
    received_at: float = 0.0


@dataclass(frozen=True)
class Call:
    """The request an answer belongs to: ``url`` to send (it never holds the key, which travels in
    a header or a query parameter), ``safe_url`` as messages name it (redacted)."""

    method: str
    url: str
    safe_url: str
    base_url: str
    where: str
    #: Redacts a text for humans (the key, ``token=`` values, proxy credentials).
    redact: Callable[[str], str] = field(repr=False, default=str)

    def too_large(self, exc: BodyTooLarge) -> KtExportBodyTooLargeError:
        """The error both transports raise for this call's body past ``max_body_bytes``."""
        return body_too_large_error(
            self.method,
            self.safe_url,
            limit=exc.limit,
            received=exc.received,
            wire_bytes=exc.wire_bytes,
            where=self.where,
        )


@dataclass(frozen=True)
class Empty:
    """Nothing to land. ``note``: why a 200 deserves a warning; ``ack_id``: an empty batch to
    acknowledge at once (or it comes back forever and ends every run early)."""

    note: str = ""
    ack_id: str | None = None


@dataclass(frozen=True)
class Lease:
    """Records to land; acknowledge ``batch_id`` only once they are in the lake."""

    batch_id: str
    items: list[bytes]
    body_size: int
    received_at: float


@dataclass(frozen=True)
class Problem:
    """A 200 that is never acknowledged: ``problem`` says why; ``batch_id`` only when it is the
    envelope's own and ackable."""

    problem: str
    batch_id: str | None
    received_at: float
    #: The body as received (a transport redacts it before anything stores it).
    body: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class Acked:
    """A DELETE's verdict: ``True`` acknowledged, ``False`` the id was unknown or its lease had ended."""

    acked: bool


@dataclass(frozen=True)
class Retry:
    """A transient failure (408, 429, 502-504, a network error): retried by :class:`Retrying`."""

    error: KtExportTransientError


@dataclass(frozen=True)
class Fail:
    """An error waiting cannot fix: raise it."""

    error: KtExportError


def _status_verdict(answer: Answer, call: Call) -> Retry | Fail | None:
    """A refused key fails at once; 408/429/502-504 are retried; None: the caller reads on."""
    if answer.status in AUTH_STATUSES:
        return Fail(auth_error(answer.status, call.where, call.redact(body_excerpt(answer.body))))
    if answer.status in TRANSIENT_STATUSES:
        return Retry(transient_status_error(call.method, call.safe_url, answer.status, answer.retry_after))
    return None


def _unexpected(answer: Answer, call: Call) -> Fail:
    return Fail(
        http_error(
            call.method,
            call.safe_url,
            answer.status,
            base_url=call.base_url,
            where=call.where,
            location=None if answer.location is None else call.redact(answer.location),
            detail=call.redact(body_excerpt(answer.body)),
        )
    )


def read_get(answer: Answer, call: Call) -> Empty | Lease | Problem | Retry | Fail:
    """What a ``GET /v2/stream`` answer means (the envelope rules: :func:`.envelope.classify_body`).

    A large body's classification costs CPU: an async caller runs this in a worker thread.
    """
    verdict = _status_verdict(answer, call)
    if verdict is not None:
        return verdict
    if answer.status in EMPTY_STATUSES:
        return Empty()  # nothing within the long poll
    if answer.status != 200:
        return _unexpected(answer, call)
    body = classify_body(answer.body)
    if body.kind == "problem":
        return Problem(body.problem, body.batch_id, answer.received_at, answer.body)
    if body.kind == "empty":
        return Empty(note=body.note)
    assert body.batch_id is not None  # an empty batch or data always has its id
    if body.kind == "empty_batch":
        return Empty(ack_id=body.batch_id)
    return Lease(body.batch_id, body.items, len(answer.body), answer.received_at)


def read_delete(answer: Answer, call: Call) -> Acked | Retry | Fail:
    """What a ``DELETE /v2/stream/{id}`` answer means: 2xx acknowledged, 404/500 unknown id."""
    verdict = _status_verdict(answer, call)
    if verdict is not None:
        return verdict
    acked = ack_answer(answer.status)
    return _unexpected(answer, call) if acked is None else Acked(acked)


def unackable(batch_id: str) -> str | None:
    """Why ``batch_id`` is never sent in a DELETE ('..' or '/' would change its path, '?' or '#'
    its query), or None when it may be: both transports refuse such an id before any request."""
    if is_ackable_id(batch_id):
        return None
    return (
        f"not acknowledging batch id {shown_id(batch_id)}: it is '.', '..' or holds '/', '\\', '?', "
        "'#', whitespace or control characters, and is never used in a DELETE"
    )


def report_empty_ack(
    batch_id: str, result: bool | Exception, log: logging.Logger | logging.LoggerAdapter
) -> None:
    """Log how acknowledging an empty batch went (both transports acknowledge it at once):
    a transient failure or an unknown id only means it is redelivered later."""
    if isinstance(result, Exception):
        log.warning("could not acknowledge empty batch %s (%s); it will be redelivered", batch_id, result)
    elif not result:
        log.warning("empty batch %s was unknown when acknowledged; its lease had ended", batch_id)


# -- retries -----------------------------------------------------------------------------------------


@dataclass
class Retrying:
    """One retry policy for both transports: count failures, wait with backoff, give up in time.

    :param base: first backoff in seconds (exponential, full jitter)
    :param cap: the longest wait, ``Retry-After`` included
    :param max_retries: retries before giving up; ``None`` waits on forever (a sensor)
    :param floor: the shortest wait (a waiting sensor never polls in a tight loop)
    :param where: what the give-up message names (the connection)
    """

    base: float
    cap: float
    max_retries: int | None
    where: str
    floor: float = 0.0
    failures: int = 0

    def next_delay(
        self, error: KtExportTransientError, *, deadline: float | None = None, now: float = 0.0
    ) -> float:
        """Seconds to wait before the next attempt after ``error``.

        :param deadline: a caller's deadline on the clock ``now`` reads; a retry whose backoff
            would end past it is not started
        :raises KtExportTransientError: retries exhausted, or no time left before ``deadline``
        """
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            raise gave_up_error(error, self.failures, self.where)
        delay = backoff_delay(
            self.failures, error.retry_after, base=self.base, cap=self.cap, floor=self.floor
        )
        if deadline is not None and now + delay >= deadline:
            raise out_of_time_error(error, self.failures + 1)
        return delay

    def reset(self) -> None:
        """A success: the next failure starts the backoff again from ``base``."""
        self.failures = 0
