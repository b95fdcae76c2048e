"""Registration: the entry point, the provider info, and what Airflow's ProvidersManager makes of it."""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points

import pytest

import airflow_provider_ktexport
from airflow_provider_ktexport import get_provider_info
from airflow_provider_ktexport.hooks.ktexport import KtExportHook


def test_entry_point_resolves_to_get_provider_info() -> None:
    ours = [
        ep
        for ep in entry_points(group="apache_airflow_provider")
        if ep.value.startswith("airflow_provider_ktexport")
    ]
    assert len(ours) == 1
    assert ours[0].load() is get_provider_info


def test_package_name_is_the_distribution_name() -> None:
    info = get_provider_info()
    assert info["package-name"] == "airflow-provider-ktexport"
    assert info["versions"][0] == airflow_provider_ktexport.__version__


def test_connection_type_points_at_the_hook() -> None:
    (conn_type,) = get_provider_info()["connection-types"]
    module_name, _, class_name = conn_type["hook-class-name"].rpartition(".")
    assert getattr(importlib.import_module(module_name), class_name) is KtExportHook
    assert conn_type["connection-type"] == KtExportHook.conn_type
    assert conn_type["hook-name"] == KtExportHook.hook_name


def test_hook_modules_import() -> None:
    for hook in get_provider_info()["hooks"]:
        for module in hook["python-modules"]:
            importlib.import_module(module)


@pytest.fixture(scope="module")
def providers_manager():
    from airflow.providers_manager import ProvidersManager

    return ProvidersManager()


def test_providers_manager_lists_the_provider(providers_manager) -> None:
    assert "airflow-provider-ktexport" in providers_manager.providers


def test_providers_manager_knows_the_connection_type(providers_manager) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated in 3.3 for the task runtime, still what the UI uses
        hook_info = providers_manager.hooks.get("ktexport")
    assert hook_info is not None, "ProvidersManager dropped the ktexport hook (see its warnings)"
    assert hook_info.hook_class_name == "airflow_provider_ktexport.hooks.ktexport.KtExportHook"
    assert hook_info.connection_id_attribute_name == "ktexport_conn_id"
    assert hook_info.hook_name == "KT Export"
    assert hook_info.connection_testable


def test_providers_manager_has_the_form(providers_manager) -> None:
    from airflow import __version__ as airflow_version
    from packaging.version import Version

    if Version(airflow_version) < Version("3.2"):
        # 3.1 builds the form from the hook's methods, and only where flask_appbuilder is installed.
        pytest.importorskip(
            "flask_appbuilder", reason="Airflow 3.1 needs flask_appbuilder for connection forms"
        )
    behaviour = providers_manager.field_behaviours.get("ktexport")
    assert behaviour is not None
    assert behaviour["relabeling"] == {"host": "Base URL", "password": "API key"}
    widgets = providers_manager.connection_form_widgets
    for field in ("auth_location", "verify", "long_poll_seconds", "connect_timeout", "read_timeout"):
        assert f"extra__ktexport__{field}" in widgets


def test_task_runtime_finds_the_hook() -> None:
    """Airflow 3.2+ resolves hooks in workers through the task SDK's own providers manager."""
    runtime = pytest.importorskip("airflow.sdk.providers_manager_runtime")
    hook_info = runtime.ProvidersManagerTaskRuntime().hooks.get("ktexport")
    assert hook_info is not None
    assert hook_info.hook_class_name == "airflow_provider_ktexport.hooks.ktexport.KtExportHook"


_UI_META = """
import json
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
(meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "ktexport"]
print(json.dumps(meta.model_dump(mode="json")))
"""


@pytest.mark.slow
def test_ui_service_serves_the_form() -> None:
    """What the API server hands the React form (3.2+: provider info; 3.1: the hook's methods).

    In a subprocess: on 3.1 the service puts stand-ins for wtforms into ``sys.modules``.
    """
    import json
    import subprocess
    import sys

    pytest.importorskip("airflow.api_fastapi.core_api.services.ui.connections")
    done = subprocess.run([sys.executable, "-c", _UI_META], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads(done.stdout.strip().splitlines()[-1])
    standard = meta["standard_fields"]
    assert standard["port"]["hidden"] and standard["login"]["hidden"] and standard["url_schema"]["hidden"]
    assert standard["host"]["title"] == "Base URL" and standard["password"]["title"] == "API key"
    fields = meta["extra_fields"]
    assert fields["auth_location"]["value"] == "header"
    assert fields["auth_location"]["schema"]["enum"] == ["header", "query"]
    assert fields["verify"]["value"] is True
    assert "boolean" in fields["verify"]["schema"]["type"]
    assert "string" not in fields["verify"]["schema"]["type"]  # a switch, not a free-text box
    for name, value in {"long_poll_seconds": 45, "connect_timeout": 10, "max_retries": 5}.items():
        assert float(fields[name]["value"]) == value, name
    assert fields["ca_bundle"]["value"] is None and fields["proxy"]["value"] is None
