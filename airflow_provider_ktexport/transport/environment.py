"""What the environment adds to a connection's settings: its proxy and its TLS trust store.

Both transports resolve them here, the same way: the proxy as ``requests`` chooses it
(``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY``, ``NO_PROXY``), and an :class:`ssl.SSLContext` per
CA bundle, cached per process and per file, because loading a bundle costs 20-200 ms of CPU
that must not run on the triggerer's event loop.
"""

from __future__ import annotations

import functools
import os
import ssl

from airflow_provider_ktexport.api.proxy import check_proxy
from airflow_provider_ktexport.exceptions import KtExportConfigError

__all__ = ["env_proxy", "ssl_context"]


def env_proxy(url: str) -> str | None:
    """The environment's proxy for ``url``, as requests chooses it, or None (none, or ``NO_PROXY``).

    requests' own functions decide, so the rule is exactly the one the drain always had:
    ``https_proxy``/``HTTPS_PROXY`` for https URLs, ``http_proxy`` for http, ``all_proxy``
    for both, ``no_proxy`` entries (hosts, ``.domain`` suffixes, CIDR blocks, ``*``) exempt.
    """
    from requests.utils import get_environ_proxies, select_proxy

    chosen = select_proxy(url, get_environ_proxies(url))
    if not chosen:
        return None
    return check_proxy(chosen, "the environment's proxy (HTTPS_PROXY/HTTP_PROXY/ALL_PROXY)")


def ssl_context(verify: bool | str) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` for a :meth:`ClientSettings.ca_bundle` value, one per process.

    Cached per (bundle path, its size and mtime): a replaced bundle is read again, an unchanged
    one never. The first call for a bundle loads it (20-200 ms of CPU): call it off the event
    loop (``await asyncio.to_thread(ssl_context, verify)``).
    """
    if verify is False:
        return _ssl_context(False, None)
    if verify is True:
        import certifi

        path = certifi.where()
    else:
        path = verify
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise KtExportConfigError(
            f"the CA bundle {path!r} cannot be read ({exc.strerror}): fix the path"
        ) from None
    return _ssl_context(path, (stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _ssl_context(path: str | bool, _version: tuple[int, int] | None) -> ssl.SSLContext:
    if path is False:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    assert isinstance(path, str)
    try:
        if os.path.isdir(path):
            return ssl.create_default_context(capath=path)
        return ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError) as exc:
        raise KtExportConfigError(f"the CA bundle {path!r} cannot be loaded ({exc}): fix the file") from None
