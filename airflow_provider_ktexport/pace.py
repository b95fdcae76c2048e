"""Deprecated: moved to :mod:`airflow_provider_ktexport.drain.pace`; this shim goes next release."""

from __future__ import annotations

from airflow_provider_ktexport.drain._moved import warn_moved
from airflow_provider_ktexport.drain.pace import *  # noqa: F403
from airflow_provider_ktexport.drain.pace import __all__  # noqa: F401

warn_moved("pace")
