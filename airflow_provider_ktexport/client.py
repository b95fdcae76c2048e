"""Deprecated alias: moved to :mod:`airflow_provider_ktexport.transport.sync_client` (removed next release)."""

from __future__ import annotations

from airflow_provider_ktexport._moved import warn_moved
from airflow_provider_ktexport.transport.sync_client import Batch, KtExportClient

__all__ = ["Batch", "KtExportClient"]

warn_moved("airflow_provider_ktexport.client", "airflow_provider_ktexport.transport.sync_client")
