"""Airflow hook for a Key Telematics HTTP Export Task: builds a :class:`KtExportClient` from a connection."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow_provider_ktexport.api import exchange
from airflow_provider_ktexport.api.form import connection_form_fields
from airflow_provider_ktexport.api.probe import Probe, probe_of
from airflow_provider_ktexport.api.proxy import proxy_credentials
from airflow_provider_ktexport.api.redact import redact
from airflow_provider_ktexport.api.settings import (
    ClientSettings,
    build_client_settings,
    normalize_base_url,
    option_names,
)
from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportError, KtExportProtocolError
from airflow_provider_ktexport.transport.sync_client import Batch, KtExportClient

try:
    from airflow.sdk import BaseHook
except ImportError:  # pragma: no cover - Airflow without the task SDK's public BaseHook
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined]

if TYPE_CHECKING:
    from airflow.sdk import Connection

#: Extras read from the connection: the form's fields (api.settings' metadata), by JSON type.
_FORM = connection_form_fields()
_FLOAT_EXTRAS = tuple(name for name, spec in _FORM.items() if "number" in spec["schema"]["type"])
_INT_EXTRAS = tuple(name for name, spec in _FORM.items() if "integer" in spec["schema"]["type"])
_KNOWN_EXTRAS = frozenset(_FORM) - {"ca_bundle"}  # the CA path is folded into verify
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})
#: Client settings a caller may override (everything but the connection's own).
_CLIENT_KWARGS = option_names()


def _mask_secret(secret: str) -> None:
    """Register ``secret`` with Airflow's log masker (task and supervisor), across 3.1-3.3 layouts."""
    mask: Callable[[str], None]
    try:
        from airflow.sdk.log import mask_secret as mask
    except ImportError:  # pragma: no cover - older task SDK layout
        try:
            from airflow.sdk.execution_time.secrets_masker import mask_secret as mask  # type: ignore[no-redef]
        except ImportError:
            from airflow.utils.log.secrets_masker import mask_secret as mask  # type: ignore[no-redef]
    mask(secret)


async def _amask_secret(secret: str) -> None:
    """:func:`_mask_secret` for the event loop: Airflow 3.2+'s ``amask_secret`` (3.1: the sync one)."""
    try:
        from airflow.sdk.log import amask_secret
    except ImportError:  # pragma: no cover - Airflow 3.1
        _mask_secret(secret)
        return
    await amask_secret(secret)


class KtExportHook(BaseHook):
    """Connect to a Key Telematics HTTP Export Task.

    The connection (type ``ktexport``): host = base URL or bare host (https
    assumed), port (optional), password = API key; extras ``auth_location``
    (``header``/``query``), ``verify`` (true/false/CA path), ``ca_bundle`` (a CA path to
    verify with: the form's field, combined with ``verify``), ``connect_timeout``,
    ``read_timeout``, ``long_poll_seconds``, ``max_retries``, ``max_body_bytes`` (the
    largest body accepted once gzip is undone; the trigger honours it too), ``proxy``
    (``http://[user:password@]host:port``; wins over ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``).

    Nothing is read or sent until the client is first used.

    :param ktexport_conn_id: the connection id (default ``ktexport_default``)
    :param client_overrides: :class:`~airflow_provider_ktexport.api.settings.ClientSettings` fields
        that win over the connection (e.g. ``pool_size=16``, ``max_retries=2``)
    """

    conn_name_attr = "ktexport_conn_id"
    default_conn_name = "ktexport_default"
    conn_type = "ktexport"
    hook_name = "KT Export"

    def __init__(self, ktexport_conn_id: str = default_conn_name, **client_overrides: Any) -> None:
        super().__init__()
        unknown = sorted(set(client_overrides) - _CLIENT_KWARGS)
        if unknown:
            raise TypeError(
                f"KtExportHook got unknown client settings {unknown}; allowed: {sorted(_CLIENT_KWARGS)}"
            )
        self.ktexport_conn_id = ktexport_conn_id
        self.client_overrides = client_overrides

    # ------------------------------------------------------------------ client

    def client_settings(self) -> ClientSettings:
        """The connection's validated settings, which the client and the trigger's prober both take.

        Holds the key: never log it (``repr`` hides it).
        """
        return self._settings_from(self._get_connection())

    async def aclient_settings(self) -> ClientSettings:
        """Async :meth:`client_settings`, for triggers (does not block the event loop)."""
        getter = getattr(self, "aget_connection", None)
        if getter is not None:
            error: Exception | None = None
            try:
                conn = await getter(self.ktexport_conn_id)
            except Exception as exc:
                error = self._not_found(exc)
                if error is exc:
                    raise
            if error is not None:
                raise error
        else:  # pragma: no cover - Airflow without async connection access
            from asgiref.sync import sync_to_async

            conn = await sync_to_async(self._get_connection)()
        # In a triggerer, the sync masker and extra_dejson send to the supervisor with a blocking
        # call on the event loop (Airflow 3.2+ raises DeadlockImminentError when another trigger's
        # request is in flight): use their async forms, where this Airflow has them.
        aextra = getattr(conn, "aextra_dejson", None)
        extra = await aextra() if aextra is not None else None
        secrets: list[str] = []
        try:
            return self._settings_from(conn, extra=extra, mask=secrets.append)
        finally:
            for secret in secrets:
                await _amask_secret(secret)

    @cached_property
    def client(self) -> KtExportClient:
        """The client, built on first use and kept (with its keep-alive connections) for the hook's life."""
        return KtExportClient.from_settings(self.client_settings())

    def get_conn(self) -> KtExportClient:
        """Return the :class:`KtExportClient` (Airflow's conventional accessor)."""
        return self.client

    def get_batch(self, **kwargs: Any) -> Batch | None:
        """Lease the next batch; see :meth:`KtExportClient.get_batch`."""
        return self.client.get_batch(**kwargs)

    def ack(self, batch_id: str) -> bool:
        """Acknowledge a batch; see :meth:`KtExportClient.ack`."""
        return self.client.ack(batch_id)

    def probe(self, lease_seconds: float = exchange.DEFAULT_LEASE_SECONDS) -> Probe | None:
        """One long-polling GET that never acknowledges: a :class:`Probe` when it leased data (or a
        body the drain will quarantine, which counts as data: :func:`~.api.probe.probe_of`), else
        ``None``. The sensor's poke; the trigger's is the async client's ``probe_once``.

        :raises KtExportTransientError: retries exhausted (the sensor reads it as "not yet")
        :raises KtExportAuthError: the key was refused
        """
        found: exchange.Lease | exchange.Problem
        try:
            batch = self.get_batch()
        except KtExportProtocolError as exc:
            # The lease started before this line, so "now + lease" is a little late, never early
            # (drain_until may only err long).
            self.log.warning("%s; counting it as data: the drain will quarantine it", exc)
            found = exchange.Problem(str(exc), exc.batch_id, received_at=time.monotonic())
        else:
            if batch is None:
                return None
            found = exchange.Lease(batch.id, batch.raw_items, batch.body_size, batch.leased_at)
        return probe_of(found, lease_seconds, now_mono=time.monotonic(), now_wall=time.time())

    def close(self) -> None:
        """Close the client's connections, if a client was built."""
        client = self.__dict__.pop("client", None)
        if client is not None:
            client.close()

    def test_connection(self) -> tuple[bool, str]:
        """Check that the server is reachable and accepts the key, without leasing any data."""
        try:
            client = self.client
            client.check()
        except KtExportError as exc:
            return False, str(exc)
        except Exception as exc:  # noqa: BLE001 - the UI shows the message instead of a traceback
            return False, self._redacted(f"{type(exc).__name__}: {exc}")
        return True, (
            f"Connection successfully tested: the export API at {client.base_url} accepted the API key "
            f"({client.auth_location})"
        )

    # ------------------------------------------------------------------ connection parsing

    def _get_connection(self) -> Connection:
        try:
            return self.get_connection(self.ktexport_conn_id)
        except Exception as exc:
            error = self._not_found(exc)
            if error is exc:
                raise
        raise error  # outside the except block: the lookup failure needs no chained traceback

    def _not_found(self, exc: Exception) -> Exception:
        # Matched by name: the class moved between airflow.exceptions and airflow.sdk.exceptions.
        if type(exc).__name__ != "AirflowNotFoundException":
            return exc
        return KtExportConfigError(
            f"connection {self.ktexport_conn_id!r} is not defined: create it, e.g. {self._example()}"
        )

    def _example(self) -> str:
        env = "AIRFLOW_CONN_" + self.ktexport_conn_id.upper()
        return (
            f'{env}=\'{{"conn_type": "ktexport", "host": "https://export.us1.kt1.io", '
            f'"password": "<API key>"}}\''
        )

    def _settings_from(
        self, conn: Connection, *, extra: Any = None, mask: Callable[[str], None] = _mask_secret
    ) -> ClientSettings:
        """Validated settings of ``conn``; ``extra``: its extras already decoded (async path),
        ``mask``: registers each secret with the masker before any check can fail."""
        label = f"connection {self.ktexport_conn_id!r}"
        password = (conn.password or "").strip()
        if password:
            # Before any check can fail, so even an error path cannot print it unmasked.
            mask(password)
        host = (conn.host or "").strip()
        if not host:
            raise KtExportConfigError(
                f"{label} has no host: set it to the export API base URL, e.g. {self._example()}"
            )
        if not password:
            raise KtExportConfigError(
                f"{label} has no password: set it to the export task's API key, e.g. {self._example()}"
            )
        try:
            base_url = normalize_base_url(host, conn.port)
        except KtExportConfigError as exc:
            raise KtExportConfigError(f"{label}: {exc}") from None
        settings: dict[str, Any] = {"base_url": base_url, "api_key": password, "conn_label": label}
        settings.update(self._extras(conn, label, extra))
        settings.update(self.client_overrides)
        for secret in proxy_credentials(settings.get("proxy")):
            mask(secret)  # before validation, so even its error cannot print it
        return build_client_settings(**settings)

    def _extras(self, conn: Connection, label: str, extra: Any = None) -> dict[str, Any]:
        try:
            if extra is None:
                extra = conn.extra_dejson
        except Exception:  # noqa: BLE001 - malformed extra JSON
            raise KtExportConfigError(f"{label} has an extra that is not valid JSON: fix it") from None
        if not isinstance(extra, dict):
            raise KtExportConfigError(f"{label} has an extra that is not a JSON object: fix it")
        # The 3.1 form stores fields as extra__ktexport__<name>; 3.2+ and JSON use the bare name.
        prefix = f"extra__{self.conn_type}__"
        values = {key.removeprefix(prefix): value for key, value in extra.items()}
        ca_bundle = values.pop("ca_bundle", None)  # the form's CA path field, folded into verify
        unknown = sorted(set(values) - _KNOWN_EXTRAS)
        if unknown:
            self.log.warning("%s: ignoring unknown extras %s", label, unknown)
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key not in _KNOWN_EXTRAS or value is None or value == "":
                continue
            if key in ("auth_location", "proxy"):
                out[key] = str(value)
            elif key == "verify":
                out[key] = _parse_verify(value, label)
            elif key in _FLOAT_EXTRAS:
                out[key] = _parse_number(key, value, label, float)
            else:
                out[key] = _parse_number(key, value, label, int)
        verify = _with_ca_bundle(out.get("verify"), ca_bundle, label)
        if verify is not None:
            out["verify"] = verify
        return out

    def _redacted(self, text: str) -> str:
        try:
            return self.client_settings().redact(text)
        except Exception:  # noqa: BLE001 - the connection itself may be the problem
            return redact(text, None)

    # ------------------------------------------------------------------ UI (Airflow 3.1)

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Hidden and relabelled standard fields for the Airflow 3.1 form (3.2+ read provider info)."""
        declared = _connection_type()["ui-field-behaviour"]
        return {
            "hidden_fields": list(declared["hidden-fields"]),
            "relabeling": dict(declared["relabeling"]),
            "placeholders": dict(declared["placeholders"]),
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra fields for the Airflow 3.1 form, from the provider info's ``conn-fields``.

        Airflow 3.1's UI calls this with stand-ins for wtforms that accept only a label,
        validators, a description, a default and a widget, and know string, integer and boolean
        fields (a number becomes a string field; the hook parses either).
        """
        from flask_appbuilder.fieldwidgets import BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, IntegerField, StringField
        from wtforms.validators import NumberRange, Optional, any_of

        widgets: dict[str, Any] = {}
        for name, spec in _connection_type()["conn-fields"].items():
            schema = spec["schema"]
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            label = lazy_gettext(spec["label"])
            kwargs: dict[str, Any] = {"description": spec.get("description", "")}
            if "boolean" in types:
                widgets[name] = BooleanField(label, default=schema.get("default"), **kwargs)
                continue
            validators: list[Any] = [Optional()]
            if "enum" in schema:
                validators.append(any_of(schema["enum"]))
            if "default" in schema:
                kwargs["default"] = schema["default"] if "integer" in types else str(schema["default"])
            if "integer" in types:
                validators.append(NumberRange(min=schema.get("minimum", 0)))
                widgets[name] = IntegerField(
                    label, validators=validators, widget=BS3TextFieldWidget(), **kwargs
                )
            else:
                widgets[name] = StringField(
                    label, validators=validators, widget=BS3TextFieldWidget(), **kwargs
                )
        return widgets


def _connection_type() -> dict[str, Any]:
    """The ``ktexport`` connection type as declared in the provider info (the one source of its form)."""
    from airflow_provider_ktexport import get_provider_info

    (conn_type,) = get_provider_info()["connection-types"]
    return conn_type


def _parse_verify(value: Any, label: str) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        return text  # a CA bundle path; the client checks that it exists
    raise KtExportConfigError(
        f"{label}: extra 'verify' must be true, false or a CA bundle path, not {json.dumps(value)}"
    )


def _with_ca_bundle(verify: bool | str | None, ca_bundle: Any, label: str) -> bool | str | None:
    """The form's two TLS fields as the client's one ``verify``: a CA bundle path means verify with it.

    ``verify`` may itself hold a path (connections made before the form had a CA field).
    """
    if ca_bundle is None or (isinstance(ca_bundle, str) and not ca_bundle.strip()):
        return verify
    if not isinstance(ca_bundle, str):
        raise KtExportConfigError(
            f"{label}: extra 'ca_bundle' must be a CA bundle path, not {json.dumps(ca_bundle)}"
        )
    path = ca_bundle.strip()
    if verify is False:
        raise KtExportConfigError(
            f"{label}: extra 'ca_bundle' is set but 'verify' is off: turn TLS verification on "
            "to verify with that CA bundle, or clear the CA bundle path"
        )
    if isinstance(verify, str) and verify != path:
        raise KtExportConfigError(
            f"{label}: extras 'verify' ({verify!r}) and 'ca_bundle' ({path!r}) name different CA "
            "bundles: keep the path in 'ca_bundle' and set 'verify' to true"
        )
    return path


def _parse_number(key: str, value: Any, label: str, kind: type[int] | type[float]) -> int | float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
    except (TypeError, ValueError):
        noun = "an integer" if kind is int else "a number of seconds"
        raise KtExportConfigError(f"{label}: extra {key!r} must be {noun}, not {value!r}") from None
    return number
