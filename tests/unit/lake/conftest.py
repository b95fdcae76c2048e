"""Fixtures of the lake's unit tests: a writer on a local folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.lake.writer import LakeWriter


@pytest.fixture
def writer(tmp_path: Path) -> LakeWriter:
    return LakeWriter(LocalFileSystem(), str(tmp_path), writer_id="w1")
