"""The async client of the export API (httpx): what the sensor's trigger long-polls with.

It only does I/O, on the triggerer's event loop: every answer is read by
:mod:`airflow_provider_ktexport.api.exchange` and every failure named by
:mod:`airflow_provider_ktexport.api.errors`, the modules the drain's sync client
(:mod:`.sync_client`) drives too, so the sensor and the drain read the server the same way.
Anything that costs CPU (building the client, a CA bundle load, classifying a large body) runs
in a worker thread, so no other trigger of the triggerer waits on it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
import time
import zlib
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from airflow_provider_ktexport.api import exchange
from airflow_provider_ktexport.api.errors import has_cause, transport_error
from airflow_provider_ktexport.api.exchange import (
    DEFAULT_LEASE_SECONDS,
    MIN_EMPTY_CYCLE,
    SENSOR_BACKOFF_FLOOR,
    STREAM_PATH,
    Answer,
    Call,
    Retrying,
    auth_parts,
)
from airflow_provider_ktexport.api.inflate import BodyTooLarge, CappedDecoder
from airflow_provider_ktexport.api.probe import Probe, probe_of
from airflow_provider_ktexport.api.proxy import safe_proxy
from airflow_provider_ktexport.api.redact import guard_http_logs
from airflow_provider_ktexport.api.settings import ClientSettings, settings_of
from airflow_provider_ktexport.exceptions import KtExportError, KtExportTransientError
from airflow_provider_ktexport.transport.environment import ssl_context

log = logging.getLogger(__name__)

__all__ = ["AsyncProber"]

_Outcome = TypeVar("_Outcome")

#: Modules httpx and httpcore import lazily on a client's first construction or first request
#: (measured: 0.2-0.5 s on a first use), which would run on the event loop.
_LAZY_IO_MODULES = ("httpcore", "httpcore._backends.anyio", "anyio._backends._asyncio")
#: A body larger than this is classified in a worker thread: decoding tens of MB of JSON on the
#: event loop would stall every other trigger of the triggerer.
_CLASSIFY_INLINE_BYTES = 1 << 20


def _preload_io_modules() -> None:
    """Import what a first request would import, here in a worker thread (names may move)."""
    for name in _LAZY_IO_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - another httpcore/anyio layout: only slower
            pass


def _proxy(url: str | None, context: ssl.SSLContext) -> httpx.Proxy | None:
    """httpx's proxy for ``url``; TLS to an https:// proxy trusts what the server link trusts."""
    if url is None:
        return None
    return httpx.Proxy(url, ssl_context=context if url.lower().startswith("https://") else None)


class AsyncProber:
    """One async HTTP client that long-polls the queue; use as ``async with``.

    It takes the same :class:`~airflow_provider_ktexport.api.settings.ClientSettings` as the
    drain's :class:`~airflow_provider_ktexport.transport.sync_client.KtExportClient` and drives
    the same exchange rules. Building the HTTP client happens in a worker thread on entry.

    :param settings: ``KtExportHook.client_settings()``, or a mapping of
        :func:`~airflow_provider_ktexport.api.settings.build_client_settings` arguments
    :param lease_seconds: the server's lease, used for the lease end
    :param logger: where warnings go (the trigger's own logger)
    :param transport: an httpx transport to use instead of the network (tests)
    """

    def __init__(
        self,
        settings: ClientSettings | Mapping[str, Any],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        logger: Any = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = settings_of(settings)
        if self.settings.auth_location == "query":
            guard_http_logs()  # httpx logs each request's URL at INFO
        self.lease_seconds = float(lease_seconds)
        self.log = logger or log
        self._stream_url = self.settings.base_url + STREAM_PATH
        auth_headers, self._params = auth_parts(self.settings.api_key, self.settings.auth_location)
        self._headers = {**self.settings.headers(), **auth_headers}
        self._transport = transport
        self._client_or_none: httpx.AsyncClient | None = None

    @property
    def long_poll_seconds(self) -> float:
        """How long the server holds an empty GET (``settings.long_poll_seconds``)."""
        return self.settings.long_poll_seconds

    async def __aenter__(self) -> AsyncProber:
        self._client_or_none, proxy = await asyncio.to_thread(self._new_client)
        if proxy:
            self.log.info("%s: probing through proxy %s", self.settings.where, safe_proxy(proxy))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._client_or_none is not None:
            await self._client_or_none.aclose()
            self._client_or_none = None

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._client_or_none is None:
            raise RuntimeError("use AsyncProber as 'async with AsyncProber(...) as prober'")
        return self._client_or_none

    def _new_client(self) -> tuple[httpx.AsyncClient, str | None]:
        """The httpx client and its proxy; runs in a worker thread (CA bundle load, imports)."""
        _preload_io_modules()
        settings = self.settings
        context = ssl_context(settings.ca_bundle())
        proxy_url = settings.proxy_url()
        client = httpx.AsyncClient(
            headers=self._headers,
            timeout=httpx.Timeout(settings.connect_timeout, read=settings.read_timeout),
            verify=context,
            # The proxy comes from settings.proxy_url() (the same rule as the drain's client), so
            # httpx must not read the environment itself.
            proxy=_proxy(proxy_url, context),
            trust_env=False,
            # A redirect would carry the key elsewhere.
            follow_redirects=False,
            transport=self._transport,
        )
        return client, proxy_url

    # ------------------------------------------------------------------ the exchange

    async def probe_once(self) -> Probe | None:
        """One GET: a :class:`Probe` when it leased data (or a body the drain will quarantine),
        ``None`` when the queue answered empty. Never acknowledges what it leased.

        :raises KtExportAuthError: 401/403
        :raises KtExportTransientError: 429/408/502-504, network errors, timeouts
        :raises KtExportHTTPError: any other unexpected status
        """
        outcome = await self._once(self._call("GET", self._stream_url), self._read_get)
        if isinstance(outcome, exchange.Retry):
            raise outcome.error
        if isinstance(outcome, exchange.Empty):
            await self._on_empty(outcome)
            return None
        if isinstance(outcome, exchange.Problem):
            # Counted as data (api.probe.probe_of): the drain keeps it in quarantine.
            self.log.warning(
                "GET %s answered 200 but %s (%d bytes); counting it as data: the drain will quarantine it",
                self._stream_url,
                outcome.problem,
                len(outcome.body),
            )
        return probe_of(outcome, self.lease_seconds, now_mono=time.monotonic(), now_wall=time.time())

    async def ack(self, batch_id: str) -> bool:
        """Acknowledge a batch: ``True`` on 2xx, ``False`` when the id is unknown or expired, or unfit
        for a DELETE (never sent); transient failures retried up to ``max_retries`` with backoff.

        :raises KtExportAuthError: 401/403
        :raises KtExportTransientError: retries exhausted
        :raises KtExportHTTPError: another unexpected status
        """
        refused = exchange.unackable(batch_id)
        if refused:
            self.log.warning("%s", refused)
            return False
        call = self._call("DELETE", f"{self._stream_url}/{quote(batch_id, safe='')}")
        settings = self.settings
        retrying = Retrying(settings.backoff_base, settings.backoff_max, settings.max_retries, settings.where)
        while True:
            outcome = await self._once(call, exchange.read_delete)
            if not isinstance(outcome, exchange.Retry):
                assert isinstance(outcome, exchange.Acked)  # a Fail was raised
                return outcome.acked
            delay = retrying.next_delay(outcome.error)
            self.log.warning(
                "%s; retry %d of %d in %.1f s", outcome.error, retrying.failures, settings.max_retries, delay
            )
            await asyncio.sleep(delay)

    async def wait_for_data(self, *, deadline: float | None = None) -> Probe | None:
        """Long-poll until a batch is leased; ``None`` once ``deadline`` (epoch seconds: the
        sensor's ``timeout_at``, set in another process) has passed.

        Empty answers loop (paced: :data:`~airflow_provider_ktexport.api.exchange.MIN_EMPTY_CYCLE`);
        transient failures back off (Retry-After honoured, never below the sensor's floor) and
        keep waiting; auth, HTTP and configuration errors are raised at once. No GET starts past
        the deadline (one already running may end up to a long poll later).
        """
        settings = self.settings
        retrying = Retrying(
            settings.backoff_base, settings.backoff_max, None, settings.where, SENSOR_BACKOFF_FLOOR
        )
        while deadline is None or time.time() < deadline:
            started = time.monotonic()
            try:
                probe = await self.probe_once()
            except KtExportTransientError as exc:
                delay = retrying.next_delay(exc)
                self.log.warning(
                    "%s; still waiting for data, next try in %.1f s", settings.redact(str(exc)), delay
                )
                await asyncio.sleep(_capped(delay, deadline))
                continue
            retrying.reset()
            if probe is not None:
                return probe
            pause = MIN_EMPTY_CYCLE - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(_capped(pause, deadline))
        return None

    # ------------------------------------------------------------------ I/O

    def _call(self, method: str, url: str) -> Call:
        settings = self.settings
        return Call(method, url, settings.redact(url), settings.base_url, settings.where, settings.redact)

    async def _read_get(self, answer: Answer, call: Call) -> Any:
        """:func:`~airflow_provider_ktexport.api.exchange.read_get`, off the loop for a large body."""
        if len(answer.body) > _CLASSIFY_INLINE_BYTES:
            return await asyncio.to_thread(exchange.read_get, answer, call)
        return exchange.read_get(answer, call)

    async def _once(self, call: Call, read: Callable[[Answer, Call], Any]) -> Any:
        """One request, read by ``read`` (sync or async); a Fail is raised, a transport failure
        comes back as a Retry (or is raised when retrying cannot fix it)."""
        failure: KtExportError | None = None
        try:
            answer = await self._request(call)
        except httpx.TransportError as exc:
            failure = self._transport_error(call, exc)
        except zlib.error as exc:
            failure = self._transport_error(call, exc)
        # Raised outside the except block so the httpx exception (its text can hold the URL, with
        # ?token= in query mode) is not chained as __context__.
        if isinstance(failure, KtExportTransientError):
            return exchange.Retry(failure)
        if failure is not None:
            raise failure
        outcome = read(answer, call)
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if isinstance(outcome, exchange.Fail):
            raise outcome.error
        return outcome

    async def _request(self, call: Call) -> Answer:
        """Status, the capped body, two headers, and when the headers arrived (monotonic clock:
        a GET's lease clock starts then).

        :raises KtExportBodyTooLargeError: the decoded body passed ``max_body_bytes``
        """
        try:
            async with self._client.stream(call.method, call.url, params=self._params) as response:
                received_at = time.monotonic()
                body = await self._read_capped(response)
                headers = response.headers
                return Answer(
                    response.status_code,
                    body,
                    headers.get("retry-after"),
                    headers.get("location"),
                    received_at,
                )
        except BodyTooLarge as exc:
            raise call.too_large(exc) from None  # the decoder's signal is no cause worth showing

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The body with its gzip undone, stopped past ``max_body_bytes`` (raises BodyTooLarge)."""
        limit = self.settings.max_body_bytes
        if response.is_stream_consumed:
            # A transport that read the body before handing it over (httpx.MockTransport does):
            # it is in memory already, decoded; still refuse it past the limit.
            decoder = CappedDecoder(None, limit)
            decoder.feed(response.content)
            return decoder.finish()
        try:
            decoder = CappedDecoder(response.headers.get("content-encoding"), limit)
        except ValueError as exc:
            raise zlib.error(str(exc)) from None
        async for chunk in response.aiter_raw():
            decoder.feed(chunk)
        return decoder.finish()

    def _transport_error(self, call: Call, exc: Exception) -> KtExportError:
        # Only the type name and a redacted text survive, named as the sync client names them.
        if isinstance(exc, zlib.error):
            kind, failure = "other", f"ContentDecodingError: the gzip body is corrupt ({exc})"
        else:
            kind = _failure_kind(exc)
            failure = f"{type(exc).__name__}: {self.settings.redact(str(exc))}"
        return transport_error(
            kind, call.method, call.safe_url, failure, base_url=self.settings.base_url, where=call.where
        )

    async def _on_empty(self, empty: exchange.Empty) -> None:
        """Warn about an odd empty 200; acknowledge an empty batch at once (the shared rule)."""
        if empty.note:
            # The vendor's sample client reads a 200 without id as empty; the drain warns the same.
            self.log.warning(
                "GET %s answered 200 but %s; treating the queue as empty", self._stream_url, empty.note
            )
        if empty.ack_id is not None:
            try:
                result: bool | Exception = await self.ack(empty.ack_id)
            except KtExportTransientError as exc:
                result = exc
            exchange.report_empty_ack(empty.ack_id, result, self.log)


def _failure_kind(exc: Exception) -> str:
    """What an httpx transport failure was, in the words the sync client uses for requests'."""
    if has_cause(exc, ssl.SSLCertVerificationError):
        return "tls"
    if isinstance(exc, httpx.UnsupportedProtocol):
        return "invalid_url"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.NetworkError | httpx.ProxyError):
        return "connection"
    return "other"


def _capped(delay: float, deadline: float | None) -> float:
    if deadline is None:
        return delay
    return max(0.0, min(delay, deadline - time.time()))
