"""Apache Airflow provider for Key Telematics HTTP Export Tasks."""

from __future__ import annotations

import copy
from typing import Any

__version__ = "0.1.0"

_HOOK = "airflow_provider_ktexport.hooks.ktexport.KtExportHook"

#: The connection form's extra fields (JSON Schema per field, as Airflow 3.2+ reads them).
#: A "default" is what the client uses when the extra is absent, so a saved form changes nothing.
_CONN_FIELDS: dict[str, dict[str, Any]] = {
    "auth_location": {
        "label": "Send the key as",
        "schema": {"type": "string", "enum": ["header", "query"], "default": "header"},
        "description": "header: x-access-token (keeps the key out of URLs and logs); query: ?token=",
    },
    "verify": {
        "label": "Verify TLS",
        "schema": {"type": "boolean", "default": True},
        "description": "check the server's certificate; turn off only for a test server",
    },
    "ca_bundle": {
        "label": "CA bundle path",
        "schema": {"type": ["string", "null"]},
        "description": "a PEM file of CA certificates to trust instead of the system's (a private CA); "
        "blank: the system's",
    },
    "proxy": {
        "label": "Proxy URL",
        "schema": {"type": ["string", "null"]},
        "description": "optional, e.g. http://proxy.internal:3128",
    },
    "long_poll_seconds": {
        "label": "Long poll (s)",
        "schema": {"type": ["number", "null"], "default": 45, "exclusiveMinimum": 0},
        "description": "how long the server holds an empty GET (45 s on the real API)",
    },
    "connect_timeout": {
        "label": "Connect timeout (s)",
        "schema": {"type": ["number", "null"], "default": 10, "exclusiveMinimum": 0},
    },
    "read_timeout": {
        "label": "Read timeout (s)",
        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "description": "blank: long poll + 30 s (75 s); if set, it must exceed the long poll",
    },
    "max_retries": {
        "label": "Max retries",
        "schema": {"type": ["integer", "null"], "default": 5, "minimum": 0},
        "description": "retries of a transient failure (429, 5xx, reset)",
    },
    "max_body_bytes": {
        "label": "Max body (bytes)",
        "schema": {"type": ["integer", "null"], "default": 67108864, "minimum": 1024},
        "description": "largest batch body accepted once gzip is undone (67108864 = 64 MiB)",
    },
}


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
                "conn-fields": copy.deepcopy(_CONN_FIELDS),
            }
        ],
    }
