"""The async hook of a KT Export connection, for triggers: nothing here blocks the event loop.

It pairs with :class:`~airflow_provider_ktexport.hooks.ktexport.KtExportHook` as Airflow's SQS
hooks pair: one connection parser (the sync hook's), two transports
(:class:`~airflow_provider_ktexport.transport.async_client.AsyncProber` here). The sync hook's
module pulls in requests (0.2-0.5 s of imports on a first use), so it is imported in a worker
thread, never on the triggerer's event loop; this module imports no requests.
"""

from __future__ import annotations

import asyncio
import importlib

from airflow_provider_ktexport.api.settings import ClientSettings

__all__ = ["KtExportAsyncHook", "aclient_settings"]


class KtExportAsyncHook:
    """Reads a KT Export connection from inside the triggerer, for the async client
    (:class:`~airflow_provider_ktexport.transport.async_client.AsyncProber`).

    The connection (and its key) is looked up here: trigger kwargs only ever carry the
    connection id.

    :param ktexport_conn_id: the connection id (default ``ktexport_default``)
    """

    default_conn_name = "ktexport_default"

    def __init__(self, ktexport_conn_id: str = default_conn_name) -> None:
        self.ktexport_conn_id = ktexport_conn_id

    async def client_settings(self) -> ClientSettings:
        """The connection's validated settings (``KtExportHook.client_settings()``), read async."""
        hooks = await asyncio.to_thread(importlib.import_module, "airflow_provider_ktexport.hooks.ktexport")
        hook = hooks.KtExportHook(ktexport_conn_id=self.ktexport_conn_id)
        return await hook.aclient_settings()


async def aclient_settings(conn_id: str) -> ClientSettings:
    """:meth:`KtExportAsyncHook.client_settings` of ``conn_id``."""
    return await KtExportAsyncHook(conn_id).client_settings()
