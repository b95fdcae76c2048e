"""api.settings: the one home of the client's defaults and bounds, and what is generated from it."""

from __future__ import annotations

import dataclasses
import importlib
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_ktexport.api.form import connection_form_fields
from airflow_provider_ktexport.api.settings import (
    ClientSettings,
    build_client_settings,
    option_defaults,
    option_names,
)
from airflow_provider_ktexport.exceptions import KtExportConfigError

KEY = "unit-key-5ecret"
DOCS = Path(__file__).parents[3] / "docs" / "configuration.md"


def _docs_extras() -> dict[str, str]:
    """The 'Connection extras' table of docs/configuration.md: extra -> its default cell."""
    text = DOCS.read_text()
    section = text.split("### Connection extras", 1)[1].split("\n###", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \|.*\| ([^|]+) \|$", section, re.M)
    return {name: default.strip() for name, default in rows}


def _shown(value: Any) -> str:
    """A default as the docs write it: JSON booleans, whole numbers without ``.0``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_the_docs_defaults_table_is_the_settings_metadata() -> None:
    documented = _docs_extras()
    fields = connection_form_fields()
    assert set(documented) == set(fields), "docs/configuration.md lists other extras than the form"
    for name, spec in fields.items():
        cell = documented[name]
        if "default" in spec["schema"]:
            assert cell.startswith(f"`{_shown(spec['schema']['default'])}`"), (name, cell)
        else:
            assert not re.match(r"^`[\w.]+`$", cell), f"{name}: the docs give a default the settings do not"
    assert documented["read_timeout"] == "`long_poll_seconds + 30`"


def test_the_form_defaults_are_the_settings_defaults() -> None:
    built = build_client_settings("https://export.us1.kt1.io", KEY)
    for name, spec in connection_form_fields().items():
        if "default" in spec["schema"]:
            assert getattr(built, name) == spec["schema"]["default"], name
    assert built.read_timeout == built.long_poll_seconds + 30


@pytest.mark.parametrize(
    "spec",
    [f for f in dataclasses.fields(ClientSettings) if f.metadata and f.metadata["minimum"] is not None],
)
def test_each_bound_in_the_metadata_is_the_one_enforced(spec: dataclasses.Field[Any]) -> None:
    meta = spec.metadata
    edge = meta["minimum"]
    extra: dict[str, Any] = {"long_poll_seconds": 0.5} if spec.name == "read_timeout" else {}
    if meta["exclusive"]:
        with pytest.raises(KtExportConfigError, match=spec.name):
            build_client_settings("https://h.example.com", KEY, **extra, **{spec.name: edge})
    else:
        built = build_client_settings("https://h.example.com", KEY, **extra, **{spec.name: edge})
        assert getattr(built, spec.name) == edge
        below = edge - 1
        with pytest.raises(KtExportConfigError, match=spec.name):
            build_client_settings("https://h.example.com", KEY, **{spec.name: below})


def test_options_left_out_take_the_field_defaults() -> None:
    built = build_client_settings("https://h.example.com", KEY)
    for name, default in option_defaults().items():
        if name != "read_timeout":
            assert getattr(built, name) == default, name
    with pytest.raises(TypeError, match="unknown client settings"):
        build_client_settings("https://h.example.com", KEY, retries=3)
    assert "pool_size" in option_names() and "api_key" not in option_names()


def test_the_api_package_imports_no_http_library_and_no_airflow() -> None:
    code = (
        "import sys, pkgutil, importlib, airflow_provider_ktexport.api as api\n"
        "for m in pkgutil.iter_modules(api.__path__): importlib.import_module('airflow_provider_ktexport.api.' + m.name)\n"
        "bad = [n for n in ('requests', 'httpx', 'airflow', 'urllib3') if n in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("old", "names"),
    [
        ("protocol", ["classify_body", "redact", "normalize_base_url", "sighting_digest", "is_ackable_id"]),
        ("settings", ["ClientSettings", "build_client_settings", "env_proxy", "ssl_context", "_ssl_context"]),
        ("client", ["Batch", "KtExportClient"]),
        ("_inflate", ["BodyTooLarge", "CappedDecoder"]),
        ("_jsonscan", ["scan", "Scan"]),
        ("keymask", ["key_mask", "KeyMask", "MASK", "MIN_API_KEY_LENGTH"]),
    ],
)
def test_an_old_import_path_warns_and_still_holds_its_names(old: str, names: list[str]) -> None:
    name = f"airflow_provider_ktexport.{old}"
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(name)
    assert any(issubclass(w.category, DeprecationWarning) and old in str(w.message) for w in caught)
    for attr in names:
        assert hasattr(module, attr), attr
