"""KtExportSensor without servers: the hook's get_batch is replaced by a scripted fake."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from airflow.sdk import PokeReturnValue

from airflow_provider_ktexport.exceptions import (
    KtExportAuthError,
    KtExportConfigError,
    KtExportHTTPError,
    KtExportProtocolError,
    KtExportTransientError,
)
from airflow_provider_ktexport.hooks.ktexport import KtExportHook
from airflow_provider_ktexport.sensors.ktexport import KtExportSensor
from airflow_provider_ktexport.transport.sync_client import Batch
from airflow_provider_ktexport.triggers.ktexport import KtExportTrigger

try:
    from airflow.sdk.exceptions import AirflowSensorTimeout, AirflowSkipException, TaskDeferred
except ImportError:  # pragma: no cover - Airflow 3.1
    from airflow.exceptions import AirflowSensorTimeout, AirflowSkipException, TaskDeferred


def a_batch(n: int = 3, leased_ago: float = 0.0) -> Batch:
    return Batch(
        id="b-1", raw_items=[b'{"type":"x"}'] * n, leased_at=time.monotonic() - leased_ago, body_size=10
    )


@pytest.fixture
def answers(monkeypatch):
    """Script what KtExportHook.get_batch returns (or raises), in order; the last one repeats."""
    script: list = []
    calls: list[int] = []

    def fake_get_batch(self, **kwargs):
        calls.append(1)
        item = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(item, Exception):
            raise item
        return item

    monkeypatch.setattr(KtExportHook, "get_batch", fake_get_batch)
    monkeypatch.setattr(KtExportHook, "ack", lambda self, batch_id: pytest.fail("the sensor acknowledged"))

    def set_script(*items):
        script[:] = items
        return calls

    return set_script


def sensor(**kwargs) -> KtExportSensor:
    kwargs = {"deferrable": False, "lease_seconds": 120, "poke_interval": 0, "timeout": 5} | kwargs
    return KtExportSensor(task_id="wait_for_data", **kwargs)


def iso_epoch(text: str) -> float:
    parsed = datetime.fromisoformat(text)
    assert parsed.utcoffset().total_seconds() == 0
    return parsed.timestamp()


def test_poke_on_data_returns_the_lease_end_and_count_never_records(answers):
    answers(a_batch(4, leased_ago=20))
    result = sensor().poke({})
    assert isinstance(result, PokeReturnValue) and result.is_done
    assert set(result.xcom_value) == {"lease_ends_at", "record_count"}
    assert result.xcom_value["record_count"] == 4
    # The lease started 20 s ago: it ends 100 s from now, not 120.
    assert iso_epoch(result.xcom_value["lease_ends_at"]) == pytest.approx(time.time() + 100, abs=2)


def test_poke_on_empty_queue_is_not_done(answers):
    answers(None)
    assert not sensor().poke({})


def test_transient_error_means_not_yet(answers):
    answers(KtExportTransientError("503", status_code=503))
    assert not sensor().poke({})


def test_undecodable_batch_counts_as_data(answers):
    answers(KtExportProtocolError("junk", body=b"{", batch_id="b-7"))
    result = sensor().poke({})
    assert result.is_done
    assert result.xcom_value["record_count"] is None
    assert iso_epoch(result.xcom_value["lease_ends_at"]) == pytest.approx(time.time() + 120, abs=2)


def test_execute_waits_through_empty_answers(answers):
    calls = answers(None, None, a_batch(2))
    result = sensor().execute({})
    assert result["record_count"] == 2
    assert len(calls) == 3


def test_timeout_fails_and_soft_fail_skips(answers):
    answers(None)
    with pytest.raises(AirflowSensorTimeout):
        KtExportSensor(task_id="w", poke_interval=0.1, timeout=0.3, deferrable=False).execute({})
    with pytest.raises(AirflowSkipException):
        KtExportSensor(task_id="w", poke_interval=0.1, timeout=0.3, soft_fail=True, deferrable=False).execute(
            {}
        )


@pytest.mark.parametrize("deferrable", [False, True])
def test_auth_error_fails_at_once_even_with_soft_fail(answers, deferrable):
    calls = answers(KtExportAuthError("refused", status_code=401))
    started = time.monotonic()
    with pytest.raises(KtExportAuthError):
        sensor(soft_fail=True, deferrable=deferrable, timeout=60).execute({})
    assert len(calls) == 1
    assert time.monotonic() - started < 30


def test_other_http_errors_fail(answers):
    answers(KtExportHTTPError("404", status_code=404))
    with pytest.raises(KtExportHTTPError):
        sensor().execute({})


def test_deferrable_returns_at_once_when_the_first_poke_finds_data(answers):
    answers(a_batch(1))
    result = sensor(deferrable=True).execute({})
    assert result["record_count"] == 1


def test_deferrable_defers_to_the_trigger_with_the_conn_id_only(answers):
    answers(None)
    with pytest.raises(TaskDeferred) as info:
        sensor(deferrable=True, ktexport_conn_id="kt_prod", timeout=30).execute({})
    trigger = info.value.trigger
    assert isinstance(trigger, KtExportTrigger)
    _, kwargs = trigger.serialize()
    assert kwargs["ktexport_conn_id"] == "kt_prod"
    assert kwargs["lease_seconds"] == 120
    assert kwargs["timeout_at"] == pytest.approx(time.time() + 30, abs=5)
    assert info.value.method_name == "execute_complete"


def test_execute_complete_success_returns_the_xcom():
    event = {
        "status": "success",
        "lease_ends_at": "2024-05-01T12:02:00+00:00",
        "record_count": 9,
        "batch_id": "b",
    }
    assert sensor().execute_complete({}, event) == {
        "lease_ends_at": "2024-05-01T12:02:00+00:00",
        "record_count": 9,
    }


def test_execute_complete_raises_the_cause():
    with pytest.raises(KtExportAuthError):
        sensor().execute_complete(
            {}, {"status": "error", "cause": "auth", "status_code": 403, "message": "no"}
        )
    with pytest.raises(KtExportHTTPError):
        sensor().execute_complete(
            {}, {"status": "error", "cause": "http", "status_code": 404, "message": "x"}
        )
    with pytest.raises(AirflowSensorTimeout):
        sensor().execute_complete({}, {"status": "timeout", "message": "no data"})


def test_soft_fail_skips_a_deferred_timeout_but_not_an_auth_error():
    soft = sensor(soft_fail=True)
    with pytest.raises(AirflowSkipException):
        soft.resume_execution("execute_complete", {"event": {"status": "timeout", "message": "x"}}, {})
    with pytest.raises(KtExportAuthError):
        soft.resume_execution(
            "execute_complete",
            {"event": {"status": "error", "cause": "auth", "status_code": 401, "message": "refused"}},
            {},
        )


def test_deferrable_default_comes_from_config(monkeypatch):
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert KtExportSensor(task_id="a").deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert KtExportSensor(task_id="b").deferrable is False


def test_no_hook_or_connection_at_construction(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("connection read at DAG parse time")

    monkeypatch.setattr(KtExportHook, "get_connection", boom)
    KtExportSensor(task_id="parse_only", ktexport_conn_id="{{ var.value.kt }}")


def test_lease_is_templated_and_rendered_text_is_read_as_seconds(answers):
    assert "lease_seconds" in KtExportSensor.template_fields
    answers(a_batch(2, leased_ago=0))
    result = sensor(lease_seconds="5").poke({})  # "{{ params.lease_seconds }}" rendered
    assert iso_epoch(result.xcom_value["lease_ends_at"]) == pytest.approx(time.time() + 5, abs=2)
    answers(None)
    with pytest.raises(TaskDeferred) as info:
        sensor(deferrable=True, lease_seconds=" 7.5 ").execute({})
    assert info.value.trigger.serialize()[1]["lease_seconds"] == 7.5


@pytest.mark.parametrize("bad", ["five", "", "0", "-3"])
def test_a_lease_that_is_not_a_positive_number_fails_naming_it(answers, bad):
    answers(a_batch(1))
    with pytest.raises(KtExportConfigError, match="lease_seconds"):
        sensor(lease_seconds=bad).poke({})
