"""KtExportAsyncHook: the triggers' connection reader, which reads what the sync hook reads."""

from __future__ import annotations

import asyncio

import pytest

from airflow_provider_ktexport.exceptions import KtExportConfigError
from airflow_provider_ktexport.hooks.ktexport import KtExportHook
from airflow_provider_ktexport.hooks.ktexport_async import KtExportAsyncHook
from tests.unit.hooks.support import GOOD_KEY, set_conn


def test_the_async_hook_reads_the_same_settings_as_the_sync_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(
        monkeypatch,
        "kt_async",
        host="export.eu1.kt1.io",
        password=GOOD_KEY,
        extra={"auth_location": "query", "max_retries": "2"},
    )
    settings = asyncio.run(KtExportAsyncHook("kt_async").client_settings())
    assert settings == KtExportHook("kt_async").client_settings()
    assert (settings.auth_location, settings.max_retries) == ("query", 2)


def test_the_async_hook_names_a_missing_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_KT_NOWHERE", raising=False)
    with pytest.raises(KtExportConfigError, match="'kt_nowhere' is not defined"):
        asyncio.run(KtExportAsyncHook("kt_nowhere").client_settings())
