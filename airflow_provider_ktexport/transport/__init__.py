"""The I/O of the export API: ``sync_client`` (requests, the drain) and ``async_client`` (httpx,
the trigger), both driving :mod:`airflow_provider_ktexport.api.exchange`; ``environment``
resolves the proxy and TLS trust the same way for both."""
