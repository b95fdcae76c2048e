"""ClientSettings: the one home of the client's defaults and bounds, validated once (no I/O library).

Each option of a connection is a field of :class:`ClientSettings`; its default is the field's
default and its bounds and form text are the field's metadata (:func:`option`). From that one
table come :func:`build_client_settings`'s defaults and bounds, the connection form's extra
fields (:mod:`.form`, read by the provider info) and the defaults table of
docs/configuration.md (checked by a test). The drain's sync client (requests) and the
sensor's async client (httpx) both take the same frozen settings, so they cannot disagree on
the base URL, the key's place, TLS trust, timeouts, the body cap, the proxy or the user agent.

TLS trust: ``verify=True`` means ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` when set (what
the drain always honoured), else certifi's bundle; a path is a CA bundle; ``False`` turns
verification off. The proxy: the connection's ``proxy`` extra wins; otherwise the
environment's, as requests reads it (:mod:`airflow_provider_ktexport.transport.environment`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_ktexport import __version__
from airflow_provider_ktexport.api.checks import (
    AUTH_LOCATIONS,
    DEFAULT_MAX_BODY_BYTES,
    check_api_key,
    check_auth_location,
    check_max_body_bytes,
    check_read_timeout,
    check_verify,
    normalize_base_url,
)
from airflow_provider_ktexport.api.proxy import check_proxy, proxy_secrets, safe_proxy
from airflow_provider_ktexport.api.redact import redact, redact_bytes
from airflow_provider_ktexport.exceptions import KtExportConfigError

__all__ = [
    "AUTH_LOCATIONS",
    "CA_BUNDLE_ENV",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_USER_AGENT",
    "ClientSettings",
    "build_client_settings",
    "check_api_key",
    "check_auth_location",
    "check_max_body_bytes",
    "check_read_timeout",
    "normalize_base_url",
    "option_defaults",
    "option_names",
    "settings_of",
]

DEFAULT_USER_AGENT = f"airflow-provider-ktexport/{__version__}"
#: Environment variables naming a CA bundle for ``verify=True``, in the order requests reads them.
CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_MASK = "***"
# user:password@ in any URL of a text (a proxy URL echoed by an HTTP library).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s'\"<>]+@")


def option(
    label: str,
    kind: str | None = None,
    description: str = "",
    *,
    minimum: float | None = None,
    exclusive: bool = False,
    enum: tuple[str, ...] = (),
    form: bool = True,
    derived: bool = False,
) -> dict[str, Any]:
    """A field's metadata: its form label and text, its JSON type (``kind``) and bound.

    :param exclusive: the bound itself is refused (``> minimum`` instead of ``>= minimum``)
    :param form: shown in the connection form (an extra a user sets); else code-only
    :param derived: the default is computed from other options, so the form shows none
    """
    return {
        "label": label,
        "kind": kind,
        "description": description,
        "minimum": minimum,
        "exclusive": exclusive,
        "enum": enum,
        "form": form,
        "derived": derived,
    }


@dataclass(frozen=True)
class ClientSettings:
    """Validated settings of one export connection; make them with :func:`build_client_settings`.

    Holds the API key (and maybe proxy credentials): never log it; ``repr`` hides both. Each
    option's default, bound and form text are its field's (:func:`option`).

    :param base_url: ``scheme://host[:port][/prefix]``, normalised
    :param api_key: the export task's API key
    :param auth_location: ``"header"`` (``x-access-token``) or ``"query"`` (``?token=``)
    :param verify: ``True``, ``False`` or an existing CA bundle path (see :meth:`ca_bundle`)
    :param connect_timeout: seconds to open a connection
    :param read_timeout: seconds between bytes; longer than ``long_poll_seconds`` (default: long poll + 30)
    :param long_poll_seconds: how long the server holds an empty GET
    :param max_retries: the drain's retries of a transient failure (a waiting trigger retries on)
    :param backoff_base: first backoff in seconds (exponential, full jitter)
    :param backoff_max: cap of one backoff, ``Retry-After`` included
    :param pool_size: keep-alive connections of the sync client
    :param user_agent: the ``User-Agent`` header of both transports
    :param conn_label: what messages name, e.g. ``"connection 'ktexport_default'"``
    :param max_body_bytes: the largest body accepted once gzip is undone
    :param proxy: the connection's proxy URL (wins over the environment), or ``None``
    """

    base_url: str
    api_key: str = field(repr=False)
    auth_location: str = field(
        default="header",
        metadata=option(
            "Send the key as",
            "string",
            "header: x-access-token (keeps the key out of URLs and logs); query: ?token=",
            enum=AUTH_LOCATIONS,
        ),
    )
    verify: bool | str = field(
        default=True,
        metadata=option(
            "Verify TLS", "boolean", "check the server's certificate; turn off only for a test server"
        ),
    )
    proxy: str | None = field(
        default=None,
        repr=False,
        metadata=option("Proxy URL", "string", "optional, e.g. http://proxy.internal:3128"),
    )
    long_poll_seconds: float = field(
        default=45.0,
        metadata=option(
            "Long poll (s)",
            "number",
            "how long the server holds an empty GET (45 s on the real API)",
            minimum=0,
            exclusive=True,
        ),
    )
    connect_timeout: float = field(
        default=10.0, metadata=option("Connect timeout (s)", "number", minimum=0, exclusive=True)
    )
    #: The default is derived (long poll + 30 s): the form shows none, its description says it.
    read_timeout: float = field(
        default=75.0,
        metadata=option(
            "Read timeout (s)",
            "number",
            "blank: long poll + 30 s (75 s); if set, it must exceed the long poll",
            minimum=0,
            exclusive=True,
            derived=True,
        ),
    )
    max_retries: int = field(
        default=5,
        metadata=option(
            "Max retries", "integer", "retries of a transient failure (429, 5xx, reset)", minimum=0
        ),
    )
    max_body_bytes: int = field(
        default=DEFAULT_MAX_BODY_BYTES,
        metadata=option(
            "Max body (bytes)",
            "integer",
            "largest batch body accepted once gzip is undone (67108864 = 64 MiB)",
            minimum=1024,
        ),
    )
    backoff_base: float = field(
        default=0.5, metadata=option("Backoff base (s)", "number", minimum=0, form=False)
    )
    backoff_max: float = field(
        default=30.0, metadata=option("Backoff cap (s)", "number", minimum=0, form=False)
    )
    pool_size: int = field(default=8, metadata=option("Pool size", "integer", minimum=1, form=False))
    user_agent: str = field(default=DEFAULT_USER_AGENT, metadata=option("User-Agent", "string", form=False))
    conn_label: str | None = None

    def __repr__(self) -> str:
        return (
            f"ClientSettings(base_url={self.base_url!r}, auth_location={self.auth_location!r}, "
            f"verify={self.verify!r}, proxy={safe_proxy(self.proxy)!r}, conn_label={self.conn_label!r})"
        )

    @property
    def where(self) -> str:
        """What an error message names: the connection, or a generic phrase."""
        return self.conn_label or "the connection"

    def redact(self, text: str) -> str:
        """``text`` with the API key, any ``token=`` value and any proxy credentials masked."""
        text = redact(text, self.api_key)
        for secret in proxy_secrets(self.proxy):
            text = text.replace(secret, _MASK)
        return _USERINFO.sub(r"\1" + _MASK + "@", text)

    def redact_bytes(self, body: bytes) -> bytes:
        """A body fit to store (quarantine): the API key in every spelling and the proxy
        credentials masked, nothing else (another service's ``token=`` value is data)."""
        body = redact_bytes(body, self.api_key)
        for secret in proxy_secrets(self.proxy):
            body = body.replace(secret.encode("utf-8"), _MASK.encode())
        return body

    def proxy_url(self) -> str | None:
        """The proxy both transports use for the base URL: the ``proxy`` extra, else the environment's
        (read by requests' rules in the transport layer, imported only when asked).

        :raises KtExportConfigError: an environment proxy that is not an http(s) URL
        """
        if self.proxy is not None:
            return self.proxy
        from airflow_provider_ktexport.transport.environment import env_proxy

        return env_proxy(self.base_url)

    def ca_bundle(self) -> bool | str:
        """What TLS trusts: ``False``, a CA bundle path, or ``True`` (certifi's bundle).

        ``verify=True`` takes ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` when set.
        """
        if self.verify is not True:
            return self.verify
        for name in CA_BUNDLE_ENV:
            path = os.environ.get(name)
            if path:
                if not os.path.exists(path):
                    raise KtExportConfigError(
                        f"environment variable {name}={path!r} names no file: fix it or unset it "
                        f"(it sets the CA bundle of {self.where})"
                    )
                return path
        return True

    def headers(self) -> dict[str, str]:
        """The headers every request carries (the key's header is added by ``auth_parts``)."""
        return {"user-agent": self.user_agent, "accept-encoding": "gzip", "accept": "application/json"}


#: Options of :func:`build_client_settings` besides the base URL and the key, in field order.
_OPTIONS = tuple(f for f in dataclasses.fields(ClientSettings) if f.name not in ("base_url", "api_key"))


def option_names() -> frozenset[str]:
    """The keyword options :func:`build_client_settings` (and the client, and the hook) accept."""
    return frozenset(f.name for f in _OPTIONS)


def option_defaults() -> dict[str, Any]:
    """Each option's default, as the client uses it when the option is not given."""
    return {f.name: f.default for f in _OPTIONS}


def build_client_settings(base_url: str, api_key: str, **options: Any) -> ClientSettings:
    """Validate everything once; every problem is a :class:`KtExportConfigError` naming the fix.

    ``options`` are :class:`ClientSettings` fields; one left out (or ``None`` where ``None`` is
    no value of its own: ``read_timeout``, ``user_agent``, ``max_body_bytes``) takes the field's
    default; ``read_timeout`` defaults to ``long_poll_seconds + 30``.

    :raises TypeError: an option that is no field
    """
    unknown = sorted(set(options) - option_names())
    if unknown:
        raise TypeError(f"unknown client settings {unknown}; allowed: {sorted(option_names())}")
    given = {**option_defaults(), **{k: v for k, v in options.items() if v is not None or k == "verify"}}
    where = given["conn_label"] or "the export API"
    long_poll = _checked("long_poll_seconds", given["long_poll_seconds"])
    read_timeout = options.get("read_timeout")
    if read_timeout is None:
        read_timeout = long_poll + 30.0
    user_agent = given["user_agent"]
    if not isinstance(user_agent, str) or not user_agent.strip():
        raise KtExportConfigError(f"user_agent must be a non-empty string, not {user_agent!r}")
    proxy = given["proxy"]
    return ClientSettings(
        base_url=normalize_base_url(base_url),
        api_key=check_api_key(api_key, where),
        auth_location=check_auth_location(given["auth_location"]),
        verify=check_verify(given["verify"]),
        connect_timeout=_checked("connect_timeout", given["connect_timeout"]),
        read_timeout=check_read_timeout(_checked("read_timeout", read_timeout), long_poll),
        long_poll_seconds=long_poll,
        max_retries=_checked("max_retries", given["max_retries"]),
        backoff_base=_checked("backoff_base", given["backoff_base"]),
        backoff_max=_checked("backoff_max", given["backoff_max"]),
        pool_size=_checked("pool_size", given["pool_size"]),
        user_agent=user_agent.strip(),
        conn_label=given["conn_label"],
        max_body_bytes=check_max_body_bytes(given["max_body_bytes"]),
        proxy=None if proxy == "" else check_proxy(proxy, f"the 'proxy' of {where}") if proxy else None,
    )


def settings_of(value: ClientSettings | Mapping[str, Any]) -> ClientSettings:
    """``value`` itself, or a mapping of :func:`build_client_settings` arguments validated."""
    if isinstance(value, ClientSettings):
        return value
    return build_client_settings(**value)


def _checked(name: str, value: Any) -> Any:
    """A number option within its field's bound (the metadata), else an error naming the bound."""
    meta = _META[name]
    bound = f"{'>' if meta['exclusive'] else '>='} {meta['minimum']:g}"
    if meta["kind"] == "integer":
        if isinstance(value, bool) or not isinstance(value, int) or not _within(value, meta):
            raise KtExportConfigError(f"{name} must be an integer {bound}, not {value!r}")
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not _within(number, meta) or number == float("inf"):
        raise KtExportConfigError(f"{name} must be a number of seconds {bound}, not {value!r}")
    return number


def _within(number: float, meta: Mapping[str, Any]) -> bool:
    return number > meta["minimum"] if meta["exclusive"] else number >= meta["minimum"]


_META = {f.name: f.metadata for f in _OPTIONS if f.metadata}
