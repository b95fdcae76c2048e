"""A drain run in its own process that can SIGKILL itself at a named dangerous point.

Used by ``tests/integration/test_crash_recovery.py`` (and the storage-fault tests) as::

    python -m tests.integration.crash_worker --url URL --api-key KEY --lake DIR --kill-at mid_write

It builds ``KtExportClient`` + ``LakeWriter`` + ``Drain`` directly (no Airflow), patches the one
step named by ``--kill-at`` so the process kills itself with ``SIGKILL`` there (no ``finally``, no
flush, no atexit: what a power cut or the OOM killer does), and otherwise runs the drain to its end
and prints the run's summary as one JSON line on stdout. Just before dying it writes
``KILL <point> <detail>`` on stderr, so the test knows the point was reached.

Kill points:

``after_get``      a GET returned a batch (leased), nothing written yet
``before_write``   the flush built its tables; no byte of the data file written
``mid_write``      half of a data file's bytes are on disk (the byte-level write is cut)
``before_rename``  a data file's bytes are complete in its temporary file, not yet renamed
``after_write``    a data file is written and verified; the flush's other files and acks not done
``before_ack``     every file of a flush is verified; no acknowledgement sent
``between_acks``   the first acknowledgement of a flush answered; the others not sent
``before_land``    the flush built its tables; nothing handed to the sink yet (either sink)
``after_acks``     every acknowledgement of a flush answered; the flush not yet settled in its ledger
``random``         ``--kill-delay`` seconds after the drain started, wherever it is
``none``           no kill: run to the end
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

KILL_POINTS = (
    "none",
    "after_get",
    "before_write",
    "mid_write",
    "before_rename",
    "after_write",
    "before_ack",
    "between_acks",
    "before_land",
    "after_acks",
    "random",
)


def command(url: str, api_key: str, lake: str, lease_seconds: float, long_poll_seconds: float) -> list[str]:
    """The argv that runs this worker against an emulator (extra options go after it)."""
    return [
        sys.executable,
        "-m",
        "tests.integration.crash_worker",
        "--url",
        url,
        "--api-key",
        api_key,
        "--lake",
        lake,
        "--lease-seconds",
        str(lease_seconds),
        "--long-poll-seconds",
        str(long_poll_seconds),
    ]


def die(point: str, detail: str = "") -> None:
    """Announce the kill point on stderr, then SIGKILL this process (nothing after this runs)."""
    sys.stderr.write(f"KILL {point} {detail}\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - the signal is delivered before this returns


class _Counter:
    """Counts occurrences of a kill point across threads; ``hit()`` is True on the n-th one."""

    def __init__(self, nth: int) -> None:
        self.nth = nth
        self.count = 0
        self.lock = threading.Lock()

    def hit(self) -> bool:
        with self.lock:
            self.count += 1
            return self.count == self.nth


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def install_kill(
    point: str, nth: int, client: Any, writer: Any, delay: float, sink: Any = None
) -> Callable[[], None]:
    """Patch the step named ``point``; returns a function to call once the drain has started."""
    from airflow_provider_ktexport.lake import writer as writer_module

    counter = _Counter(nth)
    started: Callable[[], None] = lambda: None  # noqa: E731 - tiny default

    if point == "after_get":
        orig_get = client.get_batch

        def get_batch(**kwargs: Any) -> Any:
            batch = orig_get(**kwargs)
            if batch is not None and counter.hit():
                die(point, batch.id)
            return batch

        client.get_batch = get_batch

    elif point in ("before_write", "after_write"):
        orig_write = writer.write

        def write(table: Any, partition: Any, **kwargs: Any) -> Any:
            if point == "before_write" and counter.hit():
                die(point, json.dumps(dict(partition)))
            written = orig_write(table, partition, **kwargs)
            if point == "after_write" and counter.hit():
                die(point, written.path)
            return written

        writer.write = write

    elif point == "mid_write":
        # Cut the byte-level write of a data file in half, wherever the writer puts it (a
        # temporary name or, if it were not atomic, the final one): the test then checks that no
        # half file is visible. Local writers write with os.write; object stores with pipe().
        real_write = os.write

        def half_write(fd: int, data: Any) -> int:
            target = _fd_path(fd)
            if ".parquet" in target and len(data) > 64 and counter.hit():
                real_write(fd, bytes(memoryview(data)[: len(data) // 2]))
                os.fsync(fd)
                die(point, target)
            return real_write(fd, data)

        writer_module.os.write = half_write  # the same os module: patched for this process only
        if not writer.local:
            real_pipe = writer.fs.pipe

            def pipe(path: str, value: bytes | None = None, **kwargs: Any) -> Any:
                if str(path).endswith(".parquet") and counter.hit():
                    die(point, str(path))
                return real_pipe(path, value, **kwargs)

            writer.fs.pipe = pipe

    elif point == "before_rename":
        real_replace = os.replace

        def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if str(dst).endswith(".parquet") and counter.hit():
                die(point, str(src))
            real_replace(src, dst, *args, **kwargs)

        writer_module.os.replace = replace

    elif point in ("before_ack", "between_acks"):
        orig_ack = client.ack
        # Acks of a flush run concurrently; serialising them makes "after the first ack
        # answered, before any other was sent" a point that really exists.
        gate = threading.Lock()

        def ack(batch_id: str) -> bool:
            with gate:
                if point == "before_ack" and counter.hit():
                    die(point, batch_id)
                ok = orig_ack(batch_id)
                if point == "between_acks" and counter.hit():
                    die(point, f"{batch_id} acked={ok}")
                return ok

        client.ack = ack

    elif point == "before_land":
        orig_land = sink.land

        def land(tables: Any, rejects: Any, info: Any) -> Any:
            if counter.hit():
                die(point, getattr(info, "flush_id", ""))
            return orig_land(tables, rejects, info)

        sink.land = land

    elif point == "after_acks":
        orig_settle = sink.settle

        def settle(info: Any, *, acked_all: bool) -> None:
            if counter.hit():
                die(point, f"{info.flush_id} acked_all={acked_all}")
            orig_settle(info, acked_all=acked_all)

        sink.settle = settle

    elif point == "random":

        def arm() -> None:
            timer = threading.Timer(delay, die, args=(point, f"after {delay:.2f} s"))
            timer.daemon = True
            timer.start()

        started = arm

    elif point != "none":
        raise SystemExit(f"unknown kill point {point!r}; use one of {', '.join(KILL_POINTS)}")
    return started


def make_filesystem(lake: str, s3_endpoint: str | None) -> tuple[Any, str]:
    """The fsspec filesystem and root of ``lake`` (a local path, file:// or s3:// URL)."""
    if lake.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(
            key="testing",
            secret="testing",
            endpoint_url=s3_endpoint,
            client_kwargs={"region_name": "us-east-1"},
            retries=1,
            config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 10},
        )
        return fs, lake.removeprefix("s3://")
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), lake.removeprefix("file://")


def iceberg_catalog(db: str) -> Any:
    """pyiceberg's SQL catalog on the SQLite file ``db``, its warehouse in a folder beside it."""
    from pathlib import Path

    from airflow_provider_ktexport.lake.iceberg import load_catalog

    warehouse = Path(db).parent / "warehouse"
    warehouse.mkdir(parents=True, exist_ok=True)
    return load_catalog("crash", {"type": "sql", "uri": f"sqlite:///{db}", "warehouse": warehouse.as_uri()})


def iceberg_sink(db: str, namespace: str) -> Any:
    from airflow_provider_ktexport.lake.iceberg import IcebergSink

    return IcebergSink(iceberg_catalog(db), namespace, catalog_name="crash")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="crash_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--api-key", default=os.environ.get("KTEXPORT_WORKER_KEY", ""))
    p.add_argument("--auth-location", default="header")
    p.add_argument("--lake", required=True, help="local directory, file:// or s3:// URL")
    p.add_argument("--s3-endpoint")
    p.add_argument("--kill-at", default="none", choices=KILL_POINTS)
    p.add_argument("--kill-nth", type=int, default=1, help="kill at the n-th occurrence of the point")
    p.add_argument("--kill-delay", type=float, default=1.0, help="seconds after start, for --kill-at random")
    p.add_argument("--lease-seconds", type=float, default=3.0)
    p.add_argument("--flush-seconds", type=float, default=1.0)
    p.add_argument("--flush-records", type=int, default=200)
    p.add_argument("--long-poll-seconds", type=float, default=0.5)
    p.add_argument("--read-timeout", type=float)
    p.add_argument("--max-retries", type=int, default=3)
    p.add_argument("--max-runtime", type=float, default=60.0)
    p.add_argument("--max-in-flight", type=int, default=2)
    p.add_argument("--drain-until", type=float, help="epoch seconds: poll through empty answers until then")
    p.add_argument("--no-stop-when-empty", action="store_true")
    p.add_argument("--source", default="crash_worker")
    p.add_argument(
        "--iceberg", help="land in Iceberg: the SQLite file of a SQL catalog (warehouse beside it)"
    )
    p.add_argument("--namespace", default="ktexport")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one drain (maybe killed at a point); print its summary JSON; exit 0, or 1 on an error."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    from airflow_provider_ktexport.drain import Drain, DrainConfig
    from airflow_provider_ktexport.exceptions import KtExportError
    from airflow_provider_ktexport.lake.writer import LakeWriter
    from airflow_provider_ktexport.transport.sync_client import KtExportClient

    fs, root = make_filesystem(args.lake, args.s3_endpoint)
    client = KtExportClient(
        args.url,
        args.api_key,
        auth_location=args.auth_location,
        long_poll_seconds=args.long_poll_seconds,
        read_timeout=args.read_timeout,
        max_retries=args.max_retries,
        backoff_base=0.1,
        backoff_max=2.0,
    )
    writer = LakeWriter(fs, root, uri_prefix=args.lake if "://" in args.lake else f"file://{root}")
    destination: Any = writer if args.iceberg is None else iceberg_sink(args.iceberg, args.namespace)
    config = DrainConfig(
        max_runtime=args.max_runtime,
        flush_records=args.flush_records,
        flush_seconds=args.flush_seconds,
        lease_seconds=args.lease_seconds,
        stop_when_empty=not args.no_stop_when_empty,
        drain_until=args.drain_until,
        max_in_flight=args.max_in_flight,
        source=args.source,
    )
    drain = Drain(client, destination, config)
    started = install_kill(args.kill_at, args.kill_nth, client, writer, args.kill_delay, drain.sink)
    started()
    try:
        result = drain.run()
    except KtExportError as exc:
        # One line a test can parse: the error class and its text (which must hold no key).
        sys.stdout.write(json.dumps({"error": type(exc).__name__, "message": str(exc)}) + "\n")
        return 1
    finally:
        client.close()
    sys.stdout.write(json.dumps(result.summary()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
