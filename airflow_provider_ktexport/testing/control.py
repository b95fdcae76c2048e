"""The emulator's control plane, ``/_emulator/*``: what tests and benchmarks use to steer it.

Each endpoint is one small function over the emulator's public methods, found by method and name
in a table, so adding one is one function and one table row. The HTTP layer lets loopback
clients only reach it; no key is needed. :class:`Steering` holds the knobs those endpoints (and
tests in the same process) turn: poison mode, fault rates and scripted answers.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_ktexport.testing.faults import FaultPlan, Script, script_headers
from airflow_provider_ktexport.testing.stock import Stock
from airflow_provider_ktexport.testing.wire import Response, error, json_response

if TYPE_CHECKING:
    from airflow_provider_ktexport.testing.emulator import Emulator


def _stats(emu: Emulator) -> Response:
    return json_response(emu.stats())


def _seqs(emu: Emulator) -> Response:
    return json_response({"delivered": emu.delivered_seqs(), "acked": emu.acked_seqs()})


def _hostile(emu: Emulator) -> Response:
    listing = [
        {"seq": seq, "kind": kind, "text": raw.decode("utf-8")}
        for seq, (kind, raw) in sorted(emu.hostile_records().items())
    ]
    return json_response(listing)


def _faults(emu: Emulator) -> Response:
    return json_response(emu.set_faults())


def _post_records(emu: Emulator, payload: Any) -> Response:
    if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
        return error(400, "expected a JSON list of objects")
    return json_response({"enqueued": len(emu.enqueue(payload))})


def _post_generate(emu: Emulator, payload: Any) -> Response:
    n = int((payload or {}).get("n", 0))
    emu.feed(n)
    return json_response({"generated": n})


def _post_faults(emu: Emulator, payload: Any) -> Response:
    if not isinstance(payload, dict):
        return error(400, "expected a JSON object of fault rates")
    if payload.pop("clear", False):
        emu.clear_faults()
    return json_response(emu.set_faults(**payload))


def _post_poison(emu: Emulator, payload: Any) -> Response:
    if not isinstance(payload, dict):
        return error(400, 'expected a JSON object: {"rate": 0.1, "kinds": [...]}')
    emu.set_poison(float(payload.get("rate", 0.0)), payload.get("kinds"))
    return json_response({})


def _post_script(emu: Emulator, payload: Any) -> Response:
    if not isinstance(payload, dict):
        return error(400, "expected a JSON object")
    emu.script(
        int(payload["status"]),
        str(payload.get("body", "")),
        payload.get("headers"),
        times=int(payload.get("times", 1)),
        lease=bool(payload.get("lease", False)),
        method=str(payload.get("method", "GET")),
    )
    return json_response({})


_GET: dict[str, Callable[[Emulator], Response]] = {
    "stats": _stats,
    "seqs": _seqs,
    "hostile": _hostile,
    "faults": _faults,
}
_POST: dict[str, Callable[[Emulator, Any], Response]] = {
    "records": _post_records,
    "generate": _post_generate,
    "faults": _post_faults,
    "poison": _post_poison,
    "script": _post_script,
}


def serve_control(emu: Emulator, method: str, path: str, body: bytes) -> Response:
    """Answer one control-plane request; a bad body or value is a 400 naming the problem."""
    name = path[len("/_emulator/") :].strip("/")
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        return error(400, "body is not JSON")
    if method == "GET" and name in _GET:
        return _GET[name](emu)
    if method != "POST" or name not in _POST:
        return error(404, f"no control endpoint {method} {path}")
    try:
        return _POST[name](emu, payload)
    except (ValueError, TypeError, KeyError) as exc:
        return error(400, str(exc))


class Steering:
    """The emulator's knobs, apart from the API's behaviour: poison mode, faults and scripts.

    :class:`~airflow_provider_ktexport.testing.emulator.Emulator` builds on it and sets up the
    parts named here (under its lock) before any knob is turned.
    """

    _cond: threading.Condition
    _stock: Stock
    _faults: FaultPlan
    latency_ms: float

    # -- poison mode ----------------------------------------------------------

    def set_poison(self, rate: float, kinds: Sequence[str] | None = None) -> None:
        """Make a share ``rate`` (0..1) of records generated from now on hostile, of ``kinds``."""
        with self._cond:
            self._stock.set_poison(rate, kinds)

    def hostile_records(self) -> dict[int, tuple[str, bytes]]:
        """Every record made hostile so far: ``emulator_seq`` -> (kind, the exact bytes served)."""
        with self._cond:
            return dict(self._stock.hostile)

    # -- faults and scripts ---------------------------------------------------

    def set_faults(self, **rates: float) -> dict[str, float]:
        """Set fault rates (0..1) and settings by name; others keep their value. Returns all of them."""
        self._faults.check_names(list(rates), "latency_ms")
        with self._cond:
            for name, value in rates.items():
                if name == "latency_ms":
                    self.latency_ms = float(value)
                else:
                    self._faults.set(name, value)
            return dict(self._faults.values)

    def clear_faults(self) -> None:
        """Set every fault rate to zero and forget scripted responses."""
        with self._cond:
            self._faults.clear()

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
        with self._cond:
            self._faults.scripts.append(
                Script(status, raw, script_headers(headers), times, lease, method.upper())
            )
