"""The destination probe: a lake that takes no files fails before any lease, saying why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from airflow_provider_ktexport.exceptions import KtExportConfigError, KtExportError, KtExportWriteError
from airflow_provider_ktexport.lake.writer import LakeWriter

# -- proving the destination -----------------------------------------------------------------------


def test_prove_writable_writes_reads_back_and_deletes_its_probe(tmp_path: Path) -> None:
    memory = MemoryFileSystem()
    for writer in (
        LakeWriter(LocalFileSystem(), str(tmp_path / "lake")),
        LakeWriter(memory, "/probe-lake", uri_prefix="s3://bucket/lake"),
    ):
        writer.prove_writable()
        assert [p for p in writer.fs.find(writer.root)] == [], writer
    assert not [p for p in (tmp_path / "lake").rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (FileNotFoundError("The specified bucket does not exist"), KtExportConfigError, "create it"),
        (PermissionError("Access Denied"), KtExportConfigError, "grant"),
        (OSError(30, "Read-only file system"), KtExportConfigError, "read-only"),
        (ConnectionRefusedError(111, "Connection refused"), KtExportWriteError, "retry"),
        (TimeoutError("timed out"), KtExportWriteError, "retry"),
    ],
)
def test_prove_writable_tells_a_wrong_destination_from_an_outage(
    error: Exception, kind: type[Exception], words: str
) -> None:
    class Refusing(MemoryFileSystem):
        def pipe_file(self, path: str, value: Any, **kwargs: Any) -> None:
            raise error

    writer = LakeWriter(Refusing(), "/bucket/lake", uri_prefix="s3://bucket/lake")
    with pytest.raises(KtExportError) as err:
        writer.prove_writable()
    assert type(err.value) is kind, err.value
    assert "s3://bucket/lake" in str(err.value) and words in str(err.value)
    assert type(error).__name__ in str(err.value)


def test_prove_writable_refuses_a_store_that_reads_back_other_bytes() -> None:
    class Garbling(MemoryFileSystem):
        def cat_file(self, path: str, start: Any = None, end: Any = None, **kwargs: Any) -> bytes:
            return b"something else"

    fs = Garbling()
    writer = LakeWriter(fs, "/garbled", uri_prefix="s3://bucket/garbled")
    with pytest.raises(KtExportWriteError, match="differ"):
        writer.prove_writable()
    assert fs.find("/garbled") == []  # the probe was removed


def test_prove_writable_refuses_a_zonal_gcs_bucket_as_a_setting() -> None:
    class ZonalBuckets(MemoryFileSystem):
        def _sync_lookup_bucket_type(self, bucket: str) -> str:
            return "ZONAL_HIERARCHICAL"

        def split_path(self, path: str) -> tuple[str, str, None]:
            bucket, _, key = path.lstrip("/").partition("/")
            return bucket, key, None

    writer = LakeWriter(ZonalBuckets(), "/zonal/lake", uri_prefix="gs://zonal/lake")
    with pytest.raises(KtExportConfigError, match="zonal"):
        writer.prove_writable()
