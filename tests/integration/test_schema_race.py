"""Two writer processes add the same new columns at once: one name and one type per key path.

Each round both processes (``schema_race.race``) write a new record type's first file at the
same moment: ``x`` as int64 on one side and string on the other, ``Speed`` beside ``speed``,
``eventDate`` beside ``eventdate``... Across all files of the round every key path has one name
and one type, no two names are equal ignoring case, and every value is the one sent (in its
column or a variant of it). Before column files were created only if absent, writers could
each see themselves first and write one file with ``x`` int64 and another with string.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_ktexport.lake.naming import field_path, variant_tag
from airflow_provider_ktexport.lake.variants import is_meta_column
from tests.integration.schema_race import SIDES, race, record_type
from tests.integration.stores import (
    Store,
    azure_endpoint_fixture,  # noqa: F401 - make_store asks for it by name
    gcs_endpoint_fixture,  # noqa: F401
    make_store,
)

ROUNDS = 40


def run_race(store: Store, endpoint: str, rounds: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    spec = {"name": store.name, "root": store.root, "endpoint": endpoint}
    procs = [ctx.Process(target=race, args=(spec, side, rounds, barrier)) for side in SIDES]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=600)
    assert [p.exitcode for p in procs] == [0, 0], "a writer process failed (see its traceback above)"


def round_columns(store: Store, rtype: str) -> tuple[dict[tuple[Any, ...], set[tuple[str, str]]], list[dict]]:
    """Per (key path, variant tag): the (name, type) pairs its files give it; and every row."""
    seen: dict[tuple[Any, ...], set[tuple[str, str]]] = {}
    rows: list[dict] = []
    files = [f for f in store.data_files() if f"/record_type={rtype}/" in f]
    for path in files:
        with store.fs.open(path, "rb") as fh:
            table = pq.read_table(fh)
        for f in table.schema:
            if not is_meta_column(f.name):
                seen.setdefault((field_path(f), variant_tag(f.name)), set()).add((f.name, str(f.type)))
        for row in table.to_pylist():
            values: dict[tuple[str, ...], Any] = {}
            for f in table.schema:
                if not is_meta_column(f.name) and row[f.name] is not None:
                    assert field_path(f) not in values, f"{f.name}: a value in two columns of one path"
                    values[field_path(f)] = row[f.name]
            rows.append(values)
    return seen, rows


def sent(side: str) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {("type",): None, ("side",): side}
    for key, value in SIDES[side].items():
        if isinstance(value, dict):
            out.update({(key, k): v for k, v in value.items()})
        else:
            out[(key,)] = value
    return out


def as_json(value: Any) -> Any:
    """A landed value as the JSON it came from (string variants hold non-strings as JSON text)."""
    if hasattr(value, "isoformat"):
        return value.isoformat().replace("+00:00", "Z")
    return value


@pytest.mark.parametrize("store_name", ["local", "s3", "azure"])
def test_two_writer_processes_never_split_or_retype_a_column(
    store_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = make_store(store_name, request, tmp_path)
    endpoint = {"s3": "s3_endpoint", "azure": "azure_endpoint"}.get(store_name)
    run_race(store, request.getfixturevalue(endpoint) if endpoint else "", ROUNDS)
    splits = []
    for r in range(ROUNDS):
        rtype = record_type(r)
        seen, rows = round_columns(store, rtype)
        split = {k: v for k, v in seen.items() if len(v) != 1}
        if split:
            splits.append((rtype, split))
        names = [name for pairs in seen.values() for name, _ in pairs]
        assert len({n.lower() for n in set(names)}) == len(set(names)), (rtype, sorted(names))
        assert len(rows) == 2, rtype
        for values in rows:
            side = values[("side",)]
            want = {k: v for k, v in sent(side).items() if k != ("type",)}
            got = {k: as_json(v) for k, v in values.items() if k != ("type",)}
            # A value moved to a string variant is its JSON text.
            got = {
                k: (json.loads(v) if isinstance(v, str) and not isinstance(want[k], str) else v)
                for k, v in got.items()
            }
            assert got == want, (rtype, side)
    assert splits == [], f"{len(splits)} of {ROUNDS} rounds split a column: {splits[:3]}"


@pytest.mark.parametrize("store_name", ["local", "s3", "azure"])
def test_a_column_file_is_created_only_if_absent(
    store_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    store = make_store(store_name, request, tmp_path)
    writer = store.writer()
    path = f"{store.root}/_schema/t/columns/x.json"
    writer._create(path, b"first")
    with pytest.raises(FileExistsError):
        writer._create(path, b"second")
    store.fs.invalidate_cache()
    assert store.fs.cat_file(path) == b"first"


def test_on_gcs_a_column_file_is_an_upload_with_if_generation_match_0(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # gcp-storage-emulator ignores the precondition (a second upload overwrites), so it cannot
    # referee a race; what it can show is that every column file is sent as create-if-absent.
    import aiohttp

    store = make_store("gcs", request, tmp_path)
    uploads: list[dict[str, Any]] = []
    original = aiohttp.ClientSession._request

    async def _request(self: aiohttp.ClientSession, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
        params = dict(kwargs.get("params") or {})
        if method.upper() == "POST" and "/upload/" in str(url):
            uploads.append(params)
        return await original(self, method, url, *args, **kwargs)

    with mock.patch.object(aiohttp.ClientSession, "_request", _request):
        store.writer().write(pa.table({"x": [1], "Speed": [2]}), {"record_type": "t"})
    # Two column files (x, Speed), then the data file: a plain upload (its name is new by construction).
    assert [p.get("ifGenerationMatch") for p in uploads] == ["0", "0", None], uploads
