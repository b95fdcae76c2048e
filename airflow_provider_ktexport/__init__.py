"""Apache Airflow provider for Key Telematics HTTP Export Tasks."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_HOOK = "airflow_provider_ktexport.hooks.ktexport.KtExportHook"


def get_provider_info() -> dict[str, Any]:
    """Describe the provider to Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""
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
        "connection-types": [
            {
                "connection-type": "ktexport",
                "hook-class-name": _HOOK,
                "hook-name": "KT Export",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "login", "extra"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://export.us1.kt1.io",
                        "password": "the export task's API key",
                        "auth_location": "header",
                        "verify": "true",
                        "long_poll_seconds": "45",
                        "connect_timeout": "10",
                        "read_timeout": "75",
                        "max_retries": "5",
                        "max_body_bytes": "67108864",
                    },
                },
                "conn-fields": {
                    "auth_location": {
                        "label": "Send the key as",
                        "schema": {"type": ["string", "null"], "enum": ["header", "query", None]},
                        "description": "header (x-access-token, default) or query (?token=)",
                    },
                    "verify": {
                        "label": "Verify TLS",
                        "schema": {"type": ["string", "boolean", "null"]},
                        "description": "true (default), false, or a CA bundle path",
                    },
                    "long_poll_seconds": {
                        "label": "Long poll (s)",
                        "schema": {"type": ["number", "null"]},
                        "description": "how long the server holds an empty GET (45 s on the real API)",
                    },
                    "connect_timeout": {
                        "label": "Connect timeout (s)",
                        "schema": {"type": ["number", "null"]},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "schema": {"type": ["integer", "null"], "minimum": 0},
                        "description": "retries of a transient failure (429, 5xx, reset); default 5",
                    },
                    "read_timeout": {
                        "label": "Read timeout (s)",
                        "schema": {"type": ["number", "null"]},
                        "description": "must exceed the long poll; default long poll + 30 s",
                    },
                    "max_body_bytes": {
                        "label": "Max body (bytes)",
                        "schema": {"type": ["integer", "null"], "minimum": 1024},
                        "description": "largest batch body accepted once gzip is undone; default 67108864 (64 MiB)",
                    },
                },
            }
        ],
    }
