"""The connection form's extra fields, generated from :class:`~.settings.ClientSettings`' metadata.

Airflow 3.2+ reads them as JSON Schema from the provider info (``conn-fields``); Airflow 3.1
gets the same fields from ``KtExportHook.get_connection_form_widgets``. A field's "default" is
what the client uses when the extra is absent, so a saved form changes nothing; a default the
client derives (``read_timeout``) is said in the description instead.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from airflow_provider_ktexport.api.settings import ClientSettings

__all__ = ["CA_BUNDLE_FIELD", "connection_form_fields"]

#: The form's CA bundle path: no setting of its own (the hook folds it into ``verify``).
CA_BUNDLE_FIELD: dict[str, Any] = {
    "label": "CA bundle path",
    "schema": {"type": ["string", "null"]},
    "description": "a PEM file of CA certificates to trust instead of the system's (a private CA); "
    "blank: the system's",
}


def connection_form_fields() -> dict[str, dict[str, Any]]:
    """Each form option's label, JSON Schema and description, in field order (CA path after verify)."""
    fields: dict[str, dict[str, Any]] = {}
    for spec in dataclasses.fields(ClientSettings):
        meta = spec.metadata
        if not meta or not meta["form"]:
            continue
        entry: dict[str, Any] = {"label": meta["label"], "schema": _schema(spec.default, meta)}
        if meta["description"]:
            entry["description"] = meta["description"]
        fields[spec.name] = entry
        if spec.name == "verify":
            fields["ca_bundle"] = copy.deepcopy(CA_BUNDLE_FIELD)
    return fields


def _schema(default: Any, meta: Mapping[str, Any]) -> dict[str, Any]:
    """JSON Schema of one option: a blank optional value (``null``) unless it is a choice or a switch."""
    kind = meta["kind"]
    schema: dict[str, Any] = {"type": kind if meta["enum"] or kind == "boolean" else [kind, "null"]}
    if meta["enum"]:
        schema["enum"] = list(meta["enum"])
    if default is not None and not meta["derived"]:
        schema["default"] = int(default) if isinstance(default, float) and default.is_integer() else default
    if meta["minimum"] is not None:
        schema["exclusiveMinimum" if meta["exclusive"] else "minimum"] = meta["minimum"]
    return schema
