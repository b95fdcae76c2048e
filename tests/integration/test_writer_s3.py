"""LakeWriter against an S3-compatible server (moto in server mode, over HTTP on loopback)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import pyarrow as pa
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from airflow_provider_ktexport.exceptions import KtExportWriteError
from airflow_provider_ktexport.lake.schema import build_tables
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table

pytestmark = pytest.mark.integration

BUCKET = "ktexport-lake"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


@pytest.fixture
def fs(endpoint: str) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        endpoint_url=endpoint, key="testing", secret="testing", client_kwargs={"region_name": "us-east-1"}
    )


def test_write_verify_and_read_back(fs: s3fs.S3FileSystem) -> None:
    writer = LakeWriter(fs, f"s3://{BUCKET}/lake", writer_id="w1", uri_prefix=f"s3://{BUCKET}/lake")
    records = [
        {"type": "telemetry", "date": "2026-11-25T10:11:12Z", "location": {"speed": 5}},
        {"type": "telemetry", "date": "2026-11-25T10:12:00Z", "location": {"speed": "n/a"}},
        {"type": "event", "eventDate": "2026-11-24T00:00:00Z", "details": {"asset": {"id": 1}}},
    ]
    parts = build_tables(
        [json.dumps(r).encode() for r in records],
        ["b1", "b1", "b2"],
        source="conn",
        ingested_at=datetime.now(UTC),
        known_schema=writer.load_schema,
    )
    written = [writer.write(p.table, p.partition) for p in parts]
    assert {w.uri.rsplit("/", 1)[0] for w in written} == {
        f"s3://{BUCKET}/lake/record_type=telemetry/event_date=2026-11-25",
        f"s3://{BUCKET}/lake/record_type=event/event_date=2026-11-24",
    }
    for w in written:
        assert fs.info(w.path)["size"] == w.bytes
    assert fs.find(f"{BUCKET}/lake/_schema/telemetry/columns")  # one file per published column
    table = read_lake_table(fs, f"{BUCKET}/lake")
    assert table.num_rows == 3
    assert sorted(v for v in table.column("location__speed").to_pylist() if v) == ["5", "n/a"]
    assert writer.load_schema("telemetry").field("location__speed").type == pa.string()
    q = writer.quarantine(b"not json", reason="bad", batch_id="b9")
    assert q.startswith(f"s3://{BUCKET}/lake/_quarantine/") and fs.cat_file(q) == b"not json"


def test_missing_bucket_raises_write_error_naming_it(fs: s3fs.S3FileSystem) -> None:
    writer = LakeWriter(fs, "s3://no-such-bucket-xyz/lake", writer_id="w1")
    writer._published["t"] = pa.schema([("a", pa.int64())])  # schema already published: the data PUT fails
    with pytest.raises(KtExportWriteError) as err:
        writer.write(pa.table({"a": [1]}), {"record_type": "t"})
    assert "no-such-bucket-xyz" in err.value.destination
    assert "no-such-bucket-xyz" in str(err.value)
    with pytest.raises(KtExportWriteError, match="no-such-bucket-xyz"):
        LakeWriter(fs, "s3://no-such-bucket-xyz/lake").write(pa.table({"a": [1]}), {"record_type": "t"})
