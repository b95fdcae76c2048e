"""Deprecated: moved to :mod:`airflow_provider_ktexport.drain.buffer`; this shim goes next release."""

from __future__ import annotations

from airflow_provider_ktexport.drain._moved import warn_moved
from airflow_provider_ktexport.drain.buffer import *  # noqa: F403
from airflow_provider_ktexport.drain.buffer import __all__  # noqa: F401

warn_moved("buffer")
