"""The API key never leaks, and TLS verification is on unless a connection turns it off.

Keys here contain ``+``, ``/`` and ``=`` so that their URL-encoded forms differ from the raw
ones; every scan looks for all forms. The engine is checked in this process with every logger
at DEBUG (urllib3 prints each request's URL there); Airflow is checked through one
``airflow dags test`` run of many tasks, scanning its output (3.3's ``dags test`` writes task
logs there, not to files), any files under ``$AIRFLOW_HOME/logs``, and the metadata database
(XCom, rendered template fields, trigger rows, next_kwargs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sqlite3
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from fsspec.implementations.local import LocalFileSystem

from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportConfigError,
    KtExportError,
    KtExportHTTPError,
    KtExportTransientError,
)
from airflow_provider_ktexport.hooks.ktexport import KtExportHook
from airflow_provider_ktexport.lake.writer import LakeWriter
from airflow_provider_ktexport.testing.emulator import Emulator
from airflow_provider_ktexport.transport.sync_client import KtExportClient
from airflow_provider_ktexport.triggers.ktexport import (
    AsyncProber,
    KtExportEventTrigger,
    KtExportTrigger,
    error_event,
)
from tests.integration.conftest import aws_conn, ktexport_conn
from tests.integration.test_faults import task_output

pytestmark = pytest.mark.integration

KEY = "kt-S3CRET+4f/9a=Zq"
OTHER_KEY = "kt-W7ONG+k3y/x=Yy"  # a key the server refuses: still a secret of the connection
LONG_POLL = 0.5


def key_forms(key: str) -> set[str]:
    """The raw key and the forms URL encoding gives it."""
    return {key, quote(key, safe=""), quote(key), quote_plus(key)}


def assert_no_key(text: str | bytes, where: str, keys: tuple[str, ...] = (KEY, OTHER_KEY)) -> None:
    haystack = text if isinstance(text, str) else text.decode("utf-8", "replace")
    for key in keys:
        for form in key_forms(key):
            assert form not in haystack, f"API key ({form!r}) found in {where}"


def exception_texts(exc: BaseException) -> str:
    """str, repr and the full formatted traceback (with every chained cause and context)."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["header", "query"])
def placement(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every logger: ours, requests', urllib3's, httpx's
    return caplog


#: Server-side loggers that run in this process: the emulator (its access log shows what the
#: client sent, key included) and moto's. They are the other end of the wire, not the provider.
_SERVER_LOGGERS = ("airflow_provider_ktexport.testing", "werkzeug")


def client_logs(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured log line of the client side, formatted with its arguments."""
    handler = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(handler.format(r) for r in caplog.records if not r.name.startswith(_SERVER_LOGGERS))


def client(url: str, placement: str, key: str = KEY, **kwargs: Any) -> KtExportClient:
    settings = {"long_poll_seconds": LONG_POLL, "max_retries": 2, "backoff_base": 0.05, "backoff_max": 0.5}
    return KtExportClient(url, key, auth_location=placement, **(settings | kwargs))


def run_drain(c: KtExportClient, lake: Path, **cfg: Any) -> Any:
    config = DrainConfig(**({"lease_seconds": 3, "flush_seconds": 1, "max_in_flight": 2} | cfg))
    with c:
        return Drain(c, LakeWriter(LocalFileSystem(), str(lake)), config).run()


# -- the engine, on its happy and error paths --------------------------------------------------------


def test_a_drain_through_every_server_fault_leaks_no_key(placement, debug_logs, tmp_path):
    lake = tmp_path / "lake"
    faults = dict.fromkeys(
        ("reset", "status_429", "status_502", "status_503", "status_504", "html_error", "truncated"), 0.08
    ) | {"invalid_utf8": 0.08, "reset_after_ack": 0.1, "retry_after": 0.1}
    with Emulator(api_key=KEY, lease_seconds=3, long_poll_seconds=LONG_POLL, batch_size=25, seed=2) as emu:
        emu.generate(300)
        emu.set_faults(**faults)
        result = run_drain(client(emu.url, placement, max_retries=10), lake)
        injected = emu.stats()["faults"]
    assert sum(injected.values()) >= 5 and result.records > 0, injected
    logs = client_logs(debug_logs)
    assert "token=***" in logs or placement == "header"  # urllib3's URL lines were there, masked
    assert_no_key(logs, "the logs")
    assert_no_key(json.dumps(result.summary()), "the run summary (XCom)")
    for f in lake.rglob("*"):
        if f.is_file():
            assert_no_key(f.read_bytes(), str(f))


def _refused(url: str, placement: str, lake: Path) -> BaseException:
    with pytest.raises(KtExportAuthError) as err:
        run_drain(client(url, placement, key=OTHER_KEY), lake)
    return err.value


ERROR_CASES = [
    "refused_key",
    "server_down",
    "retries_exhausted",
    "read_timeout",
    "tls_refused",
    "wrong_path",
    "redirect_carrying_the_key",
    "key_echoed_in_error_body",
    "key_echoed_in_401_body",
    "ack_error_echoing_the_key",
    "check_refused",
    "storage_failure",
]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_error_paths_leak_no_key(case, placement, debug_logs, tmp_path, tls_cert):
    lake = tmp_path / "lake"
    certfile, keyfile = tls_cert
    tls = case == "tls_refused"
    # The refused DELETE must be sent to be refused: a lease long enough that a loaded machine
    # still acks inside it (3 s ran out before the ack under load, and nothing was sent).
    lease = 60 if case == "ack_error_echoing_the_key" else 3
    with Emulator(
        api_key=KEY,
        lease_seconds=lease,
        long_poll_seconds=LONG_POLL,
        batch_size=25,
        certfile=certfile if tls else None,
        keyfile=keyfile if tls else None,
    ) as emu:
        emu.generate(50)
        url = emu.url
        expected: type[BaseException] = KtExportError
        kwargs: dict[str, Any] = {}
        if case == "refused_key":
            emu.api_key = OTHER_KEY + "-not"  # the connection's key is refused
            expected = KtExportAuthError
        elif case == "server_down":
            url, expected = f"http://127.0.0.1:{free_port()}", KtExportTransientError
        elif case == "retries_exhausted":
            emu.set_faults(status_503=1.0)
            expected = KtExportTransientError
        elif case == "read_timeout":
            emu.set_faults(slow=1.0, slow_seconds=2.0)
            kwargs, expected = {"read_timeout": 1.0, "max_retries": 0}, KtExportTransientError
        elif case == "tls_refused":
            expected = KtExportConfigError
        elif case == "wrong_path":
            url, expected = url + "/wrong/prefix", KtExportHTTPError
        elif case == "redirect_carrying_the_key":
            where = f"{emu.url}/elsewhere/v2/stream?token={quote_plus(KEY)}&x-access-token={KEY}"
            emu.script(302, b"", {"Location": where}, times=3)
            expected = KtExportHTTPError
        elif case == "key_echoed_in_error_body":
            emu.script(400, json.dumps({"error": f"bad request ?token={KEY} key={KEY}"}), times=3)
            expected = KtExportHTTPError
        elif case == "key_echoed_in_401_body":
            emu.script(401, json.dumps({"error": f"token {KEY} revoked"}), times=3)
            expected = KtExportAuthError
        elif case == "ack_error_echoing_the_key":
            emu.script(418, json.dumps({"error": f"no DELETE for {KEY}"}), times=10, method="DELETE")
        c = client(url, placement, **kwargs)
        if case == "check_refused":
            emu.api_key = "something-else"
            with pytest.raises(KtExportAuthError) as err:
                c.check()
            error: BaseException | None = err.value
        elif case == "storage_failure":
            lake.parent.mkdir(exist_ok=True)
            lake.write_text("a file where the lake directory should be")
            # Found by the destination check before any lease: a configuration error.
            with pytest.raises(KtExportConfigError) as err:
                run_drain(c, lake)
            error = err.value
        elif case == "ack_error_echoing_the_key":
            result = run_drain(c, lake, lease_seconds=lease)
            assert result.ack_failed > 0
            error = None
        else:
            with pytest.raises(expected) as err:
                run_drain(c, lake)
            error = err.value
        assert_no_key(repr(c), "repr(client)")
    if error is not None:
        assert_no_key(exception_texts(error), f"the exception ({type(error).__name__})")
    assert_no_key(client_logs(debug_logs), "the logs")


def test_hook_repr_and_test_connection_message_leak_no_key(placement, monkeypatch):
    with Emulator(api_key="server-side-key", long_poll_seconds=LONG_POLL) as emu:
        conn = {
            "conn_type": "ktexport",
            "host": emu.url,
            "password": KEY,
            "extra": {"auth_location": placement},
        }
        monkeypatch.setenv("AIRFLOW_CONN_KT_SEC", json.dumps(conn))
        hook = KtExportHook("kt_sec")
        ok, message = hook.test_connection()
        assert not ok and "refused the API key" in message
        assert_no_key(message, "test_connection's message")
        assert_no_key(repr(hook) + repr(hook.client), "repr(hook)")
        hook.close()


# -- triggers --------------------------------------------------------------------------------------


def test_trigger_kwargs_hold_the_connection_id_never_the_key(monkeypatch):
    conn = {"conn_type": "ktexport", "host": "http://127.0.0.1:9", "password": KEY}
    monkeypatch.setenv("AIRFLOW_CONN_KT_SEC", json.dumps(conn))
    for trigger in (
        KtExportTrigger(ktexport_conn_id="kt_sec", lease_seconds=5, timeout_at=time.time() + 5),
        KtExportEventTrigger(ktexport_conn_id="kt_sec", lease_seconds=5),
    ):
        classpath, kwargs = trigger.serialize()
        assert kwargs["ktexport_conn_id"] == "kt_sec"
        assert_no_key(classpath + json.dumps(kwargs) + repr(trigger), f"{type(trigger).__name__}.serialize()")


@pytest.mark.parametrize(
    "case", ["success", "refused_key", "server_down", "wrong_path", "transient_then_data"]
)
def test_trigger_events_and_logs_leak_no_key(case, placement, debug_logs, monkeypatch):
    # Airflow's logging config quiets httpx; open it, so its request lines (URL included) are seen.
    debug_logs.set_level(logging.DEBUG, logger="httpx")
    with Emulator(api_key=KEY, lease_seconds=3, long_poll_seconds=LONG_POLL) as emu:
        emu.generate(5)
        url = emu.url
        if case == "refused_key":
            emu.api_key = "something-else"
        elif case == "server_down":
            url = f"http://127.0.0.1:{free_port()}"
        elif case == "wrong_path":
            url += "/nope"
        elif case == "transient_then_data":
            emu.script(503, b"{}", {"Retry-After": "0.1", "Content-Type": "application/json"}, times=2)
        extra = {"auth_location": placement, "long_poll_seconds": LONG_POLL}
        conn = {"conn_type": "ktexport", "host": url, "password": KEY, "extra": extra}
        monkeypatch.setenv("AIRFLOW_CONN_KT_SEC", json.dumps(conn))
        trigger = KtExportTrigger(ktexport_conn_id="kt_sec", lease_seconds=3, timeout_at=time.time() + 2.5)

        async def first_event() -> Any:
            async for event in trigger.run():
                return event

        event = asyncio.run(first_event())
    assert event.payload["status"] == (
        "success" if case in ("success", "transient_then_data") else "error"
    ) or (case == "server_down" and event.payload["status"] == "timeout"), event.payload
    assert_no_key(json.dumps(event.payload), "the trigger event")
    logs = client_logs(debug_logs)
    assert_no_key(logs, "the triggerer's logs")
    if placement == "query" and case != "server_down":
        assert "token=***" in logs  # httpx's request lines were there, masked by our filter


# -- TLS ---------------------------------------------------------------------------------------------


CA_ENVS = ("no-ca-env", "REQUESTS_CA_BUNDLE-set")


def set_ca_env(monkeypatch: pytest.MonkeyPatch, ca_env: str) -> None:
    """With or without the environment's CA bundle variable (set in many images and CI runners)."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    if ca_env != "no-ca-env":
        import certifi

        monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())


def _tls_cases(cases: list[tuple[Any, bool, str]]) -> list[Any]:
    """Each case under each CA environment (a set REQUESTS_CA_BUNDLE must not override the extra)."""
    return [
        pytest.param(
            env,
            value,
            accepted,
            id=f"{case_id}-{env}",
        )
        for env in CA_ENVS
        for value, accepted, case_id in cases
    ]


@pytest.mark.parametrize(
    ("ca_env", "verify", "accepted"),
    _tls_cases([(True, False, "default"), (False, True, "off"), ("ca", True, "ca-bundle")]),
)
def test_tls_verification_is_on_by_default_and_only_the_client_setting_turns_it_off(
    tls_cert, monkeypatch, ca_env, verify, accepted
):
    certfile, keyfile = tls_cert
    set_ca_env(monkeypatch, ca_env)
    with Emulator(api_key=KEY, long_poll_seconds=LONG_POLL, certfile=certfile, keyfile=keyfile) as emu:
        emu.generate(5)
        assert emu.url.startswith("https://")
        with client(emu.url, "header", verify=certfile if verify == "ca" else verify) as c:
            if accepted:
                assert len(c.get_batch()) == 5
            else:
                with pytest.raises(KtExportConfigError, match="TLS certificate verification failed"):
                    c.get_batch()
                assert emu.stats()["requests"] == 0  # refused at the handshake: no request, no key sent


@pytest.mark.parametrize(
    ("ca_env", "extra", "accepted"),
    _tls_cases(
        [
            ({}, False, "default"),
            ({"verify": "true"}, False, "true"),
            ({"verify": "false"}, True, "false-text"),
            ({"verify": False}, True, "false"),
            ("ca", True, "ca-path"),
        ]
    ),
)
def test_connection_extra_verify_decides_tls(tls_cert, monkeypatch, ca_env, extra, accepted):
    certfile, keyfile = tls_cert
    set_ca_env(monkeypatch, ca_env)
    if extra == "ca":
        extra = {"verify": certfile}
    with Emulator(api_key=KEY, long_poll_seconds=LONG_POLL, certfile=certfile, keyfile=keyfile) as emu:
        emu.generate(5)
        conn = {
            "conn_type": "ktexport",
            "host": emu.url,
            "password": KEY,
            "extra": {"long_poll_seconds": LONG_POLL, **extra},
        }
        monkeypatch.setenv("AIRFLOW_CONN_KT_TLS", json.dumps(conn))
        hook = KtExportHook("kt_tls")
        try:
            if accepted:
                assert hook.get_batch() is not None
            else:
                with pytest.raises(KtExportConfigError, match="TLS certificate verification failed"):
                    hook.get_batch()
        finally:
            hook.close()


def test_the_trigger_refuses_a_self_signed_server_by_default(tls_cert):
    certfile, keyfile = tls_cert
    with Emulator(api_key=KEY, long_poll_seconds=LONG_POLL, certfile=certfile, keyfile=keyfile) as emu:
        emu.generate(5)
        settings = {"base_url": emu.url, "api_key": KEY, "long_poll_seconds": LONG_POLL}

        async def probe(verify: Any) -> Any:
            async with AsyncProber({**settings, "verify": verify}, lease_seconds=3) as prober:
                return await prober.wait_for_data(deadline=time.time() + 1.5)

        try:
            refused = asyncio.run(probe(True))
        except KtExportError:
            refused = None
        assert refused is None and emu.stats()["served"] == 0  # no data through an unverified link
        assert asyncio.run(probe(False)).record_count == 5


def test_the_trigger_fails_fast_with_a_tls_message_on_an_untrusted_certificate(tls_cert):
    certfile, keyfile = tls_cert
    with Emulator(api_key=KEY, long_poll_seconds=LONG_POLL, certfile=certfile, keyfile=keyfile) as emu:
        settings = {"base_url": emu.url, "api_key": KEY, "long_poll_seconds": LONG_POLL}

        async def probe() -> Any:
            async with AsyncProber(settings, lease_seconds=3) as prober:
                return await prober.wait_for_data(deadline=time.time() + 2)

        with pytest.raises(KtExportConfigError, match="TLS certificate verification failed") as err:
            asyncio.run(probe())
    assert error_event(err.value)["cause"] == "config"


# -- Airflow: logs, XCom, rendered fields, trigger rows --------------------------------------------

_SECURITY_DAG = '''
"""Generated by tests/integration/test_security.py: every task uses a connection holding a secret."""
import json, os
import pendulum
from airflow.sdk import dag
from airflow_provider_ktexport.operators.ktexport import KtExportToParquetOperator
from airflow_provider_ktexport.sensors.ktexport import KtExportSensor

OPTIONS = json.loads(os.environ["KTEXPORT_IT_OPTIONS"])

@dag(dag_id="ktexport_security", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"))
def ktexport_security():
    for name, spec in OPTIONS["drains"].items():
        KtExportToParquetOperator(
            task_id=name, ktexport_conn_id=spec["conn_id"], destination=spec["destination"],
            lease_seconds=6, flush_seconds=2, retries=0,
        )
    for name, conn_id in OPTIONS["sensors"].items():
        KtExportSensor(
            task_id=name, ktexport_conn_id=conn_id, lease_seconds=6, deferrable=True,
            poke_interval=1, timeout=20, retries=0,
        )

ktexport_security()
'''


def test_airflow_logs_xcom_rendered_fields_and_trigger_rows_hold_no_key(
    run_dag, tmp_path, tls_cert, s3_endpoint, monkeypatch
):
    certfile, keyfile = tls_cert
    set_ca_env(monkeypatch, "no-ca-env")  # the CA-bundle variables have their own tests
    faults = {"reset": 0.1, "status_503": 0.1, "status_429": 0.1, "retry_after": 0.1, "truncated": 0.1}
    emus = {
        "plain": Emulator(
            api_key=KEY, lease_seconds=6, long_poll_seconds=LONG_POLL, batch_size=40, faults=faults
        ),
        "tls": Emulator(
            api_key=KEY, lease_seconds=6, long_poll_seconds=LONG_POLL, certfile=certfile, keyfile=keyfile
        ),
        "sensor_h": Emulator(api_key=KEY, lease_seconds=6, long_poll_seconds=LONG_POLL),
        "sensor_q": Emulator(api_key=KEY, lease_seconds=6, long_poll_seconds=LONG_POLL),
        "sensor_404": Emulator(api_key=KEY, lease_seconds=6, long_poll_seconds=LONG_POLL),
        "bucket": Emulator(api_key=KEY, lease_seconds=6, long_poll_seconds=LONG_POLL),
    }
    for emu in emus.values():
        emu.start()
    try:
        emus["plain"].generate(400)
        emus["tls"].generate(20)
        emus["bucket"].generate(20)
        for name in ("sensor_h", "sensor_q", "sensor_404"):
            emus[name].generate(10)
            # The sensor's own first probe finds nothing, so it defers and the trigger takes over.
            emus[name].script(500, b'{"error":"No data available"}')
        emus["sensor_q"].script(503, b"{}", {"Retry-After": "0.2", "Content-Type": "application/json"})
        emus["sensor_404"].script(404, b'{"error":"no such resource"}')

        def conn(emu: Emulator, placement: str, key: str = KEY, **extra: Any) -> dict:
            c = ktexport_conn(emu, auth_location=placement, max_retries=2, **extra)
            c["password"] = key
            return c

        plain, tls = emus["plain"], emus["tls"]
        down = {"conn_type": "ktexport", "host": f"http://127.0.0.1:{free_port()}", "password": KEY}
        down["extra"] = {"auth_location": "query", "max_retries": 1, "long_poll_seconds": LONG_POLL}
        connections = {
            "kt_header": conn(plain, "header"),
            "kt_query": conn(plain, "query"),
            "kt_query_refused": conn(plain, "query", key=OTHER_KEY),
            "kt_query_down": down,
            "kt_tls_default": conn(tls, "query"),
            "kt_tls_off": conn(tls, "header", verify=False),
            "kt_sensor_header": conn(emus["sensor_h"], "header"),
            "kt_sensor_query": conn(emus["sensor_q"], "query"),
            "kt_sensor_404": conn(emus["sensor_404"], "query"),
            "kt_bucket_query": conn(emus["bucket"], "query"),
            "aws_default": aws_conn(s3_endpoint),
        }
        lake = (tmp_path / "lake").as_uri()
        drains = {
            "drain_header": ("kt_header", lake),
            "drain_query": ("kt_query", lake),
            "drain_query_refused": ("kt_query_refused", lake),
            "drain_query_server_down": ("kt_query_down", lake),
            "drain_query_tls_default": ("kt_tls_default", lake),
            "drain_tls_verify_off": ("kt_tls_off", lake),
            "drain_query_missing_bucket": (
                "kt_bucket_query",
                "s3://aws_default@no-such-bucket-ktexport/lake",
            ),
        }
        options = {
            "drains": {name: {"conn_id": c, "destination": d} for name, (c, d) in drains.items()},
            "sensors": {
                "sensor_header": "kt_sensor_header",
                "sensor_query": "kt_sensor_query",
                "sensor_query_404": "kt_sensor_404",
            },
        }
        dags = tmp_path / "dags"
        dags.mkdir()
        (dags / "security.py").write_text(_SECURITY_DAG)
        result = run_dag("ktexport_security", connections=connections, options=options, dags_folder=dags)
    finally:
        for emu in emus.values():
            emu.stop()

    states = _task_states(result.home, "ktexport_security")
    expected = {
        "drain_header": "success",
        "drain_query": "success",
        "drain_tls_verify_off": "success",
        "sensor_header": "success",
        "sensor_query": "success",
        "drain_query_refused": "failed",
        "drain_query_server_down": "failed",
        "drain_query_tls_default": "failed",
        "drain_query_missing_bucket": "failed",
        "sensor_query_404": "failed",
    }
    assert states == expected, result.output[-6000:]
    for sensor in ("sensor_header", "sensor_query"):  # they deferred: the trigger found the data
        assert "KtExportTrigger" in task_output(result.output, sensor), sensor
    assert "answered HTTP 404" in task_output(result.output, "sensor_query_404")  # the trigger's error event
    assert "TLS certificate verification failed" in result.output  # verification on by default
    assert emus["tls"].stats()["acked"] > 0  # ... and off only where the connection says so

    assert_no_key(result.output, "airflow dags test output (the task logs)")
    for f in (result.home / "logs").rglob("*"):
        if f.is_file():
            assert_no_key(f.read_bytes(), str(f))
    db = sqlite3.connect(result.home / "airflow.db")
    try:
        xcoms = db.execute("SELECT task_id, value FROM xcom WHERE dag_id = 'ktexport_security'").fetchall()
        rendered = db.execute(
            "SELECT task_id, rendered_fields FROM rendered_task_instance_fields WHERE dag_id = 'ktexport_security'"
        ).fetchall()
        ti_rows = db.execute("SELECT * FROM task_instance WHERE dag_id = 'ktexport_security'").fetchall()
        triggers = db.execute("SELECT classpath, kwargs FROM trigger").fetchall()
    finally:
        db.close()
    assert {t for t, _ in xcoms} >= {"drain_header", "drain_query", "sensor_header", "sensor_query"}
    assert rendered, "no rendered template fields recorded"
    assert_no_key(repr(xcoms), "XCom")
    assert_no_key(repr(rendered), "rendered template fields")
    assert_no_key(repr(ti_rows), "task_instance rows (next_kwargs, ...)")
    assert_no_key(repr(triggers), "trigger rows")
    for suffix in ("", "-wal", "-journal"):  # and anywhere else in the metadata database
        path = result.home / f"airflow.db{suffix}"
        if path.exists():
            assert_no_key(path.read_bytes(), path.name)


def _task_states(home: Path, dag_id: str) -> dict[str, str]:
    db = sqlite3.connect(home / "airflow.db")
    try:
        rows = db.execute(
            "SELECT ti.task_id, ti.state FROM task_instance ti JOIN dag_run dr "
            "ON ti.dag_id = dr.dag_id AND ti.run_id = dr.run_id "
            "WHERE ti.dag_id = ? AND dr.id = (SELECT max(id) FROM dag_run WHERE dag_id = ?)",
            (dag_id, dag_id),
        ).fetchall()
    finally:
        db.close()
    return dict(rows)
