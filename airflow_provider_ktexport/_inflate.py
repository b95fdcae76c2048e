"""Deprecated alias: moved to :mod:`airflow_provider_ktexport.api.inflate` (removed next release)."""

from __future__ import annotations

from airflow_provider_ktexport._moved import warn_moved
from airflow_provider_ktexport.api.inflate import BodyTooLarge, CappedDecoder

__all__ = ["BodyTooLarge", "CappedDecoder"]

warn_moved("airflow_provider_ktexport._inflate", "airflow_provider_ktexport.api.inflate")
