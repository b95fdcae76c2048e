"""The ``ktexport-emulator`` command: serve an emulator until SIGTERM or SIGINT.

Argument parsing, signal handling and the port file live here, apart from the emulator itself,
which is used in-process by tests and needs none of them. The console script and
``python -m airflow_provider_ktexport.testing.emulator`` both reach :func:`main` through
``emulator.main``, which imports this module only when called: this module imports the emulator,
and importing the emulator alone must load nothing else.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Sequence

from airflow_provider_ktexport.testing import emulator
from airflow_provider_ktexport.testing.emulator import FAULT_NAMES, FAULT_SETTINGS, Emulator
from airflow_provider_ktexport.testing.records import HOSTILE_KINDS, KEY_TEXT_KINDS


def main(argv: Sequence[str] | None = None) -> int:
    """``ktexport-emulator``: serve the emulator until SIGTERM or SIGINT, then exit 0."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    emu = emulator_from(args)
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    emu.start()
    if args.records:
        emu.feed(args.records)
    if args.port_file:
        _write_port_file(args.port_file, emu.port)
    print(f"ktexport-emulator listening on {emu.url}", flush=True)
    while not done.wait(0.2):
        pass
    emu.stop()
    print("ktexport-emulator stopped", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command's options: the server, the records it serves, and one per fault."""
    parser = argparse.ArgumentParser(prog="ktexport-emulator", description=emulator.__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8045, help="0 picks a free port (see --port-file)")
    parser.add_argument("--port-file", help="write the bound port to this file once listening")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("KTEXPORT_EMULATOR_KEY", "emulator-key"),
        help="default: $KTEXPORT_EMULATOR_KEY or 'emulator-key'",
    )
    parser.add_argument("--lease-seconds", type=float, default=120.0)
    parser.add_argument("--long-poll-seconds", type=float, default=45.0)
    parser.add_argument("--batch-size", type=int, default=500)
    _add_record_options(parser)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    _add_fault_options(parser)
    parser.add_argument("--log-level", default="WARNING")
    return parser


def _add_record_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=0, help="records queued at start")
    parser.add_argument("--rate", type=float, default=0.0, help="records per second arriving over time")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--distinct",
        type=int,
        default=0,
        help="reuse the content of this many distinct records (cheap for big benchmarks); 0 = all distinct",
    )
    parser.add_argument(
        "--poison",
        type=float,
        default=0.0,
        metavar="RATE",
        help="share (0..1) of generated records made hostile (valid JSON that breaks naive pipelines)",
    )
    parser.add_argument(
        "--poison-kinds",
        default="",
        help=f"comma-separated hostile kinds (default all: {','.join(HOSTILE_KINDS)}; "
        f"named only: {','.join(KEY_TEXT_KINDS)})",
    )
    parser.add_argument(
        "--track-points",
        type=int,
        default=0,
        help="generated trips carry a 'track' list of this many GPS points (default 0: none)",
    )
    parser.add_argument(
        "--record-types",
        default="",
        help="comma-separated record types to generate (default: the whole mix), e.g. 'trip'",
    )
    parser.add_argument(
        "--type-names",
        type=int,
        default=0,
        help="spread the generated records over this many record types, '<type>_<k>' (default 0: as generated)",
    )


def _add_fault_options(parser: argparse.ArgumentParser) -> None:
    for name in FAULT_NAMES:
        parser.add_argument(f"--fault-{name.replace('_', '-')}", type=float, default=0.0, metavar="RATE")
    for name, default in FAULT_SETTINGS.items():
        parser.add_argument(
            f"--fault-{name.replace('_', '-')}", type=float, default=default, metavar="SECONDS"
        )


def emulator_from(args: argparse.Namespace) -> Emulator:
    """An emulator set up as the parsed options say (not started)."""
    faults = {name: getattr(args, f"fault_{name}") for name in (*FAULT_NAMES, *FAULT_SETTINGS)}
    return Emulator(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        lease_seconds=args.lease_seconds,
        long_poll_seconds=args.long_poll_seconds,
        batch_size=args.batch_size,
        latency_ms=args.latency_ms,
        seed=args.seed,
        faults=faults,
        certfile=args.certfile,
        keyfile=args.keyfile,
        rate=args.rate,
        distinct=args.distinct,
        poison=args.poison,
        poison_kinds=[k.strip() for k in args.poison_kinds.split(",") if k.strip()] or None,
        track_points=args.track_points,
        record_types=[t.strip() for t in args.record_types.split(",") if t.strip()] or None,
        type_names=args.type_names,
    )


def _write_port_file(path: str, port: int) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{port}\n")
    os.replace(tmp, path)  # a watcher never reads a half-written file
