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

This module holds the API's behaviour (leases, long polls, acks), answered as :class:`Response`
values; beside it: ``stock`` (queue, leases, poison mode), ``faults`` (faults and scripts),
``ledger`` (accounting), ``control`` (the control plane and the knobs it turns: poison, faults,
scripts), ``wire`` (the answers' bytes), ``serving`` and ``_http`` (threads, sockets, TLS, gzip)
and ``cli`` (the command line).
"""

from __future__ import annotations

import hmac
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from airflow_provider_ktexport.testing.control import Steering, serve_control
from airflow_provider_ktexport.testing.faults import (
    ENVELOPE_FAULTS,
    FAULT_NAMES,
    FAULT_SETTINGS,
    FIRST_DELIVERY_FAULTS,
    PRE_LEASE,
    FaultPlan,
    Script,
)
from airflow_provider_ktexport.testing.ledger import Ledger
from airflow_provider_ktexport.testing.records import RecordGenerator
from airflow_provider_ktexport.testing.serving import Serving
from airflow_provider_ktexport.testing.stock import Lease, Stock, as_record
from airflow_provider_ktexport.testing.wire import (
    ID_PLACEHOLDER,
    JSON_TYPE,
    Response,
    error,
)

__all__ = [
    "ENVELOPE_FAULTS",
    "FAULT_NAMES",
    "FAULT_SETTINGS",
    "FIRST_DELIVERY_FAULTS",
    "ID_PLACEHOLDER",
    "Emulator",
    "Response",
    "main",
]

log = logging.getLogger(__name__)

# A name this module had before the split, kept for tests that import it.
_error = error


class Emulator(Steering):
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

    #: Called as ``on_ack(batch_id, records)`` before an ack is applied; raising vetoes it (500).
    on_ack: Callable[[str, list[dict[str, Any]]], None] | None = None

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
        self.generator = RecordGenerator(
            seed,
            drift_after=drift_after,
            track_points=track_points,
            record_types=record_types,
            type_names=type_names,
        )
        self._build_parts(seed, distinct)
        self.set_poison(poison, poison_kinds)
        if faults:
            self.set_faults(**faults)

    def _build_parts(self, seed: int, distinct: int) -> None:
        """The parts the API's behaviour runs on, each in its own module: the queue, the faults,
        the accounting and the server, under one lock."""
        self._stock = Stock(self.generator, seed=seed, distinct=distinct)
        self._faults = FaultPlan(seed)
        self._cond = threading.Condition(threading.Lock())
        self._ledger = Ledger()
        self._serving = Serving()

    # -- lifecycle ------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (the bound port once started)."""
        scheme = "https" if self.certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def start(self) -> Emulator:
        """Bind and serve in daemon threads; returns self."""
        if self._serving.server is None:
            self.port = self._serving.start(self)
            log.info("ktexport emulator listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and wake held long polls."""
        self._serving.stop(self._cond)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- data -----------------------------------------------------------------

    def enqueue(self, records: Sequence[dict[str, Any]]) -> list[int]:
        """Append records to the queue; those without ``emulator_seq`` get the next one. Returns the seqs."""
        with self._cond:
            entries = self._stock.enqueue(records)
            self._added(len(entries))
        return [e.seq for e in entries]

    def generate(self, n: int) -> list[dict[str, Any]]:
        """Generate ``n`` realistic records, enqueue them and return them.

        In poison mode hostile records take their seq's place as text; only the ordinary ones are
        returned (the hostile ones are in :meth:`hostile_records`).
        """
        with self._cond:
            start = self._stock.reserve(n)
        records = self.generator.records(start, n)  # built outside the lock: other requests go on
        with self._cond:
            ordinary = self._stock.add_generated(records, self.api_key)
            self._added(len(records))
        return ordinary

    def feed(self, n: int) -> None:
        """Add ``n`` generated records without building them now (bounded memory for big benchmarks).

        They are built when a GET needs them and queue behind any records already built.
        """
        with self._cond:
            self._stock.owe(n)
            self._added(n)

    def _added(self, n: int) -> None:
        # Caller holds the lock: count what arrived and wake the long polls waiting for it.
        self._ledger.counts["emitted"] += n
        self._cond.notify_all()

    # -- the API --------------------------------------------------------------

    def _expire(self, now: float) -> None:
        # Caller holds the lock; long polls wake to see the records that came back.
        expired = self._stock.expire(now)
        if expired:
            self._ledger.counts["expired"] += expired
            self._cond.notify_all()

    def sweep(self) -> None:
        """Put the records of expired leases back in the queue now (the sweeper thread calls it)."""
        with self._cond:
            self._expire(time.monotonic())

    def _lease(self) -> Lease | None:
        # Caller holds the lock.
        lease = self._stock.lease(self.batch_size, self.lease_seconds, self.api_key)
        if lease is None:
            return None
        self._ledger.served(lease)
        return lease

    def handle_get(self) -> Response:
        """Serve ``GET /v2/stream`` (authentication already checked)."""
        with self._cond:
            early = self._script_or_fault("GET")
            if early is not None:
                return early
            self._wait_for_data(time.monotonic() + self.long_poll_seconds)
            lease = self._lease()
            if lease is None:
                self._ledger.counts["empty_polls"] += 1
                return error(500, "No data available")
            served = self._faults.roll_served(all(e.deliveries == 1 for e in lease.entries))
            if served.hides_records:
                self._ledger.broke(lease.id)
        body = served.body(lease.id, [e.raw for e in lease.entries])
        if served.delay:
            time.sleep(served.delay)
        return Response(200, body, {"Content-Type": JSON_TYPE}, trailer=served.trailer)

    def _script_or_fault(self, method: str) -> Response | None:
        # Caller holds the lock. A scripted answer comes first, then a fault rolled before leasing.
        self._expire(time.monotonic())
        scripted = self._faults.take_script(method)
        if scripted is not None:
            return self._scripted(scripted)
        fault = self._faults.roll(PRE_LEASE)
        return self._faults.response(fault) if fault else None

    def _wait_for_data(self, deadline: float) -> None:
        # Caller holds the lock: the long poll, woken by new records, expired leases or stop().
        while not self._stock.has_data() and not self._serving.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)
            self._expire(time.monotonic())

    def _scripted(self, s: Script) -> Response:
        # Caller holds the lock. Only a GET leases (a DELETE script's lease flag is ignored).
        body = s.body
        if s.lease and s.method == "GET":
            lease = self._lease()
            body = body.replace(ID_PLACEHOLDER, (lease.id if lease else uuid.uuid4().hex).encode())
        return Response(s.status, body, dict(s.headers))

    def handle_delete(self, batch_id: str) -> Response:
        """Serve ``DELETE /v2/stream/{id}`` (authentication already checked)."""
        with self._cond:
            early = self._script_or_fault("DELETE")
            if early is not None:
                return early
            lease = self._stock.leases.get(batch_id)
            if lease is None:
                self._ledger.counts["ack_unknown"] += 1
                return error(500, "Unknown or expired id")
            entries = lease.entries
        if self.on_ack is not None:
            try:
                self.on_ack(batch_id, [as_record(e) for e in entries])
            except Exception as exc:  # the veto: a test asserting the lake refused this ack
                log.info("on_ack vetoed batch %s: %r", batch_id, exc)
                with self._cond:
                    self._ledger.counts["ack_vetoed"] += 1
                return error(500, "ack vetoed by on_ack")
        with self._cond:
            # The lease may have expired (or been acked) while on_ack ran.
            if self._stock.leases.pop(batch_id, None) is None:
                self._ledger.counts["ack_unknown"] += 1
                return error(500, "Unknown or expired id")
            self._ledger.acknowledged(batch_id, entries)
            after = self._faults.roll(("reset_after_ack",))
        if after:
            return Response(0, reset=True)
        return Response(200, b"{}", {"Content-Type": JSON_TYPE})

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
            return self._ledger.snapshot(self._stock, self._faults.counts)

    def delivered_seqs(self) -> list[int]:
        """``emulator_seq`` of every record sent in a leased batch, repeats included."""
        with self._cond:
            return list(self._ledger.delivered)

    def acked_seqs(self) -> list[int]:
        """``emulator_seq`` of every record acknowledged, repeats included (there should be none)."""
        with self._cond:
            return list(self._ledger.acked)

    def _count(self, name: str) -> None:
        with self._cond:
            self._ledger.counts[name] += 1

    # -- control plane --------------------------------------------------------

    def control(self, method: str, path: str, body: bytes) -> Response:
        """Serve ``/_emulator/*``: stats, seqs, records, generate, faults, script, poison, hostile
        (see :mod:`airflow_provider_ktexport.testing.control`)."""
        return serve_control(self, method, path, body)


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
