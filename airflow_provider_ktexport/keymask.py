"""Deprecated alias: moved to :mod:`airflow_provider_ktexport.api.keymask` (removed next release)."""

from __future__ import annotations

from airflow_provider_ktexport._moved import warn_moved
from airflow_provider_ktexport.api.keymask import MASK, MIN_API_KEY_LENGTH, KeyMask, key_mask

__all__ = ["MASK", "MIN_API_KEY_LENGTH", "KeyMask", "key_mask"]

warn_moved("airflow_provider_ktexport.keymask", "airflow_provider_ktexport.api.keymask")
