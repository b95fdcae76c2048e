"""What the emulator answers, as values: a :class:`Response`, the error body, a leased batch's body.

The emulator's behaviour modules build these and :mod:`airflow_provider_ktexport.testing._http`
writes them to the socket, so the API's rules never touch a socket and the sockets never decide
an answer. Standard library only, like the rest of the emulator.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = "application/json; charset=utf-8"
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


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the way the real API writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(obj: Any, status: int = 200) -> Response:
    """A JSON answer (the control plane's and the ack's)."""
    return Response(status, json_bytes(obj), {"Content-Type": JSON_TYPE})


def error(status: int, message: str, **headers: str) -> Response:
    """The API's error answer: ``{"error": message}`` with ``status``."""
    return Response(status, json_bytes({"error": message}), {"Content-Type": JSON_TYPE, **headers})


def batch_body(batch_id: bytes, records: bytes, fault: str | None) -> bytes:
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
