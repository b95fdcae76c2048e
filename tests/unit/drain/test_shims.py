"""The old module paths (fetcher, buffer, pace) still import for one release, and say where to go."""

from __future__ import annotations

import importlib
import sys

import pytest

from airflow_provider_ktexport import drain


@pytest.mark.parametrize(
    ("old", "names"),
    [
        ("fetcher", ["Fetcher", "HandoffQueue", "BatchSource", "HANDOFF_BATCHES", "HANDOFF_BYTES"]),
        ("buffer", ["Buffer", "HeldBatch", "partitions_of"]),
        ("pace", ["FlushPace"]),
    ],
)
def test_an_old_path_warns_and_serves_the_same_objects(monkeypatch, old, names):
    monkeypatch.delitem(sys.modules, f"airflow_provider_ktexport.{old}", raising=False)
    with pytest.warns(DeprecationWarning, match=rf"airflow_provider_ktexport\.drain\.{old}"):
        shim = importlib.import_module(f"airflow_provider_ktexport.{old}")
    new = importlib.import_module(f"airflow_provider_ktexport.drain.{old}")
    for name in names:
        assert getattr(shim, name) is getattr(new, name), name


def test_the_package_exports_what_callers_import():
    """Every name imported from the drain in the package, tests, benchmarks and docs."""
    for name in ("Drain", "DrainConfig", "DrainResult", "DatasetStats", "MAX_SUMMARY_FILES", "Metrics"):
        assert name in drain.__all__ and hasattr(drain, name), name
    assert drain.connections_needed(4) == 4 + drain.ACK_CONCURRENCY
