"""The deprecation warning of the modules that moved into the drain package (kept one release)."""

from __future__ import annotations

import warnings


def warn_moved(name: str) -> None:
    """Warn, at the importer's line, that ``airflow_provider_ktexport.<name>`` is now in ``drain``."""
    warnings.warn(
        f"airflow_provider_ktexport.{name} is deprecated and goes in the next release: import from "
        f"airflow_provider_ktexport.drain.{name} (or airflow_provider_ktexport.drain)",
        DeprecationWarning,
        stacklevel=3,
    )
