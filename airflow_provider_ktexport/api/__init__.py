"""The export API's protocol as pure decisions: no requests, no httpx, no Airflow.

``settings`` (the options, their defaults and bounds), ``exchange`` (what an answer means and
what comes next), ``envelope`` and ``scan`` (the batch body), ``errors``, ``redact`` and
``keymask`` (the key out of text and stored data), ``inflate`` (a capped gzip decoder),
``probe`` (what a waiting sensor reports) and ``form`` (the connection form). The transports
in :mod:`airflow_provider_ktexport.transport` do the I/O and drive these.
"""
