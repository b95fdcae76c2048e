"""Apache Airflow provider for Key Telematics HTTP Export Tasks."""

from __future__ import annotations

from typing import Any

from airflow_provider_ktexport._arrow_env import ask_for_jemalloc

__version__ = "0.1.0"

ask_for_jemalloc()  # before anything loads pyarrow: _arrow_env.py says why

_HOOK = "airflow_provider_ktexport.hooks.ktexport.KtExportHook"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's ProvidersManager (entry point ``apache_airflow_provider``).

    The connection form's extra fields are generated from the client settings' metadata
    (:mod:`airflow_provider_ktexport.api.form`), the one home of their defaults and bounds.
    """
    from airflow_provider_ktexport.api.form import connection_form_fields

    return {
        "package-name": "airflow-provider-ktexport",
        "name": "KT Export",
        "description": "Drain a Key Telematics HTTP Export Task queue into Parquet files on object storage.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "KT Export",
                "external-doc-url": "https://export.us1.kt1.io/docs/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "KT Export",
                "python-modules": ["airflow_provider_ktexport.hooks.ktexport"],
            }
        ],
        "operators": [
            {
                "integration-name": "KT Export",
                "python-modules": [
                    "airflow_provider_ktexport.operators.ktexport",
                    "airflow_provider_ktexport.operators.compact",
                    "airflow_provider_ktexport.operators.iceberg",
                ],
            }
        ],
        "sensors": [
            {
                "integration-name": "KT Export",
                "python-modules": ["airflow_provider_ktexport.sensors.ktexport"],
            }
        ],
        "triggers": [
            {
                "integration-name": "KT Export",
                "python-modules": ["airflow_provider_ktexport.triggers.ktexport"],
            }
        ],
        # Airflow validates every Asset("iceberg://...") through this handler (as s3:// through the
        # Amazon provider's), so a malformed URI fails at parse time; the factory builds one.
        "asset-uris": [
            {
                "schemes": ["iceberg"],
                "handler": "airflow_provider_ktexport.assets.iceberg.sanitize_uri",
                "factory": "airflow_provider_ktexport.assets.iceberg.create_asset",
            }
        ],
        "connection-types": [
            {
                "connection-type": "ktexport",
                "hook-class-name": _HOOK,
                "hook-name": "KT Export",
                # The connection form. Airflow 3.2+ reads these two keys directly; 3.1 gets the same
                # form from KtExportHook.get_connection_form_widgets / get_ui_field_behaviour.
                # Extra fields can show a default ("default" below, which the form saves) but no
                # placeholder; a default the client derives (read_timeout) is said in its description.
                "ui-field-behaviour": {
                    # port: the base URL carries it (the hook still honours a port set another way).
                    "hidden-fields": ["schema", "login", "port"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://export.us1.kt1.io",
                        "password": "the export task's API key",
                    },
                },
                "conn-fields": connection_form_fields(),
            }
        ],
    }
