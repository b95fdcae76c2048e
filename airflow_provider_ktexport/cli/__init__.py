"""The ``ktexport`` command (also ``python -m airflow_provider_ktexport``): drain or probe without Airflow.

Exit codes: 0 done; 2 a usage or configuration error (bad option, URL or key, a destination that
takes no files), which a retry cannot fix; 1 any other failure (an outage, a failed write);
130 stopped by Ctrl-C or SIGTERM. Errors are one line on stderr naming the cause and the fix;
the API key is read from the environment and never printed. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from airflow_provider_ktexport.api.redact import redact
from airflow_provider_ktexport.exceptions import KtExportAuthError, KtExportConfigError, KtExportHTTPError

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "exit_code", "main"]

#: Bad options, URL, key or destination: fix the configuration (argparse's own code for bad usage).
EXIT_CONFIG = 2
#: Anything else: the run failed; nothing unlanded was acknowledged.
EXIT_FAILED = 1
#: Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells report it): the drain did not finish.
EXIT_INTERRUPTED = 130

log = logging.getLogger("airflow_provider_ktexport.cli")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``ktexport`` with ``argv`` (default: the process's arguments); returns the exit code."""
    from airflow_provider_ktexport.cli.commands import run_drain, run_probe
    from airflow_provider_ktexport.cli.options import build_parser

    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level)
    command = run_drain if args.command == "drain" else run_probe
    try:
        return command(args)
    except KeyboardInterrupt:
        _fail(args, "interrupted; batches not acknowledged will be delivered again")
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and an exit code
        code = exit_code(exc)
        text = str(exc) if code == EXIT_CONFIG else f"{type(exc).__name__}: {exc}"
        log.debug("%s failed", args.command, exc_info=True)
        _fail(args, text)
        return code


def exit_code(exc: BaseException) -> int:
    """2 for what a retry cannot fix (a setting, the key, a URL that is not the export API), else 1."""
    if isinstance(exc, KtExportConfigError | KtExportAuthError):
        return EXIT_CONFIG
    if isinstance(exc, KtExportHTTPError) and exc.status_code is not None:
        # 404: the base URL points at something else; 3xx: it moved (the message says where).
        if exc.status_code == 404 or 300 <= exc.status_code < 400:
            return EXIT_CONFIG
    return EXIT_FAILED


def _fail(args: argparse.Namespace, text: str) -> None:
    """One line on stderr, the key masked even where a library echoed it."""
    key = os.environ.get(getattr(args, "key_env", "") or "")
    line = redact(" ".join(text.split()), key.strip() if key and key.strip() else None)
    sys.stderr.write(f"ktexport {args.command}: error: {line}\n")


def _configure_logging(level: str) -> None:
    """Progress (the drain's flush lines) on stderr at ``level``; other libraries' at WARNING, so
    a problem (urllib3's "Connection pool is full", a botocore retry) still shows."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("airflow_provider_ktexport").setLevel(level)
