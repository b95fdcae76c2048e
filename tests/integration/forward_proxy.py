"""A small HTTP forward proxy for tests: ``CONNECT`` tunnels and absolute-URI requests, on loopback.

Standard library only, like the emulator. It forwards ``GET``/``DELETE``/``POST``/``PUT``
sent as ``METHOD http://host:port/path HTTP/1.1`` (what clients send a proxy for an http://
URL) and opens ``CONNECT host:port`` tunnels (what they send for an https:// URL), and
counts both, so a test can prove which requests went through it. With ``username`` and
``password`` it answers ``407`` to a request without the matching ``Proxy-Authorization``.

    with ForwardProxy() as proxy:
        os.environ["HTTP_PROXY"] = proxy.url
        ...
        assert proxy.stats()["forwarded"]
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["ForwardProxy"]

# Headers that belong to one hop, never forwarded (RFC 9110 section 7.6.1).
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class ForwardProxy:
    """A threaded forward proxy on ``host`` (a free port by default); use as a context manager.

    :param username: with ``password``, the Basic credentials every request must carry
    :param password: see ``username``
    :param timeout: seconds an upstream request may take (a long poll is held this long at most)
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.timeout = timeout
        self._lock = threading.Lock()
        self._forwarded: list[tuple[str, str]] = []
        self._tunnels: list[str] = []
        self._refused = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` without credentials."""
        return f"http://{self.host}:{self.port}"

    @property
    def url_with_credentials(self) -> str:
        """``http://user:password@host:port`` (URL-encoded), or :attr:`url` without credentials."""
        if self.username is None:
            return self.url
        user, password = quote(self.username, safe=""), quote(self.password or "", safe="")
        return f"http://{user}:{password}@{self.host}:{self.port}"

    def start(self) -> ForwardProxy:
        """Listen and serve in a daemon thread."""
        self._server = ThreadingHTTPServer((self.host, self.port), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="proxy"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, Any]:
        """``forwarded``: (method, absolute URL) per forwarded request; ``tunnels``: ``host:port`` per
        CONNECT opened; ``refused``: requests answered 407."""
        with self._lock:
            return {
                "forwarded": list(self._forwarded),
                "tunnels": list(self._tunnels),
                "refused": self._refused,
            }

    def _authorised(self, header: str | None) -> bool:
        if self.username is None:
            return True
        token = base64.b64encode(f"{self.username}:{self.password or ''}".encode()).decode()
        return header is not None and header.strip() == f"Basic {token}"

    def _count(self, kind: str, value: Any = None) -> None:
        with self._lock:
            if kind == "forwarded":
                self._forwarded.append(value)
            elif kind == "tunnel":
                self._tunnels.append(value)
            else:
                self._refused += 1


def _handler(proxy: ForwardProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # quiet: tests read stats(), not access logs

        def _refuse_unauthorised(self) -> bool:
            if proxy._authorised(self.headers.get("proxy-authorization")):
                return False
            proxy._count("refused")
            body = b"proxy authentication required"
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="test-proxy"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True

        def do_CONNECT(self) -> None:
            if self._refuse_unauthorised():
                return
            host, _, port = self.path.rpartition(":")
            try:
                upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=proxy.timeout)
            except (OSError, ValueError):
                self.send_error(502, "cannot reach the target")
                return
            proxy._count("tunnel", self.path)
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            self._relay(self.connection, upstream)
            self.close_connection = True

        @staticmethod
        def _relay(client: socket.socket, upstream: socket.socket) -> None:
            sockets = [client, upstream]
            try:
                while True:
                    readable, _, broken = select.select(sockets, [], sockets, proxy.timeout)
                    if broken or not readable:
                        return
                    for sock in readable:
                        data = sock.recv(65536)
                        if not data:
                            return
                        (upstream if sock is client else client).sendall(data)
            except OSError:
                return
            finally:
                upstream.close()

        def _forward(self) -> None:
            if self._refuse_unauthorised():
                return
            target = urlsplit(self.path)
            if target.scheme != "http" or not target.hostname:
                self.send_error(400, "absolute http:// URI expected")
                return
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            path = target.path or "/"
            if target.query:
                path += "?" + target.query
            proxy._count("forwarded", (self.command, self.path))
            upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=proxy.timeout)
            try:
                upstream.request(self.command, path, body=body, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
            except OSError:
                self.send_error(502, "the target failed")
                return
            finally:
                upstream.close()
            self.send_response(reply.status, reply.reason)
            for key, value in reply.getheaders():
                # send_response wrote Server and Date already; the length is ours (body read whole).
                if key.lower() not in _HOP_BY_HOP | {"content-length", "server", "date"}:
                    self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = _forward
        do_DELETE = _forward
        do_POST = _forward
        do_PUT = _forward

    return Handler
