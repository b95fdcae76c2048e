"""Deprecated: moved to :mod:`airflow_provider_ktexport.drain.fetcher`; import from there (or from
:mod:`airflow_provider_ktexport.drain`). This shim goes in the next release."""

from __future__ import annotations

import warnings

from airflow_provider_ktexport.drain.fetcher import *  # noqa: F403
from airflow_provider_ktexport.drain.fetcher import __all__  # noqa: F401

warnings.warn(
    "airflow_provider_ktexport.fetcher is deprecated: import from airflow_provider_ktexport.drain.fetcher "
    "(or airflow_provider_ktexport.drain)",
    DeprecationWarning,
    stacklevel=2,
)
