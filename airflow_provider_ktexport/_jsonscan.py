"""Deprecated alias: moved to :mod:`airflow_provider_ktexport.api.scan` (removed next release)."""

from __future__ import annotations

from airflow_provider_ktexport._moved import warn_moved
from airflow_provider_ktexport.api.scan import Scan, scan

__all__ = ["Scan", "scan"]

warn_moved("airflow_provider_ktexport._jsonscan", "airflow_provider_ktexport.api.scan")
