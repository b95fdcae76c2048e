"""Servers and helpers for the integration tests: moto's S3 server and `airflow dags test` runs."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
S3_KEY = "testing"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server over HTTP: the one .ci/run started, else moto's in a thread."""
    url = os.environ.get("KTEXPORT_TEST_S3_ENDPOINT")
    if url:
        yield url
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket on the S3 server."""
    # Unique per call: the S3 server may outlive this test session (.ci/run shares one server).
    name = "it-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]") + "-" + uuid.uuid4().hex[:8]
    s3 = s3_client(s3_endpoint)
    s3.create_bucket(Bucket=name)
    return name


def s3_client(endpoint: str):
    """A boto3 S3 client for the test server."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_KEY,
        region_name="us-east-1",
    )


def s3_filesystem(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(
        key=S3_KEY, secret=S3_KEY, endpoint_url=endpoint, client_kwargs={"region_name": "us-east-1"}
    )


def _newest_dag_run(home: Path) -> int:
    con = sqlite3.connect(home / "airflow.db")
    try:
        return con.execute("SELECT COALESCE(MAX(id), 0) FROM dag_run").fetchone()[0]
    finally:
        con.close()


@dataclass
class DagRunResult:
    returncode: int
    output: str
    home: Path
    dag_id: str = ""
    after_dag_run: int = 0  # the newest dag_run id before this run: this run's rows come after it

    def asset_events(self, uri: str) -> list[dict]:
        """The extras of the Asset events this DAG recorded for ``uri`` (newest last).

        Keyed by the DAG: a worker's tests share one database, and another test's DAG may write
        to the same URI (an Iceberg namespace is named the same in several tests).
        """
        con = sqlite3.connect(self.home / "airflow.db")
        try:
            rows = con.execute(
                "SELECT e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id "
                "WHERE a.uri = ? AND e.source_dag_id = ? ORDER BY e.id",
                (uri, self.dag_id),
            ).fetchall()
        finally:
            con.close()
        return [json.loads(r[0]) if isinstance(r[0], str | bytes) else r[0] for r in rows]

    def xcom(self, task_id: str) -> object:
        """The task's return value, read from the run's SQLite database."""
        # Keyed by this run: the Airflow home (and its XComs) is shared by the whole session.
        con = sqlite3.connect(self.home / "airflow.db")
        try:
            row = con.execute(
                "SELECT x.value FROM xcom x JOIN dag_run r ON r.dag_id = x.dag_id AND r.run_id = x.run_id "
                "WHERE x.task_id = ? AND x.key = 'return_value' AND x.dag_id = ? AND r.id > ? "
                "ORDER BY r.id DESC LIMIT 1",
                (task_id, self.dag_id, self.after_dag_run),
            ).fetchone()
        finally:
            con.close()
        assert row is not None, f"no XCom return value for {task_id}"
        value = row[0]
        return json.loads(value) if isinstance(value, str | bytes) else value


@pytest.fixture
def run_dag(airflow_home: Path):
    """Run ``airflow dags test DAG_ID`` in a subprocess with the given connections and variables."""

    def run(
        dag_id: str,
        *,
        connections: dict[str, dict],
        variables: dict[str, str] | None = None,
        options: dict | None = None,
        dags_folder: Path | None = None,
        timeout: float = 600,
        env: dict[str, str] | None = None,
        conf: dict | None = None,
    ) -> DagRunResult:
        extra_env = env or {}
        env = dict(os.environ)
        env.update(extra_env)
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder or HERE / "dags")
        for conn_id, conn in connections.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        for key, value in (variables or {}).items():
            env[f"AIRFLOW_VAR_{key.upper()}"] = value
        env["KTEXPORT_IT_OPTIONS"] = json.dumps(options or {})
        # One stream, unbuffered, in the order written: Airflow 3.1 prints a task's log lines on
        # stdout and the "[DAG TEST] starting/end task" markers on stderr, and task_output() cuts
        # one task's lines out between its markers.
        env["PYTHONUNBUFFERED"] = "1"
        before = _newest_dag_run(airflow_home)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "airflow",
                "dags",
                "test",
                dag_id,
                *(["-c", json.dumps(conf)] if conf else []),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        return DagRunResult(proc.returncode, proc.stdout, airflow_home, dag_id, before)

    return run


def ktexport_conn(emulator, **extra) -> dict:
    return {
        "conn_type": "ktexport",
        "host": emulator.url,
        "password": emulator.api_key,
        "extra": {"long_poll_seconds": emulator.long_poll_seconds, **extra},
    }


def aws_conn(endpoint: str) -> dict:
    return {
        "conn_type": "aws",
        "login": S3_KEY,
        "password": S3_KEY,
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl): (certfile, keyfile)."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)
