"""The ``ktexport`` command (cli/__init__.py): its errors and exit codes, without a server (docs/cli.md).

Its options are tested in test_options.py, Ctrl-C in test_commands.py.

What needs the emulator or S3 (a whole drain, probe against a wrong key, Ctrl-C) is in
tests/integration/test_cli.py.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from airflow_provider_ktexport.cli import EXIT_CONFIG, EXIT_FAILED, exit_code, main
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportConfigError,
    KtExportHTTPError,
    KtExportTransientError,
)
from tests.unit.cli.conftest import KEY

REPO = Path(__file__).resolve().parents[3]
#: Nothing listens here: a command that reached the network would fail differently (exit 1).
DEAD_URL = "http://127.0.0.1:9"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_missing_key_variable_is_a_configuration_error_naming_it(capsys, monkeypatch):
    monkeypatch.delenv("KTEXPORT_KEY")
    code, out, err = run(capsys, "probe", "--url", DEAD_URL)
    assert code == EXIT_CONFIG and out == ""
    assert "KTEXPORT_KEY" in err and "--key-env" in err and len(err.strip().splitlines()) == 1


def test_a_short_key_is_refused_without_showing_it(capsys, monkeypatch):
    monkeypatch.setenv("MY_KEY", "abc1234")
    code, _, err = run(capsys, "probe", "--url", DEAD_URL, "--key-env", "MY_KEY")
    assert code == EXIT_CONFIG and "7 characters" in err and "abc1234" not in err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--url", "ftp://export.example.com"], "scheme 'ftp'"),
        (["--url", DEAD_URL, "--flush-seconds", "200"], "flush_seconds=200"),
        (["--url", DEAD_URL, "--max-in-flight", "99"], "max_in_flight"),
        (["--url", DEAD_URL, "--redelivery-window", "60"], "redelivery_window"),
        (["--url", DEAD_URL, "--dest", "s3://aws_default@bucket/lake"], "Airflow connection"),
        (["--url", DEAD_URL, "--dest", "/tmp/lake", "--iceberg-catalog", "c"], "exactly one of --dest"),
        (["--url", DEAD_URL], "exactly one of --dest"),
        (["--url", DEAD_URL, "--dest", "nosuchfs://bucket/x"], "--dest nosuchfs://bucket/x"),
        (["--url", DEAD_URL, "--iceberg-catalog", "c", "--compression", "snappy"], "for a Parquet lake"),
        (
            ["--url", DEAD_URL, "--iceberg-catalog", "c", "--iceberg-property", "warehose=file:///w"],
            "'warehouse'",
        ),
    ],
)
def test_bad_configurations_exit_2_with_one_line_naming_the_cause(capsys, argv, named):
    code, out, err = run(capsys, "drain", *argv)
    assert code == EXIT_CONFIG, err
    assert out == "" and named in err and len(err.strip().splitlines()) == 1


def test_a_destination_that_takes_no_files_fails_before_reaching_the_api(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # The export API is not listening: a lease attempt would end in a connection error (exit 1).
    code, out, err = run(capsys, "drain", "--url", DEAD_URL, "--dest", str(blocker / "lake"))
    assert code == EXIT_CONFIG and out == ""
    assert "does not take files" in err and "Nothing was leased" in err and KEY not in err


def test_probe_checks_the_api_before_the_destination(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # The API check runs first and fails (nothing listens): the destination is never reached then.
    code, _, err = run(capsys, "probe", "--url", DEAD_URL, "--max-retries", "0", "--dest", str(blocker))
    assert code == EXIT_FAILED and "connection failed" in err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["drain", "--dest", "/tmp/lake"])  # no --url
    assert exc.value.code == EXIT_CONFIG
    assert "--url" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (KtExportConfigError("x"), EXIT_CONFIG),
        (KtExportAuthError("x", status_code=401), EXIT_CONFIG),
        (KtExportHTTPError("x", status_code=404), EXIT_CONFIG),
        (KtExportHTTPError("x", status_code=301), EXIT_CONFIG),
        (KtExportHTTPError("x", status_code=418), EXIT_FAILED),
        (KtExportTransientError("x", status_code=503), EXIT_FAILED),
        (OSError("disk on fire"), EXIT_FAILED),
    ],
)
def test_exit_codes_by_type_and_status(exc, code):
    assert exit_code(exc) == code


def test_the_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ktexport"] == "airflow_provider_ktexport.cli:main"


def test_the_command_imports_no_airflow(tmp_path):
    """Parse a drain, build its client settings, config and Parquet lake: no Airflow module loads
    (the command runs where Airflow is not installed, and its import costs seconds)."""
    code = (
        "import sys\n"
        "from airflow_provider_ktexport.cli import main\n"
        "from airflow_provider_ktexport.cli.commands import open_destination\n"
        "from airflow_provider_ktexport.cli.options import build_parser, client_settings, drain_config\n"
        f"args = build_parser().parse_args(['drain', '--url', '{DEAD_URL}', '--dest', sys.argv[1]])\n"
        "client_settings(args); drain_config(args); open_destination(args)\n"
        "loaded = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print(loaded)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "lake")],
        capture_output=True,
        text=True,
        env={"KTEXPORT_KEY": KEY, "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
