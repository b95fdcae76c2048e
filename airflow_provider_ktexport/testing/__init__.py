"""Test helpers: a local export API emulator (:class:`Emulator`) and its record generator.

Standard library only; nothing here imports the client or the engine. Names load lazily, so
importing the package (or the record generator alone) loads nothing it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_ktexport.testing.emulator import FAULT_NAMES, FAULT_SETTINGS, Emulator, main
    from airflow_provider_ktexport.testing.records import RecordGenerator

__all__ = ["FAULT_NAMES", "FAULT_SETTINGS", "Emulator", "RecordGenerator", "main"]

_HOME = {name: "emulator" for name in ("FAULT_NAMES", "FAULT_SETTINGS", "Emulator", "main")} | {
    "RecordGenerator": "records"
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
