"""A local emulator of the Key Telematics HTTP Export Task API, with fault injection.

Standard library only, and nothing imported from the rest of the package: the
client and the emulator must not share code, or a shared bug would pass every
test. Behaviour follows docs/architecture.md section 1: ``GET /v2/stream`` leases a batch,
``DELETE /v2/stream/{id}`` acknowledges it, an unacknowledged lease goes back
to the front of the queue, an empty queue is long-polled and then answered 500.

Use it in tests::

    with Emulator(lease_seconds=1, long_poll_seconds=0.5) as emu:
        emu.generate(100)
        requests.get(emu.url + "/v2/stream", headers={"x-access-token": emu.api_key})

or as the ``ktexport-emulator`` command (see :func:`main`). The control plane
under ``/_emulator/`` (stats, records, generate, faults, seqs, script, poison, hostile) needs no
key and answers loopback clients only.

This module holds the API's behaviour: queue, leases, faults, scripts and
accounting, answered as :class:`Response` values. The sockets, TLS and gzip are
in :mod:`airflow_provider_ktexport.testing._http` and the command line is in
:mod:`airflow_provider_ktexport.testing.cli`. Both import this module, so it
imports them only when needed: importing it alone loads only the record generator.
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import ssl
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_ktexport.testing.records import (
    HOSTILE_KINDS,
    KEY_TEXT_KINDS,
    RecordGenerator,
    hostile_record,
    key_text_record,
)

if TYPE_CHECKING:
    from airflow_provider_ktexport.testing._http import _Server

log = logging.getLogger(__name__)

#: Fault rates (0..1 per API request), in the order they are rolled.
FAULT_NAMES: tuple[str, ...] = (
    "reset",
    "status_429",
    "status_502",
    "status_503",
    "status_504",
    "html_error",
    "truncated",
    "invalid_utf8",
    "slow",
    "reset_after_ack",
    "items_missing",
    "items_null",
    "items_renamed",
    "items_twice",
    "items_escaped",
    "id_twice",
    "gzip_trailer",
)
#: Envelope faults: the batch is leased and served with its id but no readable ``items`` (the key
#: left out, ``null``, or renamed to ``records``): a client must never acknowledge such a batch.
ENVELOPE_FAULTS: tuple[str, ...] = ("items_missing", "items_null", "items_renamed")
#: Faults of a batch's first delivery only (what a broken proxy or gateway makes of a body); its
#: redelivery is served properly. ``items_twice`` adds ``"items":[]`` after the records,
#: ``items_escaped`` adds it spelled ``"i\u0074ems"``, ``id_twice`` adds a second id: a reader
#: that keeps the last key sees an empty batch or another id. ``gzip_trailer`` appends
#: ``gzip_trailer_bytes`` zero bytes after the end of the gzip stream.
FIRST_DELIVERY_FAULTS: tuple[str, ...] = ("items_twice", "items_escaped", "id_twice", "gzip_trailer")
#: The first-delivery faults whose records a reader keeping the last key never sees.
_REPEATED_KEY_FAULTS = ("items_twice", "items_escaped", "id_twice")
#: Fault settings that are not rates.
FAULT_SETTINGS: dict[str, float] = {"retry_after": 1.0, "slow_seconds": 2.0, "gzip_trailer_bytes": 1 << 20}
_PRE_LEASE = ("reset", "status_429", "status_502", "status_503", "status_504", "html_error")
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_JSON = "application/json; charset=utf-8"
#: In a scripted body this placeholder is replaced by the leased batch id.
ID_PLACEHOLDER = b"$ID"


@dataclass
class Response:
    """One HTTP answer; ``reset`` means close the socket without answering."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    #: Zero bytes sent after the end of the gzip stream (the ``gzip_trailer`` fault).
    trailer: int = 0


@dataclass
class _Script:
    status: int
    body: bytes
    headers: dict[str, str]
    times: int
    lease: bool
    method: str


class _Entry:
    __slots__ = ("seq", "raw", "deliveries")

    def __init__(self, seq: int, raw: bytes) -> None:
        self.seq = seq
        self.raw = raw
        self.deliveries = 0


class _Lease:
    __slots__ = ("id", "entries", "expires")

    def __init__(self, lease_id: str, entries: list[_Entry], expires: float) -> None:
        self.id = lease_id
        self.entries = entries
        self.expires = expires


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _as_record(entry: _Entry) -> dict[str, Any]:
    """The record ``on_ack`` sees; a hostile one Python cannot decode (nested past its recursion
    limit) as ``{"emulator_seq": seq, "_raw": text}``, so a hook can still tell which it is."""
    try:
        record = json.loads(entry.raw)
    except (ValueError, RecursionError):
        return {"emulator_seq": entry.seq, "_raw": entry.raw.decode("utf-8", "replace")}
    return record if isinstance(record, dict) else {"emulator_seq": entry.seq, "_raw": entry.raw.decode()}


def _batch_body(batch_id: bytes, records: bytes, fault: str | None) -> bytes:
    """A leased batch's body, as ``fault`` (an envelope fault, or None) breaks it."""
    if fault == "items_missing":
        return b'{"id":"%b"}' % batch_id
    if fault == "items_null":
        return b'{"id":"%b","items":null}' % batch_id
    if fault == "items_renamed":
        return b'{"id":"%b","records":[%b]}' % (batch_id, records)
    tail = {
        "items_twice": b',"items":[]',
        "items_escaped": b',"i\\u0074ems":[]',
        "id_twice": b',"id":"%b"' % uuid.uuid4().hex.encode(),
    }.get(fault or "", b"")
    return b'{"id":"%b","items":[%b]%b}' % (batch_id, records, tail)


def _error(status: int, message: str, **headers: str) -> Response:
    return Response(status, _json({"error": message}), {"Content-Type": _JSON, **headers})


class Emulator:
    """In-process export API server with leases, long poll, faults and accounting.

    :param host: interface to bind.
    :param port: port to bind, 0 for any free one (see :attr:`url`).
    :param api_key: the key GETs and DELETEs must carry (header ``x-access-token`` or ``?token=``).
    :param lease_seconds: how long a batch stays leased before it is redelivered (120 on the real API).
    :param long_poll_seconds: how long an empty GET is held before the 500 (45 on the real API).
    :param batch_size: records per batch at most.
    :param latency_ms: added to every API request.
    :param seed: makes generated records and faults reproducible.
    :param faults: fault rates and settings, see :data:`FAULT_NAMES` and :data:`FAULT_SETTINGS`.
    :param certfile: PEM certificate; with ``keyfile`` the server speaks HTTPS.
    :param keyfile: PEM private key.
    :param rate: records per second generated in the background once started.
    :param drift_after: generated records show schema drift after this ``emulator_seq``.
    :param distinct: when > 0, records built by :meth:`feed` past this many reuse the content of
        record ``(seq - 1) % distinct + 1`` with their own ``emulator_seq`` (still unique), which makes
        the emulator's CPU per record negligible for million-record benchmarks.
    :param poison: share (0..1) of generated records made hostile (poison mode): valid JSON that
        breaks a naive pipeline, see :data:`~airflow_provider_ktexport.testing.records.HOSTILE_KINDS`.
        Which records is a pure function of ``(seed, emulator_seq)``; the kinds take turns.
        :meth:`hostile_records` tells which records were made hostile, with their exact bytes.
    :param poison_kinds: the hostile kinds to use (default: all of :data:`HOSTILE_KINDS`); the
        :data:`~airflow_provider_ktexport.testing.records.KEY_TEXT_KINDS` (good rows that echo the
        API key or carry another service's ``token=`` URL) only when named here
    :param track_points: generated trips carry a ``track`` list of this many GPS points (0: none)
    :param record_types: generate only these record types (default: the whole mix)
    :param type_names: spread the generated records over this many record types (``<type>_<k>``;
        0: the types as they are)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "test-key",
        lease_seconds: float = 120.0,
        long_poll_seconds: float = 45.0,
        batch_size: int = 500,
        latency_ms: float = 0,
        seed: int = 0,
        faults: dict[str, float] | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        rate: float = 0.0,
        drift_after: int = 200,
        distinct: int = 0,
        poison: float = 0.0,
        poison_kinds: Sequence[str] | None = None,
        track_points: int = 0,
        record_types: Sequence[str] | None = None,
        type_names: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.host = host
        self.port = port
        self.api_key = api_key
        self.lease_seconds = lease_seconds
        self.long_poll_seconds = long_poll_seconds
        self.batch_size = batch_size
        self.latency_ms = latency_ms
        self.seed = seed
        self.certfile = certfile
        self.keyfile = keyfile
        self.rate = rate
        self.distinct = distinct
        self._templates: dict[int, bytes] = {}
        self._hostile: dict[int, tuple[str, bytes]] = {}
        self._broken_leases: set[str] = set()
        self._poison = 0.0
        self._poison_kinds: tuple[str, ...] = HOSTILE_KINDS
        #: Called as ``on_ack(batch_id, records)`` before an ack is applied; raising vetoes it (500).
        self.on_ack: Callable[[str, list[dict[str, Any]]], None] | None = None
        self.generator = RecordGenerator(
            seed,
            drift_after=drift_after,
            track_points=track_points,
            record_types=record_types,
            type_names=type_names,
        )
        self._faults: dict[str, float] = dict.fromkeys(FAULT_NAMES, 0.0) | FAULT_SETTINGS
        self._fault_rng = random.Random(seed)
        self._group_rng = random.Random(seed + 1)
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Entry] = deque()
        self._pending_gen = 0  # records owed by feed(): built only when a GET needs them
        self._next_seq = 1
        self._leases: dict[str, _Lease] = {}
        self._scripts: list[_Script] = []
        self._delivered: list[int] = []
        self._acked: list[int] = []
        self._counts: dict[str, int] = dict.fromkeys(
            (
                "served",
                "emitted",
                "acked",
                "acked_records",
                "delivered_records",
                "redelivered",
                "expired",
                "ack_unknown",
                "ack_vetoed",
                "requests",
                "connections",
                "gzip_responses",
                "empty_polls",
                "unauthorized",
                "hostile",
                "broken_envelopes",
                "acked_broken_envelopes",
            ),
            0,
        )
        self._fault_counts: dict[str, int] = dict.fromkeys(FAULT_NAMES, 0)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self.set_poison(poison, poison_kinds)
        if faults:
            self.set_faults(**faults)

    # -- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (the bound port once started)."""
        scheme = "https" if self.certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> Emulator:
        """Bind and serve in daemon threads; returns self."""
        if self._server is not None:
            return self
        # Imported here, not at the top: the HTTP layer imports this module (for Response and
        # _error), and importing the emulator alone must load nothing from the package but records.
        from airflow_provider_ktexport.testing._http import _Handler, _Server

        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.emulator = self
        if self.certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(self.certfile, self.keyfile)
            server.tls = ctx
        self._server = server
        self.port = server.server_address[1]
        self._spawn(server.serve_forever, "serve", 0.05)
        self._spawn(self._sweep_loop, "sweeper")
        if self.rate > 0:
            self._spawn(self._feed_loop, "feeder")
        log.info("ktexport emulator listening on %s", self.url)
        return self

    def _spawn(self, target: Callable[..., Any], name: str, *args: Any) -> None:
        t = threading.Thread(target=target, args=args, name=f"ktexport-emulator-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Stop serving, drop open connections and wake held long polls."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        server.shutdown()
        server.server_close()
        # Let requests already being served (long polls just woken) send their answer before the
        # idle keep-alive connections are dropped.
        server.wait_idle(timeout=2.0)
        server.drop_connections()
        for t in self._threads:
            t.join(timeout=5)
        self._threads.clear()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- data -----------------------------------------------------------------

    def enqueue(self, records: Sequence[dict[str, Any]]) -> list[int]:
        """Append records to the queue; those without ``emulator_seq`` get the next one. Returns the seqs."""
        entries = []
        with self._cond:
            for rec in records:
                if "emulator_seq" not in rec:
                    rec = {**rec, "emulator_seq": self._next_seq}
                seq = rec["emulator_seq"]
                if isinstance(seq, int) and seq >= self._next_seq:
                    self._next_seq = seq + 1
                entries.append(_Entry(seq, _json(rec)))
            self._queue.extend(entries)
            self._counts["emitted"] += len(entries)
            self._cond.notify_all()
        return [e.seq for e in entries]

    def generate(self, n: int) -> list[dict[str, Any]]:
        """Generate ``n`` realistic records, enqueue them and return them."""
        with self._cond:
            start = self._next_seq
            self._next_seq += n
        records = self.generator.records(start, n)
        if self._poison <= 0:
            self.enqueue(records)
            return records
        # Poison mode: hostile records take their seq's place as text; only the ordinary ones
        # are returned (the hostile ones are in hostile_records()).
        entries: list[_Entry] = []
        ordinary: list[dict[str, Any]] = []
        with self._cond:
            for rec in records:
                seq = rec["emulator_seq"]
                raw = self._hostile_raw(seq)
                if raw is None:
                    ordinary.append(rec)
                    raw = _json(rec)
                entries.append(_Entry(seq, raw))
            self._queue.extend(entries)
            self._counts["emitted"] += len(entries)
            self._cond.notify_all()
        return ordinary

    def feed(self, n: int) -> None:
        """Add ``n`` generated records without building them now (bounded memory for big benchmarks).

        They are built when a GET needs them and queue behind any records already built.
        """
        with self._cond:
            self._pending_gen += n
            self._counts["emitted"] += n
            self._cond.notify_all()

    def _materialise(self, n: int) -> None:
        # Caller holds the lock.
        for _ in range(n):
            seq = self._next_seq
            self._next_seq += 1
            hostile = self._hostile_raw(seq) if self._poison > 0 else None
            if hostile is not None:
                raw = hostile
            elif self.distinct > 0:
                prefix = self._template(((seq - 1) % self.distinct) + 1)
                raw = b"%b%d}" % (prefix, seq)
            else:
                raw = _json(self.generator.record(seq))
            self._queue.append(_Entry(seq, raw))
        self._pending_gen -= n

    def _template(self, seq: int) -> bytes:
        # The record's JSON up to its emulator_seq value, which the generator always puts last.
        prefix = self._templates.get(seq)
        if prefix is None:
            raw = _json(self.generator.record(seq))
            marker = b'"emulator_seq":'
            prefix = raw[: raw.rindex(marker) + len(marker)]
            self._templates[seq] = prefix
        return prefix

    # -- poison mode ----------------------------------------------------------

    def set_poison(self, rate: float, kinds: Sequence[str] | None = None) -> None:
        """Make a share ``rate`` (0..1) of records generated from now on hostile, of ``kinds``."""
        rate = float(rate)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"poison rate {rate} is not within 0..1")
        chosen = tuple(kinds) if kinds else HOSTILE_KINDS
        unknown = sorted(set(chosen) - set(HOSTILE_KINDS) - set(KEY_TEXT_KINDS))
        if unknown:
            known = [*HOSTILE_KINDS, *KEY_TEXT_KINDS]
            raise ValueError(f"unknown hostile kind(s) {unknown}; known: {known}")
        with self._cond:
            self._poison = rate
            self._poison_kinds = chosen

    def _hostile_raw(self, seq: int) -> bytes | None:
        # Caller holds the lock. A pure function of (seed, seq) decides; the kinds take turns so
        # that every kind shows up among the first few hostile records.
        if random.Random(self.seed * 7_919 + seq * 104_729).random() >= self._poison:
            return None
        kind = self._poison_kinds[len(self._hostile) % len(self._poison_kinds)]
        if kind in KEY_TEXT_KINDS:
            raw = key_text_record(kind, seq, self.api_key)
        else:
            raw = hostile_record(kind, seq)
        self._hostile[seq] = (kind, raw)
        self._counts["hostile"] += 1
        return raw

    def hostile_records(self) -> dict[int, tuple[str, bytes]]:
        """Every record made hostile so far: ``emulator_seq`` -> (kind, the exact bytes served)."""
        with self._cond:
            return dict(self._hostile)

    # -- faults and scripts ---------------------------------------------------

    def set_faults(self, **rates: float) -> dict[str, float]:
        """Set fault rates (0..1) and settings by name; others keep their value. Returns all of them."""
        unknown = set(rates) - set(self._faults) - {"latency_ms"}
        if unknown:
            raise ValueError(f"unknown fault(s): {sorted(unknown)}; known: {sorted(self._faults)}")
        with self._cond:
            for name, value in rates.items():
                if name == "latency_ms":
                    self.latency_ms = float(value)
                    continue
                value = float(value)
                if name in FAULT_NAMES and not 0.0 <= value <= 1.0:
                    raise ValueError(f"fault rate {name}={value} is not within 0..1")
                self._faults[name] = value
            return dict(self._faults)

    def clear_faults(self) -> None:
        """Set every fault rate to zero and forget scripted responses."""
        with self._cond:
            self._faults.update(dict.fromkeys(FAULT_NAMES, 0.0))
            self._scripts.clear()

    def script(
        self,
        status: int,
        body: bytes | str = b"",
        headers: dict[str, str] | None = None,
        *,
        times: int = 1,
        lease: bool = False,
        method: str = "GET",
    ) -> None:
        """Answer the next ``times`` API requests of ``method`` with this hand-made response.

        With ``lease=True`` (GET) a batch is leased as a normal GET would, and ``$ID`` in the body
        is replaced by its id (or a fresh id when the queue is empty). No fault is rolled for them.
        """
        raw = body.encode() if isinstance(body, str) else body
        hdrs = {"Content-Type": _JSON} if headers is None else dict(headers)
        with self._cond:
            self._scripts.append(_Script(status, raw, hdrs, times, lease, method.upper()))

    def _take_script(self, method: str) -> _Script | None:
        for s in self._scripts:
            if s.method == method:
                s.times -= 1
                if s.times <= 0:
                    self._scripts.remove(s)
                return s
        return None

    def _roll(self, names: Sequence[str]) -> str | None:
        # Caller holds the lock; draws only for active faults so a fault-free run consumes nothing.
        for name in names:
            rate = self._faults[name]
            if rate > 0 and self._fault_rng.random() < rate:
                self._fault_counts[name] += 1
                return name
        return None

    def _fault_response(self, name: str) -> Response:
        if name == "reset":
            return Response(0, reset=True)
        if name == "status_429":
            return _error(429, "Too Many Requests", **{"Retry-After": f"{self._faults['retry_after']:g}"})
        if name == "html_error":
            return Response(502, _HTML_502, {"Content-Type": "text/html"})
        status = int(name.rsplit("_", 1)[1])
        return _error(
            status, {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
        )

    # -- the API --------------------------------------------------------------

    def _expire(self, now: float) -> None:
        # Caller holds the lock. Expired records go back to the front, oldest lease first.
        expired = [lease for lease in self._leases.values() if lease.expires <= now]
        if not expired:
            return
        back: list[_Entry] = []
        for lease in expired:
            del self._leases[lease.id]
            back.extend(lease.entries)
        self._queue.extendleft(reversed(back))
        self._counts["expired"] += len(expired)
        self._cond.notify_all()

    def _lease(self) -> _Lease | None:
        # Caller holds the lock.
        n = self.batch_size
        if self._queue and self._queue[0].deliveries:
            # A redelivery need not keep the old grouping, so clients must not rely on it.
            n = self._group_rng.randint(max(1, n // 2), n)
        short = n - len(self._queue)
        if short > 0 and self._pending_gen:
            self._materialise(min(short, self._pending_gen))
        if not self._queue:
            return None
        q = self._queue
        entries = [q.popleft() for _ in range(min(n, len(q)))]
        lease = _Lease(uuid.uuid4().hex, entries, time.monotonic() + self.lease_seconds)
        self._leases[lease.id] = lease
        redelivered = 0
        for e in entries:
            if e.deliveries:
                redelivered += 1
            e.deliveries += 1
            self._delivered.append(e.seq)
        self._counts["served"] += 1
        self._counts["delivered_records"] += len(entries)
        self._counts["redelivered"] += redelivered
        return lease

    def _has_data(self) -> bool:
        return bool(self._queue) or self._pending_gen > 0

    def handle_get(self) -> Response:
        """Serve ``GET /v2/stream`` (authentication already checked)."""
        with self._cond:
            self._expire(time.monotonic())
            scripted = self._take_script("GET")
            if scripted is not None:
                return self._scripted(scripted)
            fault = self._roll(_PRE_LEASE)
            if fault:
                return self._fault_response(fault)
            deadline = time.monotonic() + self.long_poll_seconds
            while not self._has_data() and not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                self._expire(time.monotonic())
            lease = self._lease()
            if lease is None:
                self._counts["empty_polls"] += 1
                return _error(500, "No data available")
            first = all(e.deliveries == 1 for e in lease.entries)
            post = self._roll(
                ("truncated", "invalid_utf8", *ENVELOPE_FAULTS, *(FIRST_DELIVERY_FAULTS if first else ()))
            )
            slow = self._roll(("slow",))
            if post in ENVELOPE_FAULTS or post in _REPEATED_KEY_FAULTS:
                self._broken_leases.add(lease.id)
                self._counts["broken_envelopes"] += 1
            trailer = int(self._faults["gzip_trailer_bytes"]) if post == "gzip_trailer" else 0
        body = _batch_body(lease.id.encode(), b",".join(e.raw for e in lease.entries), post)
        if post == "truncated":
            body = body[: len(body) // 2]
        elif post == "invalid_utf8":
            # Bad bytes inside the first record's first key: valid JSON shape, invalid UTF-8.
            cut = body.index(b'"items":[') + len(b'"items":[') + 2
            body = body[:cut] + b"\xff\xfe\xc3" + body[cut:]
        if slow:
            time.sleep(self._faults["slow_seconds"])
        return Response(200, body, {"Content-Type": _JSON}, trailer=trailer)

    def _scripted(self, s: _Script) -> Response:
        # Caller holds the lock.
        body = s.body
        if s.lease:
            lease = self._lease()
            body = body.replace(ID_PLACEHOLDER, (lease.id if lease else uuid.uuid4().hex).encode())
        return Response(s.status, body, dict(s.headers))

    def handle_delete(self, batch_id: str) -> Response:
        """Serve ``DELETE /v2/stream/{id}`` (authentication already checked)."""
        with self._cond:
            self._expire(time.monotonic())
            scripted = self._take_script("DELETE")
            if scripted is not None:
                return Response(scripted.status, scripted.body, dict(scripted.headers))
            fault = self._roll(_PRE_LEASE)
            if fault:
                return self._fault_response(fault)
            lease = self._leases.get(batch_id)
            if lease is None:
                self._counts["ack_unknown"] += 1
                return _error(500, "Unknown or expired id")
            entries = lease.entries
        if self.on_ack is not None:
            try:
                self.on_ack(batch_id, [_as_record(e) for e in entries])
            except Exception as exc:  # the veto: a test asserting the lake refused this ack
                log.info("on_ack vetoed batch %s: %r", batch_id, exc)
                with self._cond:
                    self._counts["ack_vetoed"] += 1
                return _error(500, "ack vetoed by on_ack")
        with self._cond:
            # The lease may have expired (or been acked) while on_ack ran.
            if self._leases.pop(batch_id, None) is None:
                self._counts["ack_unknown"] += 1
                return _error(500, "Unknown or expired id")
            self._counts["acked"] += 1
            self._counts["acked_records"] += len(entries)
            if batch_id in self._broken_leases:
                # Records the client never saw are now gone: what the envelope rules forbid.
                self._counts["acked_broken_envelopes"] += 1
            self._acked.extend(e.seq for e in entries)
            after = self._roll(("reset_after_ack",))
        if after:
            return Response(0, reset=True)
        return Response(200, b"{}", {"Content-Type": _JSON})

    def authorised(self, header_key: str | None, query_key: str | None) -> bool:
        """True when either placement carries the right key."""
        expected = self.api_key.encode()
        return any(
            k is not None and hmac.compare_digest(k.encode(), expected) for k in (header_key, query_key)
        )

    # -- accounting -----------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters: served, leased, queued, emitted, acked, acked_records, redelivered, ack_unknown,
        requests, connections, gzip_responses, hostile (records made hostile), broken_envelopes
        (batches served without readable items), acked_broken_envelopes (of those, acknowledged:
        must stay 0), ... and ``faults`` (injections per fault name)."""
        with self._cond:
            self._expire(time.monotonic())
            out: dict[str, Any] = dict(self._counts)
            out["leased"] = len(self._leases)
            out["leased_records"] = sum(len(x.entries) for x in self._leases.values())
            out["queued"] = len(self._queue) + self._pending_gen
            out["faults"] = dict(self._fault_counts)
            return out

    def delivered_seqs(self) -> list[int]:
        """``emulator_seq`` of every record sent in a leased batch, repeats included."""
        with self._cond:
            return list(self._delivered)

    def acked_seqs(self) -> list[int]:
        """``emulator_seq`` of every record acknowledged, repeats included (there should be none)."""
        with self._cond:
            return list(self._acked)

    def _count(self, name: str) -> None:
        with self._cond:
            self._counts[name] += 1

    # -- background -----------------------------------------------------------

    def _sweep_loop(self) -> None:
        # Leases also expire while nobody asks, so a waiting long poll sees the records come back.
        while not self._stopping.wait(min(0.2, max(0.01, self.lease_seconds / 4))):
            with self._cond:
                self._expire(time.monotonic())

    def _feed_loop(self) -> None:
        owed = 0.0
        last = time.monotonic()
        while not self._stopping.wait(0.1):
            now = time.monotonic()
            owed += (now - last) * self.rate
            last = now
            if owed >= 1:
                self.feed(int(owed))
                owed -= int(owed)

    # -- control plane --------------------------------------------------------

    def control(self, method: str, path: str, body: bytes) -> Response:
        """Serve ``/_emulator/*``: stats, seqs, records, generate, faults, script, poison, hostile."""
        name = path[len("/_emulator/") :].strip("/")
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            return _error(400, "body is not JSON")
        if method == "GET" and name == "stats":
            return Response(200, _json(self.stats()), {"Content-Type": _JSON})
        if method == "GET" and name == "seqs":
            return Response(
                200,
                _json({"delivered": self.delivered_seqs(), "acked": self.acked_seqs()}),
                {"Content-Type": _JSON},
            )
        if method == "GET" and name == "hostile":
            hostile = self.hostile_records()
            listing = [
                {"seq": seq, "kind": kind, "text": raw.decode("utf-8")}
                for seq, (kind, raw) in sorted(hostile.items())
            ]
            return Response(200, _json(listing), {"Content-Type": _JSON})
        if method == "GET" and name == "faults":
            with self._cond:
                return Response(200, _json(self._faults), {"Content-Type": _JSON})
        if method != "POST":
            return _error(404, f"no control endpoint {method} {path}")
        try:
            if name == "records":
                if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
                    return _error(400, "expected a JSON list of objects")
                return Response(200, _json({"enqueued": len(self.enqueue(payload))}), {"Content-Type": _JSON})
            if name == "generate":
                n = int((payload or {}).get("n", 0))
                self.feed(n)
                return Response(200, _json({"generated": n}), {"Content-Type": _JSON})
            if name == "faults":
                if not isinstance(payload, dict):
                    return _error(400, "expected a JSON object of fault rates")
                if payload.pop("clear", False):
                    self.clear_faults()
                return Response(200, _json(self.set_faults(**payload)), {"Content-Type": _JSON})
            if name == "poison":
                if not isinstance(payload, dict):
                    return _error(400, 'expected a JSON object: {"rate": 0.1, "kinds": [...]}')
                self.set_poison(float(payload.get("rate", 0.0)), payload.get("kinds"))
                return Response(200, b"{}", {"Content-Type": _JSON})
            if name == "script":
                if not isinstance(payload, dict):
                    return _error(400, "expected a JSON object")
                self.script(
                    int(payload["status"]),
                    str(payload.get("body", "")),
                    payload.get("headers"),
                    times=int(payload.get("times", 1)),
                    lease=bool(payload.get("lease", False)),
                    method=str(payload.get("method", "GET")),
                )
                return Response(200, b"{}", {"Content-Type": _JSON})
        except (ValueError, TypeError, KeyError) as exc:
            return _error(400, str(exc))
        return _error(404, f"no control endpoint {method} {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """``ktexport-emulator``: serve the emulator until SIGTERM or SIGINT, then exit 0.

    The command lives in :mod:`airflow_provider_ktexport.testing.cli`; this name stays here for
    the console script, ``python -m`` and existing imports.
    """
    # Imported when called: cli imports this module, and importing it alone must load nothing else.
    from airflow_provider_ktexport.testing.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
