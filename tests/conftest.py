"""Test-wide setup: an isolated Airflow home per test session, and shared server fixtures.

Airflow reads its configuration at import, so the environment is set here, before any test
module imports Airflow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from airflow_provider_ktexport.testing.emulator import Emulator

REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="ktexport-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """An Airflow home with a migrated SQLite database (``airflow db migrate``).

    Under pytest-xdist every worker has its own home (set above, at import); the first worker to
    get here migrates one database for the whole run and the others copy it, so the suite pays for
    one migration (20-40 s of CPU) instead of one per worker.
    """
    marker = _AIRFLOW_HOME / ".migrated"
    if marker.exists():
        return _AIRFLOW_HOME
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run_id is None:
        _migrate()
    else:
        import fcntl
        import shutil

        shared = Path(tempfile.gettempdir()) / f"ktexport-airflow-db-{run_id}"
        shared.mkdir(exist_ok=True)
        with open(shared / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one worker migrates; the others wait, then copy
            if not (shared / ".migrated").exists():
                _migrate()
                shutil.copy2(_AIRFLOW_HOME / "airflow.db", shared / "airflow.db")
                (shared / ".migrated").touch()
            elif not (_AIRFLOW_HOME / "airflow.db").exists():
                shutil.copy2(shared / "airflow.db", _AIRFLOW_HOME / "airflow.db")
    marker.touch()
    return _AIRFLOW_HOME


def _migrate() -> None:
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


# ---------------------------------------------------------------- the "airflow" marker
# CI runs every test once on the current Airflow and again, on the oldest supported Airflow, only the
# tests that drive Airflow (`pytest -m airflow`). A test drives Airflow when it runs a DAG (the
# run_dag / airflow_home fixtures) or its module imports Airflow or the provider's Airflow-facing
# modules (hooks, operators, sensors, triggers). Imports are read from the module's syntax tree,
# so a DAG file's text inside a string does not count.
_AIRFLOW_MODULES = ("airflow", "airflow_provider_ktexport.hooks", "airflow_provider_ktexport.operators")
_AIRFLOW_MODULES += ("airflow_provider_ktexport.sensors", "airflow_provider_ktexport.triggers")
_AIRFLOW_FIXTURES = frozenset({"run_dag", "airflow_home"})
_imports_airflow: dict[Path, bool] = {}


def _module_imports_airflow(path: Path) -> bool:
    import ast

    if path not in _imports_airflow:
        names: list[str] = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        _imports_airflow[path] = any(
            name == prefix or name.startswith(prefix + ".") for name in names for prefix in _AIRFLOW_MODULES
        )
    return _imports_airflow[path]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "airflow: drives Airflow itself (CI runs these on every Airflow it supports)"
    )
    config.addinivalue_line(
        "markers", "emulator(**settings): constructor settings of the test's `emulator` fixture"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _AIRFLOW_FIXTURES or _module_imports_airflow(Path(str(item.path))):
            item.add_marker(pytest.mark.airflow)


# ---------------------------------------------------------------- the emulator
@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., Emulator]]:
    """Start emulators with the given settings (``Emulator`` keywords); all stop when the test ends.

    For a test that needs several emulators, or settings it only knows while running."""
    from tests.emulators import started  # imported late: Airflow's environment is set first

    running: list[Emulator] = []

    def start(**settings: Any) -> Emulator:
        running.append(started(**settings))
        return running[-1]

    yield start
    for emu in running:
        emu.stop()


@pytest.fixture
def emulator(request: pytest.FixtureRequest, emulator_factory: Callable[..., Emulator]) -> Emulator:
    """One running emulator, set up by the ``emulator`` marks of the module and the test and by an
    indirect parameter (see tests/emulators.py)."""
    from tests.emulators import emulator_settings

    return emulator_factory(**emulator_settings(request))
