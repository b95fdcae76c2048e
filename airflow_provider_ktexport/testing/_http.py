"""The emulator's HTTP layer: a threading server and its request handler.

:class:`~airflow_provider_ktexport.testing.emulator.Emulator` holds the API's behaviour (queue,
leases, faults, accounting) and answers with
:class:`~airflow_provider_ktexport.testing.wire.Response` values; this module only carries
them over sockets: TLS handshakes, connection tracking so ``stop()`` can drop keep-alive
connections, RST resets, gzip, the access log with the key masked, and routing each request to
the emulator method that answers it. Kept apart so the emulator reads as the API it imitates.

The emulator imports this module only when it starts, so importing the emulator alone still loads
nothing from the package but the record generator (a test checks the module list).
"""

from __future__ import annotations

import gzip
import ipaddress
import logging
import re
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from airflow_provider_ktexport.testing.wire import Response, error

if TYPE_CHECKING:
    from airflow_provider_ktexport.testing.emulator import Emulator

# The emulator's logger, not this module's: the access log has always been emitted under that name.
log = logging.getLogger("airflow_provider_ktexport.testing.emulator")

_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    emulator: Emulator
    tls: ssl.SSLContext | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conns: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._busy = 0  # requests being served right now
        self._idle = threading.Condition()
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = super().get_request()
        if self.tls is not None:
            # The handshake runs in the connection's own thread (see _Handler.setup), not the acceptor.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def track(self, sock: socket.socket, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._conns.add(sock)
            else:
                self._conns.discard(sock)

    def mark_reset(self, sock: socket.socket) -> None:
        with self._conn_lock:
            self._resets.add(sock)

    def shutdown_request(self, request: Any) -> None:
        with self._conn_lock:
            reset = request in self._resets
            self._resets.discard(request)
        if reset:
            # No FIN first: SO_LINGER 0 makes close() send an RST, like a dropped connection.
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that vanish mid-request or refuse our certificate are routine here, not tracebacks.
        log.debug("connection from %s ended with an error", client_address, exc_info=True)

    def busy(self, delta: int) -> None:
        with self._idle:
            self._busy += delta
            if self._busy == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout: float) -> None:
        with self._idle:
            self._idle.wait_for(lambda: self._busy == 0, timeout)

    def drop_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._conns)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ktexport-emulator/1"
    server: _Server

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().setup()
        self.server.track(self.request, True)
        self.server.emulator._count("connections")

    def finish(self) -> None:
        self.server.track(self.request, False)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        # The request line carries ?token=<key> in query mode: keep the key out of the log.
        line = _TOKEN_IN_QUERY.sub(r"\1***", format % args)
        log.debug("%s %s", self.address_string(), line)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        self.server.busy(+1)
        try:
            self._serve(method)
        finally:
            self.server.busy(-1)

    def _serve(self, method: str) -> None:
        emu = self.server.emulator
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith("/_emulator/"):
            if not ipaddress.ip_address(self.client_address[0].split("%")[0]).is_loopback:
                self._send(error(403, "control plane answers loopback clients only"))
            else:
                self._send(emu.control(method, path, body), compress=False)
            return
        emu._count("requests")
        if emu.latency_ms:
            time.sleep(emu.latency_ms / 1000)
        if not path.startswith("/v2/stream"):
            self._send(error(404, f"no such resource {path}"))
            return
        token = parse_qs(parts.query).get("token", [None])[0]
        if not emu.authorised(self.headers.get("x-access-token"), token):
            emu._count("unauthorized")
            self._send(error(401, "Unauthorized: missing or invalid access token"))
            return
        rest = path[len("/v2/stream") :].strip("/")
        if method == "GET" and not rest:
            self._send(emu.handle_get())
        elif method == "DELETE" and rest:
            self._send(emu.handle_delete(unquote(rest)))
        else:
            status = 404 if method == "GET" else 405
            self._send(error(status, f"{method} {path} is not part of the API"))

    def _send(self, resp: Response, *, compress: bool = True) -> None:
        if resp.reset:
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.server.mark_reset(self.request)
            self.close_connection = True
            return
        body = resp.body
        headers = dict(resp.headers)
        if (
            compress
            and body
            and "content-encoding" not in {h.lower() for h in headers}
            and "gzip" in (self.headers.get("Accept-Encoding") or "").lower()
        ):
            # Level 1: the emulator's CPU should not dominate a drain benchmark.
            # A gzip_trailer fault: zero bytes after the end of the gzip stream.
            body = gzip.compress(body, compresslevel=1, mtime=0) + bytes(resp.trailer)
            headers["Content-Encoding"] = "gzip"
            self.server.emulator._count("gzip_responses")
        self.send_response(resp.status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
