"""Helpers of the hook tests: a connection from an ``AIRFLOW_CONN_*`` variable, and a good key."""

from __future__ import annotations

import json

import pytest

GOOD_KEY = "good-key-0123456789"


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str = "ktexport_default", **conn: object) -> None:
    """Define connection ``conn_id`` (type ``ktexport``) for this test, as Airflow reads it from the environment."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "ktexport", **conn}))
