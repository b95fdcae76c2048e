"""The object stores the README names, for the storage tests: local, S3, GCS and Azure.

Each store is a real server on loopback reached through the fsspec implementation users get:

- S3: moto's server (``s3_endpoint`` in conftest.py) through ``s3fs``;
- GCS: ``gcp-storage-emulator`` (in memory) through ``gcsfs``;
- Azure: Azurite's blob service (npm package, ``ci/azurite``) through ``adlfs``.

``.ci/run`` starts the servers once and exports ``KTEXPORT_TEST_GCS_ENDPOINT`` and
``KTEXPORT_TEST_AZURE_ENDPOINT``; without them the fixtures start their own. A server whose tool is
missing skips its tests, unless ``KTEXPORT_REQUIRE_ALL_STORES=1`` (set by CI), which fails them:
CI must never pass by skipping a store.

Test modules import the fixture functions they use (``store_fixture`` is the fixture ``store``, and
so on); ``store`` asks for ``gcs_endpoint``/``azure_endpoint`` by name, so import those too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.lake.writer import LakeWriter
from tests.integration.conftest import s3_client, s3_filesystem

REPO = Path(__file__).resolve().parents[2]
STORES = ("local", "s3", "gcs", "azure")
OBJECT_STORES = ("s3", "gcs", "azure")
#: Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: HTTP methods that write; everything else (GET, HEAD) only reads.
WRITE_METHODS = frozenset({"PUT", "POST", "PATCH"})


def missing(reason: str) -> None:
    """Skip for a tool that is not installed here, or fail when CI requires every store."""
    if os.environ.get("KTEXPORT_REQUIRE_ALL_STORES") == "1":
        pytest.fail(f"{reason} (KTEXPORT_REQUIRE_ALL_STORES=1: every store must run)", pytrace=False)
    pytest.skip(reason)


# -- servers -------------------------------------------------------------------------------------


@pytest.fixture(scope="session", name="gcs_endpoint")
def gcs_endpoint_fixture() -> Iterator[str]:
    """A GCS JSON-API server: the one .ci/run started, else gcp-storage-emulator in a thread."""
    url = os.environ.get("KTEXPORT_TEST_GCS_ENDPOINT")
    if url:
        yield url
        return
    try:
        from gcp_storage_emulator.server import create_server
    except ImportError:
        missing("gcp-storage-emulator is not installed (it is in the test dependency group: uv sync)")
    server = create_server("127.0.0.1", 0, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{server._api._httpd.server_address[1]}"
    server.stop()


def azurite_command() -> list[str] | None:
    """The command that starts Azurite's blob service, or None when it is not installed."""
    local = REPO / "ci" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    found = str(local) if local.exists() else shutil.which("azurite-blob")
    if found is None or shutil.which("node") is None:
        return None
    # In memory, loopback, a free port; --skipApiVersionCheck: the Azure SDK may be newer than
    # the API versions this Azurite release knows, which is harmless for the calls we make.
    return [
        found,
        "--inMemoryPersistence",
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        "0",
        "--skipApiVersionCheck",
    ]


def start_azurite(timeout: float = 60) -> tuple[subprocess.Popen[str], str]:
    """Start Azurite; returns the process and its blob endpoint (``http://127.0.0.1:PORT/devstoreaccount1``)."""
    cmd = azurite_command()
    if cmd is None:
        missing("Azurite is not installed: run `npm ci --prefix ci/azurite` (needs node)")
        raise AssertionError("unreachable")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: list[str] = []
    seen: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            match = re.search(r"listens on (http://\S+)", line)
            if match and not found:
                found.append(match.group(1).rstrip("/"))
        # Output after the start line is drained here too, so Azurite never blocks on a full pipe.

    threading.Thread(target=read, daemon=True).start()
    deadline = threading.Event()
    for _ in range(int(timeout * 10)):
        if found or proc.poll() is not None:
            break
        deadline.wait(0.1)
    if not found:
        proc.kill()
        raise RuntimeError("Azurite did not start:\n" + "".join(seen[-20:]))
    return proc, f"{found[0]}/{AZURE_ACCOUNT}"


@pytest.fixture(scope="session", name="azure_endpoint")
def azure_endpoint_fixture() -> Iterator[str]:
    """An Azure blob endpoint: the Azurite .ci/run started, else one started here."""
    url = os.environ.get("KTEXPORT_TEST_AZURE_ENDPOINT")
    if url:
        yield url
        return
    proc, url = start_azurite()
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def azure_connection_string(endpoint: str) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURE_ACCOUNT};AccountKey={AZURE_KEY};"
        f"BlobEndpoint={endpoint};"
    )


# -- filesystems ---------------------------------------------------------------------------------


def gcs_filesystem(endpoint: str) -> AbstractFileSystem:
    # gcsfs.core's class, not the package's default ExtendedGcsFileSystem: that one first asks the
    # gRPC storage-control API for the bucket's layout (zonal/HNS), which an emulator does not
    # serve (60 s timeout per call), and for a standard bucket it delegates to this class anyway.
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(endpoint_url=endpoint, token="anon", project="ktexport-test")  # noqa: S106


def azure_filesystem(endpoint: str) -> AbstractFileSystem:
    from adlfs import AzureBlobFileSystem

    return AzureBlobFileSystem(connection_string=azure_connection_string(endpoint))


@dataclass
class Store:
    """A fresh, empty lake root on one store."""

    name: str
    fs: AbstractFileSystem
    root: str  # the lake root as a path on ``fs``
    uri: str  # the same as a URL, the way a user names it

    def writer(self, **kwargs: Any) -> LakeWriter:
        return LakeWriter(self.fs, self.root, uri_prefix=self.uri, **kwargs)

    def files(self) -> list[str]:
        """Every file under the root (data, schema, quarantine, temporary)."""
        self.fs.invalidate_cache()
        try:
            return sorted(self.fs.find(self.root))
        except FileNotFoundError:
            return []

    def data_files(self) -> list[str]:
        """What a ``*.parquet`` glob finds: the files readers see."""
        return [
            p for p in self.files() if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith(".")
        ]


def bucket_name() -> str:
    # Valid for S3, GCS and Azure containers alike (lower-case letters and digits, 3-63).
    return "kt" + uuid.uuid4().hex[:20]


def make_store(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """A fresh bucket (container, folder) on store ``name``; starts the server on first use."""
    bucket = bucket_name()
    if name == "local":
        root = str(tmp_path / "lake")
        return Store(name, LocalFileSystem(), root, f"file://{root}")
    if name == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        s3_client(endpoint).create_bucket(Bucket=bucket)
        return Store(name, s3_filesystem(endpoint), f"{bucket}/lake", f"s3://{bucket}/lake")
    if name == "gcs":
        fs = gcs_filesystem(request.getfixturevalue("gcs_endpoint"))
        fs.mkdir(bucket)
        return Store(name, fs, f"{bucket}/lake", f"gs://{bucket}/lake")
    if name == "azure":
        fs = azure_filesystem(request.getfixturevalue("azure_endpoint"))
        fs.mkdir(bucket)
        return Store(name, fs, f"{bucket}/lake", f"abfs://{bucket}/lake")
    raise ValueError(name)


@pytest.fixture(params=STORES, name="store")
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each store the README names, one test per store."""
    return make_store(request.param, request, tmp_path)


@pytest.fixture(params=OBJECT_STORES, name="object_store")
def object_store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The object stores only (one-request and multipart checks have no local counterpart)."""
    return make_store(request.param, request, tmp_path)


# -- watching and breaking the HTTP traffic ------------------------------------------------------------


class InjectedFault(RuntimeError):
    """Raised in place of an HTTP request; not a type any client retries."""


@contextmanager
def http_requests(fail: Any = None) -> Iterator[list[tuple[str, str]]]:
    """Record ``(method, url)`` of every request s3fs, gcsfs and adlfs send (all go through aiohttp).

    :param fail: ``fail(method, url, calls_so_far)`` -> True raises :class:`InjectedFault` instead
        of sending that request (the connection breaks before the server answers)
    """
    import aiohttp

    calls: list[tuple[str, str]] = []
    original = aiohttp.ClientSession._request

    async def _request(self: aiohttp.ClientSession, method: str, str_or_url: Any, *args: Any, **kwargs: Any):
        call = (method.upper(), str(str_or_url))
        if fail is not None and fail(call[0], call[1], calls):
            calls.append(("FAILED " + call[0], call[1]))
            raise InjectedFault(f"injected fault: {call[0]} {call[1]}")
        calls.append(call)
        return await original(self, method, str_or_url, *args, **kwargs)

    with mock.patch.object(aiohttp.ClientSession, "_request", _request):
        yield calls


def writes(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [c for c in calls if c[0] in WRITE_METHODS]
