"""Test helpers: a local export API emulator (:class:`Emulator`) and its record generator.

Standard library only; nothing here imports the client or the engine.
"""

from __future__ import annotations

from airflow_provider_ktexport.testing.emulator import FAULT_NAMES, FAULT_SETTINGS, Emulator, main
from airflow_provider_ktexport.testing.records import RecordGenerator

__all__ = ["FAULT_NAMES", "FAULT_SETTINGS", "Emulator", "RecordGenerator", "main"]
