"""The emulator's control plane, ``/_emulator/*``: what tests and benchmarks use to steer it.

Each endpoint is one small function over the emulator's public methods, found by method and name
in a table, so adding one is one function and one table row. The HTTP layer lets loopback
clients only reach it; no key is needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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
