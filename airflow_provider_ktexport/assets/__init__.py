"""Asset URI schemes this provider registers with Airflow (``asset-uris`` in the provider info)."""
