"""HTTP client for a Key Telematics "HTTP Export Task" queue, over requests (no Airflow import).

One :class:`KtExportClient` holds one ``requests.Session`` for its whole life, so keep-alive
connections are reused. It only does I/O: every answer is read by
:mod:`airflow_provider_ktexport.api.exchange` (what a status and a body mean, the empty-batch
ack, the retry policy) and every failure is named by :mod:`airflow_provider_ktexport.api.errors`,
the same modules the async client (:mod:`.async_client`) drives, so the drain and the sensor
cannot drift apart. The API key stays out of every message, log line, ``repr`` and exception chain.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import TracebackType
from typing import Any
from urllib.parse import quote

import msgspec
import requests
from requests.adapters import HTTPAdapter

from airflow_provider_ktexport.api import exchange
from airflow_provider_ktexport.api.errors import has_cause, transport_error
from airflow_provider_ktexport.api.exchange import STREAM_PATH, Answer, Call, Retrying, auth_parts
from airflow_provider_ktexport.api.inflate import BodyTooLarge
from airflow_provider_ktexport.api.keymask import key_mask
from airflow_provider_ktexport.api.proxy import safe_proxy
from airflow_provider_ktexport.api.redact import guard_http_logs
from airflow_provider_ktexport.api.settings import ClientSettings, build_client_settings
from airflow_provider_ktexport.exceptions import KtExportError, KtExportProtocolError, KtExportTransientError
from airflow_provider_ktexport.transport.body import read_body

log = logging.getLogger(__name__)

__all__ = ["Batch", "KtExportClient"]

_RECORD_DECODER = msgspec.json.Decoder()


@dataclass(eq=False)
class Batch:
    """One leased batch: acknowledge it with :meth:`KtExportClient.ack` within the lease (120 s).

    :param id: the batch id to acknowledge
    :param raw_items: each record's JSON bytes, exactly as sent
    :param leased_at: ``time.monotonic()`` when the GET's response headers arrived (the lease clock)
    :param body_size: bytes of the body after gzip decoding
    """

    id: str
    raw_items: list[bytes] = field(repr=False)
    leased_at: float
    body_size: int

    @cached_property
    def items(self) -> list[dict[str, Any]]:
        """The records decoded to dicts (on first use; the raw bytes stay the source of truth)."""
        return [_RECORD_DECODER.decode(raw) for raw in self.raw_items]

    def __len__(self) -> int:
        return len(self.raw_items)

    def __repr__(self) -> str:
        return f"Batch(id={self.id!r}, records={len(self.raw_items)}, body_size={self.body_size})"


class KtExportClient:
    """Talks to one HTTP Export Task; thread-safe (``get_batch`` and ``ack`` may run concurrently).

    :param base_url: full URL (``https://export.us1.kt1.io``) or bare host (https assumed)
    :param api_key: the export task's API key; never logged, raised or shown in ``repr``
    :param options: :class:`~airflow_provider_ktexport.api.settings.ClientSettings` fields
        (``auth_location``, ``verify``, ``read_timeout``, ``max_retries``, ``proxy``, ...), whose
        defaults and bounds are that class's; validated by
        :func:`~airflow_provider_ktexport.api.settings.build_client_settings`

    :meth:`from_settings` takes settings built once (the async client takes the same settings).
    The client keeps them as ``settings``.
    """

    def __init__(self, base_url: str, api_key: str, **options: Any) -> None:
        self._setup(build_client_settings(base_url, api_key, **options))

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> KtExportClient:
        """A client for settings already validated (what the hook builds, once per connection)."""
        client = cls.__new__(cls)
        client._setup(settings)
        return client

    def _setup(self, settings: ClientSettings) -> None:
        self.settings = settings
        #: How long the server holds an empty GET: the one field the drain's ``BatchSource`` reads.
        self.long_poll_seconds = settings.long_poll_seconds
        # Resolved once, by the rules the async client applies too: the environment is not
        # consulted again per request (the session's trust_env is off).
        self._verify = settings.ca_bundle()
        proxy = settings.proxy_url()
        self._proxies = {"http": proxy, "https": proxy} if proxy else {}
        if proxy:
            log.info("%s: requests go through proxy %s", settings.where, safe_proxy(proxy))
        self._stream_url = settings.base_url + STREAM_PATH
        self._auth_headers, self._auth_params = auth_parts(settings.api_key, settings.auth_location)
        if settings.auth_location == "query":
            guard_http_logs()
        self._session = self._new_session()
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        """The normalised base URL (``settings.base_url``)."""
        return self.settings.base_url

    @property
    def auth_location(self) -> str:
        """Where the key goes: ``"header"`` or ``"query"`` (``settings.auth_location``)."""
        return self.settings.auth_location

    def _new_session(self) -> requests.Session:
        session = requests.Session()
        # Proxy and CA bundle were resolved from the environment once, the same way the async
        # client resolves them; .netrc must not add an Authorization header either.
        session.trust_env = False
        # Retries are ours (they know Retry-After, auth and the deadline): urllib3 must not retry too.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=self.settings.pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update({**self.settings.headers(), "connection": "keep-alive"})
        session.verify = self._verify
        session.proxies.update(self._proxies)
        return session

    def __repr__(self) -> str:
        return f"KtExportClient(base_url={self.base_url!r}, auth_location={self.auth_location!r})"

    # ------------------------------------------------------------------ public API

    def get_batch(self, *, deadline: float | None = None) -> Batch | None:
        """Lease the next batch, or return ``None`` when the queue is empty.

        Empty is: ``500`` after the long poll, or a ``200`` without an id. A ``200`` with an id
        and ``"items": []`` is acknowledged at once and read as empty too. Any other shape
        (see :func:`~airflow_provider_ktexport.api.envelope.classify_body`) is a protocol error.

        :param deadline: a ``time.monotonic()`` value. Each attempt's timeouts are
            capped to reach it; when the cap ends a request, or the deadline has
            already passed, ``None`` is returned (an abandoned lease is simply
            redelivered later). A retry whose backoff would end past it is not
            started: the transient error is raised instead.
        :raises KtExportAuthError: 401/403 (never retried)
        :raises KtExportTransientError: retries exhausted (or cut short by ``deadline``)
        :raises KtExportHTTPError: any other unexpected status (404: wrong base URL)
        :raises KtExportProtocolError: a 200 whose body cannot be decoded, or whose envelope is not
            one to acknowledge (``items`` missing or null, unknown keys, an id unfit for a DELETE):
            ``.body``, and ``.batch_id`` when it is the envelope's own and ackable
        :raises KtExportBodyTooLargeError: the decoded body passed ``max_body_bytes`` (not kept)
        """
        call = self._call("GET", self._stream_url)
        outcome = self._send(
            call, exchange.read_get, deadline=deadline, max_retries=self.settings.max_retries
        )
        if outcome is None:
            return None
        if isinstance(outcome, exchange.Problem):
            raise self._protocol_error(outcome)
        if isinstance(outcome, exchange.Empty):
            self._on_empty(outcome)
            return None
        return Batch(outcome.batch_id, outcome.items, outcome.received_at, outcome.body_size)

    def ack(self, batch_id: str) -> bool:
        """Acknowledge (delete) a batch; ``True`` on 2xx, ``False`` when the id is unknown or expired.

        The API answers ``500`` (sometimes ``404``) for an unknown id: the lease had
        ended and the batch will be delivered again. Transient failures are retried.
        An id unfit for a DELETE (:func:`~airflow_provider_ktexport.api.envelope.is_ackable_id`)
        is never sent: ``False``.

        :raises KtExportAuthError: 401/403
        :raises KtExportTransientError: retries exhausted
        :raises KtExportHTTPError: another unexpected status
        """
        if not isinstance(batch_id, str) or not batch_id:
            raise ValueError(f"batch_id must be a non-empty string, not {batch_id!r}")
        refused = exchange.unackable(batch_id)
        if refused:
            log.warning("%s", refused)
            return False
        call = self._call("DELETE", f"{self._stream_url}/{quote(batch_id, safe='')}")
        outcome = self._send(call, exchange.read_delete, deadline=None, max_retries=self.settings.max_retries)
        assert isinstance(outcome, exchange.Acked)  # no deadline, so _send always answers
        if not outcome.acked:
            log.debug("ack of batch %s: unknown or expired id", batch_id)
        return outcome.acked

    def redact_body(self, body: bytes) -> bytes:
        """``body`` with this client's API key masked in every spelling (raw, URL-encoded,
        JSON-escaped) and nothing else changed: what a quarantined body may store."""
        return self.settings.redact_bytes(body)

    def mask_records(self, raws: Sequence[bytes]) -> list[bytes]:
        """Records fit to store (rows, ``_raw``, rejects): this client's API key masked inside
        their JSON strings in every spelling, every other byte kept (see ``api/keymask.py``)."""
        return key_mask(self.settings.api_key).records(raws)

    def redact_text(self, text: str) -> str:
        """Text for humans (a log line, an error message): the key and any ``token=`` value masked."""
        return self.settings.redact(text)

    def check(self) -> None:
        """Prove the key is accepted without leasing data (for ``test_connection``).

        Deletes a random id that cannot exist: ``500``/``404`` (or 2xx) means the
        server accepted the key. At most one retry, so a UI test answers quickly.

        :raises KtExportAuthError: the key is refused
        :raises KtExportError: the server cannot be reached or answers oddly
        """
        call = self._call("DELETE", f"{self._stream_url}/ktexport-connection-test-{uuid.uuid4().hex}")
        self._send(call, exchange.read_delete, deadline=None, max_retries=min(self.settings.max_retries, 1))

    def close(self) -> None:
        """Close the pooled connections; the client cannot be used afterwards."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._session.close()

    def __enter__(self) -> KtExportClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    def _call(self, method: str, url: str) -> Call:
        settings = self.settings
        return Call(method, url, settings.redact(url), settings.base_url, settings.where, settings.redact)

    def _send(self, call: Call, read: Any, *, deadline: float | None, max_retries: int) -> Any:
        """Send with retries until ``read`` (an :mod:`~airflow_provider_ktexport.api.exchange`
        reader) gives an outcome that is not a retry; ``None`` when the deadline cut it."""
        retrying = Retrying(
            self.settings.backoff_base, self.settings.backoff_max, max_retries, self.settings.where
        )
        while True:
            outcome = self._attempt(call, read, deadline)
            if isinstance(outcome, exchange.Fail):
                raise outcome.error
            if not isinstance(outcome, exchange.Retry):
                return outcome
            delay = retrying.next_delay(outcome.error, deadline=deadline, now=time.monotonic())
            log.warning("%s; retry %d of %d in %.1f s", outcome.error, retrying.failures, max_retries, delay)
            time.sleep(delay)

    def _attempt(self, call: Call, read: Any, deadline: float | None) -> Any:
        """One request read by ``read``; a transport failure as a Retry or a Fail; ``None`` when
        our own deadline cap ended it (a lease taken meanwhile is redelivered later)."""
        timeout, capped = self._timeouts(deadline)
        if timeout is None:
            return None
        failure: KtExportError | None = None
        try:
            answer = self._request(call, timeout)
        except requests.RequestException as exc:
            if capped and deadline is not None and time.monotonic() >= deadline - 0.05:
                log.debug("%s %s stopped at the caller's deadline", call.method, call.safe_url)
                return None
            failure = self._transport_error(call, exc)
        # Returned outside the except block so the requests exception (its text holds the URL,
        # with ?token= in query mode) is not chained as __context__.
        if failure is not None:
            return (
                exchange.Retry(failure)
                if isinstance(failure, KtExportTransientError)
                else exchange.Fail(failure)
            )
        return read(answer, call)

    def _request(self, call: Call, timeout: tuple[float, float]) -> Answer:
        # stream=True returns as soon as the headers are in: that instant starts the lease clock.
        response = self._session.request(
            call.method,
            call.url,
            headers=self._auth_headers,
            params=self._auth_params,
            timeout=timeout,
            stream=True,
            # A redirect would carry x-access-token to wherever it points: never follow one.
            allow_redirects=False,
            verify=self._verify,
            proxies=self._proxies,
        )
        received_at = time.monotonic()
        try:
            body = read_body(response, self.settings.max_body_bytes)
        except BodyTooLarge as exc:
            raise call.too_large(exc) from None  # the decoder's signal is no cause worth showing
        finally:
            response.close()
        headers = response.headers
        return Answer(
            response.status_code, body, headers.get("retry-after"), headers.get("location"), received_at
        )

    def _timeouts(self, deadline: float | None) -> tuple[tuple[float, float] | None, bool]:
        """(connect, read) timeouts for one attempt, capped to reach ``deadline``; None if it has passed."""
        connect, read = self.settings.connect_timeout, self.settings.read_timeout
        if deadline is None:
            return (connect, read), False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None, True
        cap = max(0.1, remaining)
        return (min(connect, cap), min(read, cap)), cap < read

    def _transport_error(self, call: Call, exc: requests.RequestException) -> KtExportError:
        # Only the type name and a redacted text survive: the original holds the full URL.
        if has_cause(exc, ssl.SSLCertVerificationError):
            kind = "tls"
        elif isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema):
            kind = "invalid_url"
        elif isinstance(exc, requests.Timeout):
            kind = "timeout"
        elif isinstance(exc, requests.ConnectionError):
            kind = "connection"
        else:
            kind = "other"
        failure = f"{type(exc).__name__}: {self.settings.redact(str(exc))}"
        return transport_error(
            kind, call.method, call.safe_url, failure, base_url=self.base_url, where=call.where
        )

    # ------------------------------------------------------------------ outcomes

    def _on_empty(self, empty: exchange.Empty) -> None:
        """Warn about an odd empty 200; acknowledge an empty batch at once (the shared rule)."""
        if empty.note:
            log.warning("GET %s answered 200 but %s; treating the queue as empty", self._safe(), empty.note)
        if empty.ack_id is not None:
            try:
                result: bool | Exception = self.ack(empty.ack_id)
            except KtExportTransientError as exc:
                result = exc
            exchange.report_empty_ack(empty.ack_id, result, log)

    def _safe(self) -> str:
        """The stream URL fit for logs: no query string, no key."""
        return self.settings.redact(self._stream_url)

    def _protocol_error(self, problem: exchange.Problem) -> KtExportProtocolError:
        # The body is kept for quarantine: redacted here, at the source, so no path that stores
        # it can keep the key (a proxy page that echoes the request URL holds ?token=<key>).
        body = self.redact_body(problem.body)
        batch_id = problem.batch_id
        return KtExportProtocolError(
            f"GET {self._safe()} answered 200 but {problem.problem}"
            + (f" (batch id {batch_id})" if batch_id else "")
            + f"; {len(body)} bytes kept for quarantine",
            body=body,
            batch_id=batch_id,
        )
