"""A tiny scripted HTTP server on loopback: the export API as a test script wants it to answer."""

from __future__ import annotations

import gzip
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

KEY = "Sup3r-Secret-Key/+=%42"  # characters that URL-encode differently, to catch partial redaction

# ---------------------------------------------------------------------------- stub server


@dataclass
class Reply:
    """What the stub answers: a status and body, or ``reset`` (RST), or ``hang`` seconds of silence first."""

    status: int = 200
    body: bytes | str | dict | list = b""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False
    hang: float = 0.0
    #: Send only this many bytes of the (encoded) body, then: close, or with ``stall`` wait first.
    cut: int | None = None
    stall: float = 0.0
    #: Send these bytes as the gzip stream instead of compressing ``body``.
    raw_gzip: bytes | None = None


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class Stub:
    """Answers scripted replies in order, then ``default``; records every request."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.default: Callable[[Seen], Reply] = lambda seen: Reply(500, b"")
        self.seen: list[Seen] = []
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.connections = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def hits(self, method: str | None = None) -> int:
        return sum(1 for s in self.seen if method is None or s.method == method)

    def _next(self, seen: Seen) -> Reply:
        with self.lock:
            self.seen.append(seen)
            if self.script:
                return self.script.popleft()
        return self.default(seen)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real API

            def setup(self) -> None:
                super().setup()
                with stub.lock:
                    stub.connections += 1

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_DELETE(self) -> None:
                self._answer()

            def _answer(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                )
                reply = stub._next(seen)
                if reply.hang:
                    stub.release.wait(reply.hang)
                if reply.reset:
                    # SO_LINGER 0 makes close() send RST: a "connection reset by peer" for the client.
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                body = reply.body
                if isinstance(body, dict | list):
                    body = json.dumps(body).encode()
                elif isinstance(body, str):
                    body = body.encode()
                headers = dict(reply.headers)
                if "gzip" in seen.headers.get("accept-encoding", "") and body:
                    body = gzip.compress(body) if reply.raw_gzip is None else reply.raw_gzip
                    headers["Content-Encoding"] = "gzip"
                try:
                    self.send_response(reply.status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if reply.cut is None:
                        self.wfile.write(body)
                        return
                    self.wfile.write(body[: reply.cut])
                    self.wfile.flush()
                    if reply.stall:
                        stub.release.wait(reply.stall)
                    self.close_connection = True
                except OSError:
                    self.close_connection = True

        return Handler
