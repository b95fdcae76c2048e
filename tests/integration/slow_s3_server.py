"""moto's S3 server in its own process, adding a delay to every request (a store far away).

Run as ``python -m tests.integration.slow_s3_server DELAY``; it prints its port, then serves until
killed. Its own process keeps moto's work off the drain's interpreter (one GIL would serialise
them, and the test would measure moto, not the drain). Every S3 request is counted by what it
touched: ``data`` (a Parquet file) or ``other`` (schema files, listings, buckets).
``GET /_requests`` answers the counts as JSON and ``POST /_delay?seconds=S`` changes the delay;
neither is counted or delayed. :func:`running` starts it for a test or a benchmark, and
:func:`s3_requests` / :func:`set_delay` talk to it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs


class Delayed:
    """WSGI middleware: every S3 request waits ``delay`` seconds before moto answers it."""

    def __init__(self, app: Any, delay: float) -> None:
        self.app = app
        self.delay = delay
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/_requests":
            with self._lock:
                body = json.dumps(dict(self.requests)).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path == "/_delay":
            self.delay = float(parse_qs(environ.get("QUERY_STRING", ""))["seconds"][0])
            start_response("204 No Content", [])
            return [b""]
        with self._lock:
            self.requests["data" if path.endswith(".parquet") else "other"] += 1
        time.sleep(self.delay)
        return self.app(environ, start_response)


@contextmanager
def running(delay: float) -> Iterator[str]:
    """The endpoint of this server started in its own process, ``delay`` s added to each request."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.slow_s3_server", str(delay)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())  # printed once it listens
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def s3_requests(endpoint: str) -> dict[str, int]:
    """What the server counted: requests on data files (``data``) and on anything else (``other``)."""
    with urllib.request.urlopen(f"{endpoint}/_requests", timeout=30) as resp:
        counts: dict[str, int] = json.loads(resp.read())
    return counts


def set_delay(endpoint: str, seconds: float) -> None:
    """Change the delay the server adds to each request (reading a lake back need not wait)."""
    req = urllib.request.Request(f"{endpoint}/_delay?seconds={seconds}", method="POST")
    urllib.request.urlopen(req, timeout=30).close()


def main() -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request would cost more than moto
    app = Delayed(DomainDispatcherApplication(create_backend_app), float(sys.argv[1]))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
