"""Stored data changes the exact API key only (issue 18): the Drain against the emulator.

The emulator serves good rows that carry another service's ``token=`` URL (they must land byte
for byte) and rows that echo the connection's API key JSON-escaped (they must land masked), and
one undecodable body echoing both (quarantined). The key holds ``"``, ``\\`` and ``/`` so that a
body can only hold it escaped. Then every file under the lake is searched for the key: Parquet
files are read back (every value of every column, and every column name: their bytes are
compressed, a byte search would prove nothing), the other files byte by byte.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from airflow_provider_ktexport.testing.emulator import Emulator
from airflow_provider_ktexport.testing.records import FOREIGN_TOKEN_URL, KEY_TEXT_KINDS
from tests.emulators import client_for
from tests.integration.test_poison import landed_seqs

pytestmark = pytest.mark.integration

KEY = 'kt-"S3\\cr/+9=Zq'
ESCAPED = json.dumps(KEY)[1:-1]  # kt-\"S3\\cr/+9=Zq
#: Every way the key could sit in a stored value or file.
SPELLINGS = {KEY, ESCAPED, ESCAPED.replace("/", "\\/"), quote(KEY, safe=""), quote_plus(KEY)}
#: An undecodable body (cut short) echoing the key and another service's token: quarantined.
BROKEN = (
    '{"id":"q-1","items":[{"type":"telemetry","echo":"' + ESCAPED + '","file":"' + FOREIGN_TOKEN_URL + '"}'
)


def stored_texts(lake: Path) -> Iterator[tuple[str, str]]:
    """(where, text) of everything the lake stores: Parquet values and names, other files' bytes."""
    for path in sorted(p for p in lake.rglob("*") if p.is_file()):
        if path.suffix != ".parquet":
            yield str(path), path.read_bytes().decode("utf-8", "replace")
            continue
        table = pq.read_table(path)
        yield f"{path} (column names)", "\n".join(table.schema.names)
        for name in table.schema.names:
            for value in table.column(name).to_pylist():
                if isinstance(value, str):
                    yield f"{path}:{name}", value


def test_foreign_tokens_land_exactly_and_the_key_is_in_no_file_of_the_lake(tmp_path):
    lake = tmp_path / "lake"
    violations: list[str] = []
    with Emulator(
        api_key=KEY,
        lease_seconds=30,
        long_poll_seconds=1,
        batch_size=50,
        poison=0.1,
        poison_kinds=KEY_TEXT_KINDS,
        seed=18,
    ) as emu:
        emu.script(200, BROKEN)
        emu.generate(400)

        def on_ack(batch_id: str, records: list[dict]) -> None:
            missing = {r["emulator_seq"] for r in records} - set(landed_seqs(lake))
            if missing:
                violations.append(f"{batch_id}: records {sorted(missing)} not in the lake at DELETE time")
                raise AssertionError(violations[-1])

        emu.on_ack = on_ack
        with client_for(emu, long_poll_seconds=1.0) as client:
            config = DrainConfig(max_runtime=60, flush_records=150, include_raw=True)
            result = Drain(client, LakeWriter(LocalFileSystem(), str(lake)), config).run()
        served = emu.hostile_records()
        stats = emu.stats()
    assert violations == [] and result.stopped == "empty" and result.rejected == 0
    assert stats["queued"] == 0 and stats["leased"] == 0, stats
    assert sorted(landed_seqs(lake)) == list(range(1, 401))  # every record a row, once
    assert {kind for kind, _ in served.values()} == set(KEY_TEXT_KINDS)

    rows = {r["emulator_seq"]: r for r in read_lake_table(str(lake)).to_pylist()}
    for seq, (kind, text) in served.items():
        row = rows[seq]
        if kind == "foreign_token_url":  # data of another service: byte for byte
            assert row["_raw"] == text.decode() and row["file"] == FOREIGN_TOKEN_URL
            assert row["map"] == "https://maps.example.com/t?TOKEN=Zz9&x=1"
        else:  # the key, masked in each spelling; the rest of the text as served
            assert row["note"] == "proxy said: GET /v2/stream?token=***"
            assert row["echo"] == row["echo_slash"] == "***"
            expected = text.replace(ESCAPED.replace("/", "\\/").encode(), b"***").replace(
                ESCAPED.encode(), b"***"
            )
            assert row["_raw"] == expected.decode()

    bodies = list((lake / "_quarantine").glob("*.body"))
    assert result.quarantined == 1 and [b.read_bytes() for b in bodies] == [
        BROKEN.replace(ESCAPED, "***").encode()
    ]

    searched = 0
    for where, text in stored_texts(lake):
        searched += 1
        for spelled in SPELLINGS:
            assert spelled not in text, f"API key ({spelled!r}) found in {where}"
    assert searched > 400  # the rows' values were read, not just a few file names
