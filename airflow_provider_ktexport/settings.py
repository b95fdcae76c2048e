"""Deprecated alias: the settings moved to :mod:`airflow_provider_ktexport.api.settings` (removed next release)."""

from __future__ import annotations

from airflow_provider_ktexport._moved import warn_moved
from airflow_provider_ktexport.api.proxy import check_proxy, proxy_credentials, safe_proxy
from airflow_provider_ktexport.api.settings import (
    CA_BUNDLE_ENV,
    ClientSettings,
    build_client_settings,
    settings_of,
)
from airflow_provider_ktexport.transport.environment import _ssl_context, env_proxy, ssl_context

__all__ = [
    "CA_BUNDLE_ENV",
    "ClientSettings",
    "build_client_settings",
    "check_proxy",
    "env_proxy",
    "proxy_credentials",
    "safe_proxy",
    "settings_of",
    "ssl_context",
    "_ssl_context",
]

warn_moved("airflow_provider_ktexport.settings", "airflow_provider_ktexport.api.settings")
