"""Triggers that wait, in the triggerer, until a KT export queue holds data.

A probe cannot peek: the export API's ``GET /v2/stream`` *leases* the batch it
returns, and the batch goes back to the queue only when the lease ends (120 s).
So a probe never acknowledges what it found and reports when its lease ends;
the drain that follows keeps polling until then (``drain_until``) and lands the
probed batch in the same run. See docs/sensor.md.

The HTTP work is async (``httpx.AsyncClient``): nothing here blocks the
triggerer's event loop. What a status means, the body's shape, backoff, the
errors and redaction come from :mod:`airflow_provider_ktexport.protocol`, which the
sync client uses too, so the sensor and the drain read the server the same way.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
from airflow.triggers.base import BaseEventTrigger, BaseTrigger, TriggerEvent

from airflow_provider_ktexport._inflate import BodyTooLarge, CappedDecoder
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportBodyTooLargeError,
    KtExportConfigError,
    KtExportError,
    KtExportHTTPError,
    KtExportProtocolError,
    KtExportTransientError,
)
from airflow_provider_ktexport.protocol import (
    AUTH_STATUSES,
    EMPTY_STATUSES,
    SENSOR_BACKOFF_FLOOR,
    STREAM_PATH,
    TRANSIENT_STATUSES,
    ack_answer,
    auth_error,
    auth_parts,
    backoff_delay,
    body_excerpt,
    body_too_large_error,
    classify_body,
    guard_http_logs,
    has_cause,
    http_error,
    tls_error,
    transient_status_error,
)
from airflow_provider_ktexport.settings import ClientSettings, safe_proxy, settings_of, ssl_context

try:  # Airflow 3.2+ (the same class is re-exported by airflow.exceptions)
    from airflow.sdk.exceptions import AirflowNotFoundException
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.exceptions import AirflowNotFoundException  # type: ignore[no-redef]

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "KtExportEventTrigger",
    "KtExportTrigger",
    "Probe",
    "error_from_event",
    "lease_end_iso",
]

#: The server's lease (the API documents 120 s); the probed batch returns to the queue after it.
DEFAULT_LEASE_SECONDS = 120.0

# An empty answer that came back faster than this (a server without long poll) is followed by
# a pause, so an idle queue is never polled in a tight loop.
_MIN_EMPTY_CYCLE = 1.0


def lease_end_iso(epoch_seconds: float) -> str:
    """ISO-8601 UTC text (``...+00:00``) of an epoch time: what ``drain_until`` accepts."""
    return datetime.fromtimestamp(epoch_seconds, tz=UTC).isoformat()


@dataclass(frozen=True)
class Probe:
    """A probe that found data: the batch stays leased (not acknowledged) until ``lease_ends_at``.

    :param lease_ends_at: epoch seconds (wall clock) when the batch returns to the queue
    :param record_count: records in the probed batch; ``None`` when its body could not be decoded
    :param batch_id: the leased batch's id, when known (for logs only)
    """

    lease_ends_at: float
    record_count: int | None
    batch_id: str | None = None

    def as_xcom(self) -> dict[str, Any]:
        """The sensor's XCom: metadata only, never records."""
        return {"lease_ends_at": lease_end_iso(self.lease_ends_at), "record_count": self.record_count}

    def as_event(self) -> dict[str, Any]:
        """A success event payload (JSON-serialisable)."""
        return {"status": "success", **self.as_xcom(), "batch_id": self.batch_id}


# ---------------------------------------------------------------------------- errors <-> events

_CAUSES: tuple[tuple[type[KtExportError], str], ...] = (
    (KtExportAuthError, "auth"),
    (KtExportBodyTooLargeError, "body_too_large"),
    (KtExportConfigError, "config"),
    (KtExportProtocolError, "protocol"),
    (KtExportHTTPError, "http"),
    (KtExportTransientError, "transient"),
)


def error_event(exc: BaseException) -> dict[str, Any]:
    """An error event payload that keeps the cause (class, status) and the (redacted) message."""
    cause = "error"
    for kind, name in _CAUSES:
        if isinstance(exc, kind):
            cause = name
            break
    else:
        if isinstance(exc, AirflowNotFoundException):  # the connection id is not defined
            cause = "config"
    event = {
        "status": "error",
        "cause": cause,
        "status_code": getattr(exc, "status_code", None),
        "message": str(exc),
    }
    if isinstance(exc, KtExportBodyTooLargeError):
        event.update(limit=exc.limit, received=exc.received)
    return event


def error_from_event(event: Mapping[str, Any]) -> KtExportError:
    """Rebuild the exception an error event stands for (auth -> :class:`KtExportAuthError`, ...)."""
    message = str(event.get("message") or "the KT export trigger failed without a message")
    status_code = event.get("status_code")
    cause = event.get("cause")
    if cause == "protocol":
        return KtExportProtocolError(message, body=b"")
    if cause == "body_too_large":
        return KtExportBodyTooLargeError(
            message, limit=int(event.get("limit") or 0), received=int(event.get("received") or 0)
        )
    kinds: dict[Any, type[KtExportError]] = {
        "auth": KtExportAuthError,
        "config": KtExportConfigError,
        "http": KtExportHTTPError,
        "transient": KtExportTransientError,
    }
    return kinds.get(cause, KtExportError)(message, status_code=status_code)


# ---------------------------------------------------------------------------- connection settings


async def aclient_settings(conn_id: str) -> ClientSettings:
    """The hook's ``client_settings()`` for ``conn_id``, read without blocking the event loop.

    The connection (and its key) is looked up here, in the triggerer: trigger
    kwargs only ever carry the connection id.
    """
    # The hook module pulls in requests and the sync client (0.2-0.5 s of imports on a first
    # use): imported in a worker thread, not on the triggerer's event loop.
    hooks = await asyncio.to_thread(importlib.import_module, "airflow_provider_ktexport.hooks.ktexport")
    hook = hooks.KtExportHook(ktexport_conn_id=conn_id)
    asettings = getattr(hook, "aclient_settings", None)
    if asettings is not None:
        return await asettings()
    from asgiref.sync import sync_to_async

    return await sync_to_async(hook.client_settings)()


# ---------------------------------------------------------------------------- the async probe


#: Modules httpx and httpcore import lazily on a client's first construction or first request
#: (measured: 0.2-0.5 s on a first use), which would run on the event loop.
_LAZY_IO_MODULES = ("httpcore", "httpcore._backends.anyio", "anyio._backends._asyncio")


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


#: A body larger than this is classified in a worker thread: decoding tens of MB of JSON on the
#: event loop would stall every other trigger of the triggerer.
_CLASSIFY_INLINE_BYTES = 1 << 20


class AsyncProber:
    """One async HTTP client that long-polls the queue; use as ``async with``.

    It takes the same :class:`~airflow_provider_ktexport.settings.ClientSettings` as the drain's
    :class:`~airflow_provider_ktexport.client.KtExportClient` and applies the same rules (proxy,
    TLS trust, key placement, body cap, statuses, errors, redaction). Building the HTTP client
    (a CA bundle load, httpx's first import of httpcore: 0.05-0.5 s of CPU) happens in a worker
    thread on entry, so the triggerer's event loop is never blocked by it.

    :param settings: ``KtExportHook.client_settings()``, or a mapping of
        :func:`~airflow_provider_ktexport.settings.build_client_settings` arguments
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
        self.base_url = self.settings.base_url
        self.conn_label = self.settings.where
        self.long_poll_seconds = self.settings.long_poll_seconds
        self.max_body_bytes = self.settings.max_body_bytes
        if self.settings.auth_location == "query":
            guard_http_logs()  # httpx logs each request's URL at INFO
        self.lease_seconds = float(lease_seconds)
        self.log = logger or log
        self._stream_url = self.base_url + STREAM_PATH
        auth_headers, self._params = auth_parts(self.settings.api_key, self.settings.auth_location)
        self._headers = {**self.settings.headers(), **auth_headers}
        self._transport = transport
        self._client_or_none: httpx.AsyncClient | None = None

    async def __aenter__(self) -> AsyncProber:
        self._client_or_none, proxy = await asyncio.to_thread(self._new_client)
        if proxy:
            self.log.info("%s: probing through proxy %s", self.conn_label, safe_proxy(proxy))
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

    def _safe(self, text: str) -> str:
        return self.settings.redact(text)

    def _excerpt(self, body: bytes) -> str:
        return self._safe(body_excerpt(body))

    async def probe_once(self) -> Probe | None:
        """One GET: a :class:`Probe` when it leased data, ``None`` when the queue answered empty.

        :raises KtExportAuthError: 401/403
        :raises KtExportTransientError: 429/408/502-504, network errors, timeouts
        :raises KtExportHTTPError: any other unexpected status
        """
        status, headers, body, headers_at = await self._request("GET", self._stream_url)
        if status in AUTH_STATUSES:
            raise auth_error(status, self.conn_label, self._excerpt(body))
        if status in TRANSIENT_STATUSES:
            raise transient_status_error("GET", self._stream_url, status, headers.get("retry-after"))
        if status in EMPTY_STATUSES:
            return None  # nothing within the long poll
        if status != 200:
            raise self._http_error("GET", self._stream_url, status, headers, body)
        return await self._classify(body, headers_at)

    async def _request(self, method: str, url: str) -> tuple[int, httpx.Headers, bytes, float]:
        """One request: status, headers, the capped body, and when the headers arrived (epoch
        seconds: a GET's lease clock starts then); failures mapped as the client maps them.

        :raises KtExportTransientError: network errors, timeouts, a corrupt gzip body
        :raises KtExportConfigError: the server's certificate is not trusted
        :raises KtExportBodyTooLargeError: the decoded body passed ``max_body_bytes``
        """
        failure: KtExportError | None = None
        too_large: BodyTooLarge | None = None
        try:
            async with self._client.stream(method, url, params=self._params) as response:
                headers_at = time.time()
                body = await self._read_capped(response)
                return response.status_code, response.headers, body, headers_at
        except BodyTooLarge as exc:
            too_large = exc
        except zlib.error as exc:
            failure = KtExportTransientError(f"{method} {self._safe(url)} sent a corrupt gzip body ({exc})")
        except httpx.TransportError as exc:
            # httpx texts can hold the URL (with ?token= in query mode) or the proxy's URL: redact,
            # and raise outside the except block so the original is not chained as __context__.
            text = self._safe(str(exc))
            if has_cause(exc, ssl.SSLCertVerificationError):
                failure = tls_error(self.base_url, text, self.conn_label)
            else:
                failure = KtExportTransientError(
                    f"{method} {self._safe(url)} failed ({type(exc).__name__}: {text})"
                )
        if too_large is not None:
            raise body_too_large_error(
                method,
                self._safe(url),
                limit=too_large.limit,
                received=too_large.received,
                wire_bytes=too_large.wire_bytes,
                where=self.conn_label,
            )
        assert failure is not None  # the try block returns otherwise
        raise failure

    def _http_error(
        self, method: str, url: str, status: int, headers: httpx.Headers, body: bytes
    ) -> KtExportHTTPError:
        location = headers.get("location")
        return http_error(
            method,
            self._safe(url),
            status,
            base_url=self.base_url,
            where=self.conn_label,
            location=None if location is None else self._safe(location),
            detail=self._excerpt(body),
        )

    async def _read_capped(self, response: httpx.Response) -> bytes:
        """The body with its gzip undone, stopped past ``max_body_bytes`` (raises BodyTooLarge)."""
        if response.is_stream_consumed:
            # A transport that read the body before handing it over (httpx.MockTransport does):
            # it is in memory already, decoded; still refuse it past the limit.
            decoder = CappedDecoder(None, self.max_body_bytes)
            decoder.feed(response.content)
            return decoder.finish()
        try:
            decoder = CappedDecoder(response.headers.get("content-encoding"), self.max_body_bytes)
        except ValueError as exc:
            raise zlib.error(str(exc)) from None
        async for chunk in response.aiter_raw():
            decoder.feed(chunk)
        return decoder.finish()

    async def _classify(self, body: bytes, headers_at: float) -> Probe | None:
        """Empty (no id; or an id with ``"items": []``, acknowledged at once) or data, by the same
        envelope rules as the drain's client (:func:`~airflow_provider_ktexport.protocol.classify_body`)."""
        lease_end = headers_at + self.lease_seconds
        if len(body) > _CLASSIFY_INLINE_BYTES:
            verdict = await asyncio.to_thread(classify_body, body)
        else:
            verdict = classify_body(body)
        if verdict.kind == "problem":
            # Only a lease answers 200 (an empty queue answers 500): count it as data. The drain
            # meets the same body, keeps it in quarantine and reports it, instead of a sensor
            # waiting forever on a batch it cannot read. Never acknowledged here.
            self.log.warning(
                "GET %s answered 200 but %s (%d bytes); counting it as data: the drain will quarantine it",
                self._stream_url,
                verdict.problem,
                len(body),
            )
            return Probe(lease_end, None, verdict.batch_id)
        if verdict.kind == "empty":
            # The vendor's sample client reads a 200 without id as empty; the drain warns the same.
            if verdict.note:
                self.log.warning(
                    "GET %s answered 200 but %s; treating the queue as empty", self._stream_url, verdict.note
                )
            return None
        assert verdict.batch_id is not None  # an empty batch or data always has its id
        if verdict.kind == "data":
            return Probe(lease_end, len(verdict.items), verdict.batch_id)
        await self._ack_empty(verdict.batch_id)
        return None

    async def ack(self, batch_id: str) -> bool:
        """Acknowledge a batch as :meth:`KtExportClient.ack` does: ``True`` on 2xx, ``False`` when the
        id is unknown or expired; transient failures retried up to ``max_retries`` with backoff.

        :raises KtExportAuthError: 401/403
        :raises KtExportTransientError: retries exhausted
        :raises KtExportHTTPError: another unexpected status
        """
        url = f"{self._stream_url}/{quote(batch_id, safe='')}"
        failures = 0
        while True:
            failure: KtExportTransientError | None = None
            try:
                status, headers, body, _ = await self._request("DELETE", url)
            except KtExportTransientError as exc:
                failure = exc
            else:
                if status in AUTH_STATUSES:
                    raise auth_error(status, self.conn_label, self._excerpt(body))
                if status in TRANSIENT_STATUSES:
                    failure = transient_status_error("DELETE", url, status, headers.get("retry-after"))
                else:
                    acked = ack_answer(status)
                    if acked is None:
                        raise self._http_error("DELETE", url, status, headers, body)
                    return acked
            failures += 1
            if failures > self.settings.max_retries:
                raise failure
            await asyncio.sleep(self._backoff(failures, failure.retry_after))

    async def _ack_empty(self, batch_id: str) -> None:
        # Nothing to land: acknowledge now, as the drain does (same rule, same warnings).
        try:
            acked = await self.ack(batch_id)
        except KtExportTransientError as exc:
            self.log.warning(
                "could not acknowledge empty batch %s (%s); it will be redelivered", batch_id, exc
            )
            return
        if not acked:
            self.log.warning("empty batch %s was unknown when acknowledged; its lease had ended", batch_id)

    async def wait_for_data(self, *, deadline: float | None = None) -> Probe | None:
        """Long-poll until a batch is leased; ``None`` once ``deadline`` (epoch seconds) has passed.

        Empty answers loop; transient failures back off (Retry-After honoured) and
        keep waiting; auth, HTTP and configuration errors are raised at once. No GET
        starts past the deadline (one already running may end up to a long poll later).
        """
        failures = 0
        while deadline is None or time.time() < deadline:
            started = time.monotonic()
            try:
                probe = await self.probe_once()
            except KtExportTransientError as exc:
                failures += 1
                delay = self._backoff(failures, exc.retry_after)
                self.log.warning(
                    "%s; still waiting for data, next try in %.1f s", self._safe(str(exc)), delay
                )
                await asyncio.sleep(self._capped(delay, deadline))
                continue
            failures = 0
            if probe is not None:
                return probe
            pause = _MIN_EMPTY_CYCLE - (time.monotonic() - started)
            if pause > 0:
                await asyncio.sleep(self._capped(pause, deadline))
        return None

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        # The drain's backoff settings; a sensor waits on, so never a tight loop even when jitter
        # draws near zero.
        return backoff_delay(
            failures,
            retry_after,
            base=self.settings.backoff_base,
            cap=self.settings.backoff_max,
            floor=SENSOR_BACKOFF_FLOOR,
        )

    @staticmethod
    def _capped(delay: float, deadline: float | None) -> float:
        if deadline is None:
            return delay
        return max(0.0, min(delay, deadline - time.time()))


# ---------------------------------------------------------------------------- triggers


class KtExportTrigger(BaseTrigger):
    """Long-poll the queue from the triggerer until it holds data; used by ``KtExportSensor``.

    Yields one event: ``{"status": "success", "lease_ends_at": ISO-8601, "record_count": n,
    "batch_id": id}`` when a GET leased data (it is *not* acknowledged: it returns to the queue
    at ``lease_ends_at``); ``{"status": "error", "cause": "auth" | "config" | "http" | "protocol"
    | "error", "status_code": ..., "message": ...}`` on a failure waiting cannot fix; or
    ``{"status": "timeout", ...}`` once ``timeout_at`` has passed. Empty answers (500, a 200
    without id) loop; 429/5xx and network errors back off and keep waiting.

    The API key never appears in the kwargs: the trigger reads the connection in the triggerer.

    :param ktexport_conn_id: the KT Export connection
    :param lease_seconds: the server's lease (120 s on the real API)
    :param timeout_at: epoch seconds after which no new GET starts and a timeout event is sent
        (the triggerer's own timeout applies too; this one also works in ``dag.test()``)
    """

    def __init__(
        self,
        *,
        ktexport_conn_id: str = "ktexport_default",
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        timeout_at: float | None = None,
    ) -> None:
        super().__init__()
        self.ktexport_conn_id = ktexport_conn_id
        self.lease_seconds = float(lease_seconds)
        self.timeout_at = None if timeout_at is None else float(timeout_at)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs: the connection id, never the key."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "ktexport_conn_id": self.ktexport_conn_id,
                "lease_seconds": self.lease_seconds,
                "timeout_at": self.timeout_at,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait for data; yield exactly one event."""
        try:
            settings = await aclient_settings(self.ktexport_conn_id)
            async with AsyncProber(settings, lease_seconds=self.lease_seconds, logger=self.log) as prober:
                probe = await prober.wait_for_data(deadline=self.timeout_at)
        except (KtExportError, AirflowNotFoundException) as exc:
            # The cause travels in the event; execute_complete raises the matching error.
            yield TriggerEvent(error_event(exc))
            return
        if probe is None:
            yield TriggerEvent(
                {"status": "timeout", "message": f"no data in the queue of {self.ktexport_conn_id!r} in time"}
            )
            return
        self.log.info(
            "batch %s leased (%s records); its lease ends at %s",
            probe.batch_id,
            probe.record_count,
            lease_end_iso(probe.lease_ends_at),
        )
        yield TriggerEvent(probe.as_event())


class KtExportEventTrigger(BaseEventTrigger):
    """Fire an event each time the queue holds data, for ``AssetWatcher`` scheduling.

    A probe leases the batch it finds, so firing and probing again at once would
    keep the batch away from the drain the event starts (starvation). After each
    event this trigger therefore sleeps past the probed lease *and* the drain's
    grace long poll (``lease_ends_at + long_poll_seconds``, at least
    ``lease_seconds`` from firing) before it probes again. The event payload
    carries ``lease_ends_at`` for the drain's ``drain_until``, reachable in the
    triggered DAG as ``triggering_asset_events`` ... ``.extra["payload"]["lease_ends_at"]``.

    An auth or configuration failure is raised (the triggerer logs it and the
    watcher stops): an asset event must not stand for "the key is wrong".

    :param ktexport_conn_id: the KT Export connection
    :param lease_seconds: the server's lease (120 s on the real API)
    """

    def __init__(
        self, *, ktexport_conn_id: str = "ktexport_default", lease_seconds: float = DEFAULT_LEASE_SECONDS
    ) -> None:
        super().__init__()
        self.ktexport_conn_id = ktexport_conn_id
        self.lease_seconds = float(lease_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and kwargs: the connection id, never the key."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"ktexport_conn_id": self.ktexport_conn_id, "lease_seconds": self.lease_seconds},
        )

    def quiet_until(self, probe: Probe, fired_at: float, long_poll_seconds: float) -> float:
        """When the next probe may start: past the lease and the drain's grace long poll."""
        return max(probe.lease_ends_at, fired_at + self.lease_seconds) + long_poll_seconds

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield an event per probed batch, pausing at least one lease after each."""
        settings = await aclient_settings(self.ktexport_conn_id)
        async with AsyncProber(settings, lease_seconds=self.lease_seconds, logger=self.log) as prober:
            while True:
                probe = await prober.wait_for_data()
                if probe is None:  # pragma: no cover - no deadline, so wait_for_data returns a probe
                    continue
                fired_at = time.time()
                resume_at = self.quiet_until(probe, fired_at, prober.long_poll_seconds)
                self.log.info(
                    "batch %s leased (%s records), lease ends at %s; next probe after %s",
                    probe.batch_id,
                    probe.record_count,
                    lease_end_iso(probe.lease_ends_at),
                    lease_end_iso(resume_at),
                )
                yield TriggerEvent(probe.as_event())
                await asyncio.sleep(max(0.0, resume_at - time.time()))
