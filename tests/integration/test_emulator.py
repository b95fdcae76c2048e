"""The export API emulator over real HTTP: leases, long poll, auth, transport, faults, CLI."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import requests

from airflow_provider_ktexport.testing import FAULT_NAMES, Emulator
from airflow_provider_ktexport.testing.records import HOSTILE_KINDS
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.emulator(lease_seconds=1, long_poll_seconds=0.5, batch_size=10, seed=1),
]

KEY = "test-key"
HDR = {"x-access-token": KEY}
T = 5  # seconds: every request's client-side timeout


@pytest.fixture
def emu(emulator: Emulator) -> Emulator:
    """The shared ``emulator`` fixture under this module's short name."""
    return emulator


def _get(e: Emulator, session: requests.Session | None = None, **kw) -> requests.Response:
    return (session or requests).get(e.url + "/v2/stream", headers=kw.pop("headers", HDR), timeout=T, **kw)


def _ack(e: Emulator, batch_id: str, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).delete(f"{e.url}/v2/stream/{batch_id}", headers=HDR, timeout=T)


def _seqs(resp: requests.Response) -> list[int]:
    return [item["emulator_seq"] for item in resp.json()["items"]]


# -- lease and ack ---------------------------------------------------------------------------


def test_get_leases_a_batch_and_delete_removes_it(emu: Emulator) -> None:
    emu.generate(25)
    r = _get(emu)
    assert r.status_code == 200
    body = r.json()
    assert isinstance(body["id"], str) and len(body["id"]) == 32
    assert _seqs(r) == list(range(1, 11))
    assert emu.stats()["leased"] == 1 and emu.stats()["queued"] == 15

    assert _ack(emu, body["id"]).status_code == 200
    stats = emu.stats()
    assert (stats["acked"], stats["acked_records"], stats["leased"]) == (1, 10, 0)
    assert emu.acked_seqs() == list(range(1, 11))

    again = _ack(emu, body["id"])
    assert again.status_code == 500
    assert emu.stats()["ack_unknown"] == 1


def test_unacked_batch_comes_back_under_a_new_id(emu: Emulator) -> None:
    emu.generate(10)
    first = _get(emu)
    wait_until(lambda: emu.stats()["leased"] == 0)  # the sweeper expires it with nobody asking
    assert emu.stats()["queued"] == 10
    second = _get(emu)
    assert second.status_code == 200
    assert second.json()["id"] != first.json()["id"]
    assert set(_seqs(second)) <= set(_seqs(first))
    assert emu.stats()["redelivered"] == len(_seqs(second))
    assert _ack(emu, first.json()["id"]).status_code == 500  # the old id is gone
    delivered = emu.delivered_seqs()
    assert len(delivered) > len(set(delivered))


def test_expired_lease_wakes_a_waiting_long_poll() -> None:
    with Emulator(lease_seconds=0.5, long_poll_seconds=10, seed=1) as e:
        e.generate(3)
        first = _get(e)
        started = time.monotonic()
        second = requests.get(e.url + "/v2/stream", headers=HDR, timeout=20)
        assert second.status_code == 200
        assert sorted(_seqs(second)) == sorted(_seqs(first))
        assert time.monotonic() - started < 8  # well before the long poll ends


def test_acked_records_never_return(emu: Emulator) -> None:
    emu.generate(30)
    seen: list[int] = []
    while (r := _get(emu)).status_code == 200:
        seen += _seqs(r)
        assert _ack(emu, r.json()["id"]).status_code == 200
    assert sorted(seen) == list(range(1, 31))
    assert r.status_code == 500
    assert emu.stats()["redelivered"] == 0


def test_feed_builds_records_lazily_in_order() -> None:
    with Emulator(batch_size=500, long_poll_seconds=0.2) as e:
        e.feed(1200)
        assert e.stats()["queued"] == 1200 and e.stats()["emitted"] == 1200
        r = _get(e)
        assert _seqs(r) == list(range(1, 501))
        assert e.stats()["queued"] == 700


# -- long poll ---------------------------------------------------------------------------------


def test_long_poll_answers_as_soon_as_data_arrives() -> None:
    with Emulator(long_poll_seconds=20) as e:
        timer = threading.Timer(0.3, e.generate, args=(5,))
        timer.start()
        started = time.monotonic()
        r = requests.get(e.url + "/v2/stream", headers=HDR, timeout=30)
        assert r.status_code == 200 and len(r.json()["items"]) == 5
        assert time.monotonic() - started < 10


def test_empty_queue_answers_500_after_the_long_poll(emu: Emulator) -> None:
    started = time.monotonic()
    r = _get(emu)
    assert r.status_code == 500
    assert "error" in r.json()
    assert time.monotonic() - started >= 0.4
    assert emu.stats()["empty_polls"] == 1


def test_stop_wakes_a_held_long_poll() -> None:
    e = Emulator(long_poll_seconds=30).start()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(_get(e).status_code))
    t.start()
    wait_until(lambda: e.stats()["requests"] == 1)  # the GET is in, held by the long poll
    e.stop()
    t.join(10)
    assert result == [500]


# -- auth ----------------------------------------------------------------------------------------


def test_key_in_header_or_query(emu: Emulator) -> None:
    emu.generate(20)
    assert _get(emu).status_code == 200
    assert _get(emu, headers={}, params={"token": KEY}).status_code == 200


def test_access_log_keeps_the_query_key_out(emu: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    emu.generate(5)
    with caplog.at_level("DEBUG", logger="airflow_provider_ktexport.testing.emulator"):
        assert _get(emu, headers={}, params={"token": KEY}).status_code == 200
        wait_until(lambda: any("GET /v2/stream" in r.getMessage() for r in caplog.records))
    lines = [r.getMessage() for r in caplog.records if "GET /v2/stream" in r.getMessage()]
    assert lines and all("token=***" in line for line in lines)
    assert KEY not in caplog.text


@pytest.mark.parametrize(
    ("headers", "params"),
    [({}, {}), ({"x-access-token": "wrong"}, {}), ({}, {"token": "wrong"}), ({"authorization": KEY}, {})],
)
def test_missing_or_wrong_key_is_401(emu: Emulator, headers: dict, params: dict) -> None:
    emu.generate(5)
    r = _get(emu, headers=headers, params=params)
    assert r.status_code == 401
    assert "error" in r.json()
    d = requests.delete(emu.url + "/v2/stream/abc", headers=headers, params=params, timeout=T)
    assert d.status_code == 401
    assert emu.stats()["leased"] == 0


# -- transport -----------------------------------------------------------------------------------


def test_gzip_when_asked_only(emu: Emulator) -> None:
    emu.generate(20)
    zipped = _get(emu, headers={**HDR, "accept-encoding": "gzip"}, stream=True)
    assert zipped.headers["content-encoding"] == "gzip"
    raw_len = int(zipped.headers["content-length"])
    plain_body = zipped.content  # requests decodes it
    assert raw_len < len(plain_body)
    assert json.loads(plain_body)["items"]
    plain = _get(emu, headers={**HDR, "accept-encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.json()["items"]
    assert emu.stats()["gzip_responses"] == 1


def test_keep_alive_reuses_one_connection(emu: Emulator) -> None:
    emu.generate(40)
    with requests.Session() as s:
        for _ in range(3):
            r = _get(emu, s)
            assert _ack(emu, r.json()["id"], s).status_code == 200
        assert _get(emu, s, headers={}, params={"token": "bad"}).status_code == 401
    assert emu.stats()["requests"] == 7
    assert emu.stats()["connections"] == 1


def test_tls(tmp_path: Path) -> None:
    if not shutil.which("openssl"):
        pytest.skip("openssl not available to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with Emulator(certfile=str(cert), keyfile=str(key), long_poll_seconds=0.2) as e:
        assert e.url.startswith("https://")
        e.generate(3)
        r = requests.get(e.url + "/v2/stream", headers=HDR, timeout=T, verify=str(cert))
        assert r.status_code == 200 and len(r.json()["items"]) == 3
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(e.url + "/v2/stream", headers=HDR, timeout=T)


# -- faults ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "ctype"),
    [
        ("status_429", 429, "application/json"),
        ("status_502", 502, "application/json"),
        ("status_503", 503, "application/json"),
        ("status_504", 504, "application/json"),
        ("html_error", 502, "text/html"),
    ],
)
def test_status_faults_lease_nothing(emu: Emulator, fault: str, status: int, ctype: str) -> None:
    emu.generate(5)
    emu.set_faults(**{fault: 1.0})
    r = _get(emu)
    assert r.status_code == status
    assert r.headers["content-type"].startswith(ctype)
    stats = emu.stats()
    assert (stats["leased"], stats["queued"], stats["faults"][fault]) == (0, 5, 1)
    emu.set_faults(**{fault: 0.0})
    assert _get(emu).status_code == 200


def test_429_carries_retry_after(emu: Emulator) -> None:
    emu.set_faults(status_429=1.0)
    assert _get(emu).headers["retry-after"] == "1"
    emu.set_faults(retry_after=7)
    assert _get(emu).headers["retry-after"] == "7"


def test_reset_closes_without_answer(emu: Emulator) -> None:
    emu.generate(5)
    emu.set_faults(reset=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        _get(emu)
    assert emu.stats()["leased"] == 0 and emu.stats()["queued"] == 5


def test_truncated_body_still_leases_and_is_redelivered(emu: Emulator) -> None:
    emu.generate(5)
    emu.set_faults(truncated=1.0)
    r = _get(emu)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.content)
    assert emu.stats()["leased"] == 1
    emu.set_faults(truncated=0.0)
    wait_until(lambda: emu.stats()["leased"] == 0)
    assert sorted(_seqs(_get(emu))) == [1, 2, 3, 4, 5]


def test_invalid_utf8_body_still_leases(emu: Emulator) -> None:
    emu.generate(5)
    emu.set_faults(invalid_utf8=1.0)
    r = _get(emu)
    assert r.status_code == 200
    assert r.content.startswith(b'{"id":"')
    with pytest.raises(UnicodeDecodeError):
        r.content.decode("utf-8")
    assert emu.stats()["leased"] == 1


def test_slow_answer_times_out_the_client_and_the_batch_comes_back(emu: Emulator) -> None:
    emu.generate(5)
    emu.set_faults(slow=1.0, slow_seconds=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(emu.url + "/v2/stream", headers=HDR, timeout=(T, 0.2))
    emu.set_faults(slow=0.0)
    wait_until(lambda: emu.stats()["leased"] == 0 and emu.stats()["queued"] == 5)


def test_faults_apply_to_delete_too_and_keep_the_lease(emu: Emulator) -> None:
    emu.generate(5)
    batch_id = _get(emu).json()["id"]
    emu.set_faults(status_503=1.0)
    assert _ack(emu, batch_id).status_code == 503
    emu.set_faults(status_503=0.0)
    assert _ack(emu, batch_id).status_code == 200


def test_reset_after_ack_applies_the_ack(emu: Emulator) -> None:
    emu.generate(5)
    batch_id = _get(emu).json()["id"]
    emu.set_faults(reset_after_ack=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        _ack(emu, batch_id)
    assert emu.stats()["acked"] == 1
    assert _ack(emu, batch_id).status_code == 500  # the retry finds it gone


def test_latency_is_added(emu: Emulator) -> None:
    emu.generate(5)
    emu.set_faults(latency_ms=300)
    started = time.monotonic()
    assert _get(emu).status_code == 200
    assert time.monotonic() - started >= 0.25


def test_faults_are_deterministic_with_a_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with Emulator(
            seed=seed, batch_size=1, long_poll_seconds=0.05, faults={"status_503": 0.5, "status_429": 0.2}
        ) as e:
            e.generate(200)
            return [_get(e).status_code for _ in range(20)]

    a = statuses(3)
    assert a == statuses(3)
    assert {503, 200} <= set(a)


def test_unknown_fault_name_is_refused(emu: Emulator) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        emu.set_faults(status_500=1.0)
    with pytest.raises(ValueError):
        emu.set_faults(reset=2)


def test_every_fault_can_be_set_from_the_constructor() -> None:
    e = Emulator(faults=dict.fromkeys(FAULT_NAMES, 0.25))
    assert all(e.set_faults()[name] == 0.25 for name in FAULT_NAMES)


# -- scripted responses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"items":[{"a":1}]}', b'{"id":"x","items":[]}', b'{"id":"x","items":{}}', b'{"id":"x","items":[1]}',
     b'{"id":"x","items":[' + b"[" * 50 + b"]" * 50 + b"]}"],
)  # fmt: skip
def test_scripted_responses_come_first_then_normal_service(emu: Emulator, body: bytes) -> None:
    emu.generate(5)
    emu.script(200, body, times=2)
    assert _get(emu).content == body
    assert _get(emu).content == body
    assert _get(emu).json()["items"]
    assert emu.stats()["served"] == 1  # the scripted answers leased nothing


def test_scripted_response_can_lease_and_name_the_batch(emu: Emulator) -> None:
    emu.generate(3)
    emu.script(200, b'{"id":"$ID","items":"oops"}', lease=True)
    r = _get(emu)
    batch_id = r.json()["id"]
    assert r.json()["items"] == "oops"
    assert emu.stats()["leased"] == 1
    assert _ack(emu, batch_id).status_code == 200
    assert emu.acked_seqs() == [1, 2, 3]


def test_scripted_headers_and_status(emu: Emulator) -> None:
    emu.script(403, "forbidden", {"Content-Type": "text/plain", "X-Test": "1"})
    r = _get(emu)
    assert (r.status_code, r.text, r.headers["x-test"]) == (403, "forbidden", "1")


# -- on_ack --------------------------------------------------------------------------------------------


def test_on_ack_sees_the_records_and_can_veto(emu: Emulator) -> None:
    emu.generate(4)
    batch_id = _get(emu).json()["id"]
    calls: list[tuple[str, list[int]]] = []

    def refuse(bid: str, records: list[dict]) -> None:
        calls.append((bid, [r["emulator_seq"] for r in records]))
        raise AssertionError("not in the lake yet")

    emu.on_ack = refuse
    assert _ack(emu, batch_id).status_code == 500
    assert calls == [(batch_id, [1, 2, 3, 4])]
    stats = emu.stats()
    assert (stats["acked"], stats["leased"], stats["ack_vetoed"]) == (0, 1, 1)

    emu.on_ack = lambda bid, records: calls.append((bid, []))
    assert _ack(emu, batch_id).status_code == 200
    assert emu.stats()["acked"] == 1


# -- control plane -----------------------------------------------------------------------------------------


def test_control_plane_needs_no_key(emu: Emulator) -> None:
    r = requests.post(
        emu.url + "/_emulator/records", json=[{"type": "x"}, {"type": "y", "emulator_seq": 99}], timeout=T
    )
    assert r.json() == {"enqueued": 2}
    assert requests.post(emu.url + "/_emulator/generate", json={"n": 8}, timeout=T).json() == {"generated": 8}
    faults = requests.post(emu.url + "/_emulator/faults", json={"status_502": 0.5}, timeout=T).json()
    assert faults["status_502"] == 0.5
    assert (
        requests.post(emu.url + "/_emulator/faults", json={"clear": True}, timeout=T).json()["status_502"]
        == 0
    )
    assert requests.post(emu.url + "/_emulator/faults", json={"nope": 1}, timeout=T).status_code == 400

    r = _get(emu)
    assert _seqs(r)[:2] == [1, 99]
    stats = requests.get(emu.url + "/_emulator/stats", timeout=T).json()
    assert stats == emu.stats()
    for key in ("served", "leased", "queued", "emitted", "acked", "acked_records", "redelivered",
                "ack_unknown", "requests", "connections", "gzip_responses"):  # fmt: skip
        assert key in stats
    assert (stats["emitted"], stats["served"], stats["queued"]) == (10, 1, 0)
    seqs = requests.get(emu.url + "/_emulator/seqs", timeout=T).json()
    assert seqs["delivered"] == _seqs(r) and seqs["acked"] == []


def test_unknown_paths_and_methods(emu: Emulator) -> None:
    assert requests.get(emu.url + "/v1/stream", headers=HDR, timeout=T).status_code == 404
    assert requests.post(emu.url + "/v2/stream", headers=HDR, timeout=T).status_code == 405
    assert requests.get(emu.url + "/_emulator/nothing", timeout=T).status_code == 404


# -- CLI -----------------------------------------------------------------------------------------------------


def test_cli_serves_on_a_free_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    env = {**os.environ, "KTEXPORT_EMULATOR_KEY": "cli-test-key"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_ktexport.testing.emulator", "--port", "0",
         "--port-file", str(port_file), "--records", "30", "--batch-size", "20", "--long-poll-seconds", "0.2",
         "--fault-status-503", "0", "--poison", "0.5", "--poison-kinds", "deep_list,lone_surrogate"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        wait_until(port_file.exists, 20)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        r = requests.get(url + "/v2/stream", headers={"x-access-token": "cli-test-key"}, timeout=T)
        assert r.status_code == 200 and len(r.json()["items"]) == 20
        assert requests.get(url + "/v2/stream", headers=HDR, timeout=T).status_code == 401
        hostile = requests.get(url + "/_emulator/hostile", timeout=T).json()
        assert hostile and {h["kind"] for h in hostile} <= {"deep_list", "lone_surrogate"}
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"ktexport-emulator listening on {url}" in out.splitlines()


# -- poison and envelope modes ---------------------------------------------------------------------


def _split(body: bytes) -> tuple[str, list[bytes]]:
    """The id and raw record texts of a served body, split without a JSON parser (some records
    are deeper than Python's json can read)."""
    from airflow_provider_ktexport.api.scan import scan  # the reader's splitter, not the emulator's

    found = scan(body)
    assert found.error is None and found.items is not None, found.error
    return json.loads(dict(found.keys)["id"]), found.items


def test_poison_mode_serves_each_hostile_kind_and_knows_their_exact_bytes() -> None:
    with Emulator(batch_size=100, long_poll_seconds=0.1, seed=3, poison=0.2) as e:
        ordinary = e.generate(120)
        e.feed(80)  # the lazy path is poisoned too
        served: dict[int, bytes] = {}
        while (r := _get(e)).status_code == 200:
            batch_id, items = _split(r.content)
            for raw in items:
                seq = int(raw.rsplit(b'"emulator_seq":', 1)[1].rstrip(b"}"))
                served[seq] = raw
            _ack(e, batch_id)
        hostile = e.hostile_records()
        listing = requests.get(e.url + "/_emulator/hostile", timeout=T).json()
        stats = e.stats()
    assert sorted(served) == list(range(1, 201))
    assert 20 <= len(hostile) <= 60 and stats["hostile"] == len(hostile)  # ~20 % of 200
    assert {kind for kind, _ in hostile.values()} == set(HOSTILE_KINDS)
    for seq, (_, raw) in hostile.items():
        assert served[seq] == raw  # exactly the bytes that went out
    assert {r["emulator_seq"] for r in ordinary}.isdisjoint(hostile)  # generate returns the ordinary ones
    assert [(h["seq"], h["kind"], h["text"].encode()) for h in listing] == [
        (seq, kind, raw) for seq, (kind, raw) in sorted(hostile.items())
    ]
    texts = b"".join(raw for _, raw in hostile.values())
    for marker in (b"1e400", b"[" * 400, b'{"a":' * 1000, b"0001-01-01T00:30:00+01:00",
                   b"9999-12-31T23:30:00-01:00", b"\\ud800"):  # fmt: skip
        assert marker in texts, marker


def test_poison_choice_is_a_function_of_seed_and_seq() -> None:
    def hostile_seqs(seed: int) -> list[int]:
        e = Emulator(seed=seed, poison=0.3)
        e.generate(100)
        return sorted(e.hostile_records())

    assert hostile_seqs(5) == hostile_seqs(5) != hostile_seqs(6)
    assert Emulator(poison=0.0).generate(10) and Emulator(poison=0.0).hostile_records() == {}
    with pytest.raises(ValueError, match="unknown hostile kind"):
        Emulator(poison=0.1, poison_kinds=["nope"])
    with pytest.raises(ValueError, match="within 0..1"):
        Emulator(poison=1.5)


@pytest.mark.parametrize(
    ("fault", "shape"),
    [("items_missing", b'{"id":"%s"}'), ("items_null", b'{"id":"%s","items":null}'), ("items_renamed", None)],
)
def test_envelope_faults_lease_a_batch_without_readable_items(
    emu: Emulator, fault: str, shape: bytes | None
) -> None:
    emu.generate(5)
    emu.set_faults(**{fault: 1.0})
    r = _get(emu)
    assert r.status_code == 200
    body = r.json()
    if shape is not None:
        assert r.content == shape % body["id"].encode()
    else:
        assert set(body) == {"id", "records"} and [i["emulator_seq"] for i in body["records"]] == [
            1,
            2,
            3,
            4,
            5,
        ]
    stats = emu.stats()
    assert (stats["leased"], stats["broken_envelopes"], stats["faults"][fault]) == (1, 1, 1)
    emu.set_faults(**{fault: 0.0})
    wait_until(lambda: emu.stats()["leased"] == 0)  # never acked: the records come back
    assert sorted(_seqs(_get(emu))) == [1, 2, 3, 4, 5]
    assert emu.stats()["acked_broken_envelopes"] == 0


def test_acking_a_broken_envelope_is_counted(emu: Emulator) -> None:
    emu.generate(3)
    emu.set_faults(items_missing=1.0)
    batch_id = _get(emu).json()["id"]
    assert _ack(emu, batch_id).status_code == 200
    assert emu.stats()["acked_broken_envelopes"] == 1  # what a test asserts stays 0 for a client


@pytest.mark.parametrize(
    ("fault", "tail"),
    [
        ("items_twice", b',"items":[]}'),
        ("items_escaped", b',"i\\u0074ems":[]}'),
        ("id_twice", None),
    ],
)
def test_first_delivery_faults_break_only_the_first_delivery(
    emu: Emulator, fault: str, tail: bytes | None
) -> None:
    emu.generate(5)
    emu.set_faults(**{fault: 1.0})  # left on: the redelivery must still come out whole
    first = _get(emu).content
    lease_id = first[len(b'{"id":"') : first.index(b'","items":[{')]
    if tail is None:  # a second id, not the lease's
        second = first.rsplit(b',"id":"', 1)[1]
        assert first.endswith(b'}],"id":"' + second) and second[:-2] != lease_id
    else:
        assert first.endswith(b"}]" + tail)
    assert emu.stats()["broken_envelopes"] == 1
    wait_until(lambda: emu.stats()["leased"] == 0)  # never acked: the records come back
    again = _get(emu)
    proper = {"id": again.json()["id"], "items": again.json()["items"]}
    assert again.content == json.dumps(proper, separators=(",", ":"), ensure_ascii=False).encode()
    assert sorted(_seqs(again)) == [1, 2, 3, 4, 5]
    assert emu.stats()["faults"][fault] == 1


def test_gzip_trailer_follows_the_end_of_the_gzip_stream(emu: Emulator) -> None:
    emu.generate(5)
    emu.set_faults(gzip_trailer=1.0, gzip_trailer_bytes=4096)
    r = _get(emu, headers={**HDR, "Accept-Encoding": "gzip"}, stream=True)
    wire = r.raw.read(decode_content=False)
    assert r.headers["Content-Encoding"] == "gzip" and wire.endswith(bytes(4096))
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    body = inflater.decompress(wire)
    assert inflater.eof and inflater.unused_data == bytes(4096)
    assert [i["emulator_seq"] for i in json.loads(body)["items"]] == [1, 2, 3, 4, 5]
    assert emu.stats()["broken_envelopes"] == 0  # its records are all there
    wait_until(lambda: emu.stats()["leased"] == 0)
    again = _get(emu, headers={**HDR, "Accept-Encoding": "gzip"}, stream=True).raw.read(decode_content=False)
    assert json.loads(gzip.decompress(again))["items"] and not again.endswith(bytes(16))


def test_distinct_pool_reuses_content_with_unique_seqs() -> None:
    with Emulator(batch_size=50, distinct=10, long_poll_seconds=0.1) as e:
        e.feed(30)
        items = _get(e).json()["items"]
        assert [i["emulator_seq"] for i in items] == list(range(1, 31))
        assert {k: v for k, v in items[12].items() if k != "emulator_seq"} == {
            k: v for k, v in e.generator.record(3).items() if k != "emulator_seq"
        }


def test_emulator_imports_nothing_else_from_the_package() -> None:
    """The emulator shares no code with the client or the engine (a shared bug would pass every
    test) and loads neither its HTTP layer nor its command line until they are used."""
    code = (
        "import sys, airflow_provider_ktexport.testing.emulator as m; m.Emulator;"
        "print(sorted(n for n in sys.modules if n.startswith(('airflow', 'requests'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)
    pkg = "airflow_provider_ktexport.testing"
    # The package's __init__ runs first; its _arrow_env (stdlib only: it chooses Arrow's pool
    # before pyarrow loads) is the one other module it loads.
    assert loaded[:3] == ["airflow_provider_ktexport", "airflow_provider_ktexport._arrow_env", pkg]
    own = set(loaded[3:])
    assert all(name.startswith(pkg + ".") for name in own), loaded
    assert {f"{pkg}.emulator", f"{pkg}.records"} <= own
    assert not {f"{pkg}._http", f"{pkg}.cli"} & own


def test_cli_serves_trips_with_a_gps_track(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_ktexport.testing.emulator", "--port", "0",
         "--port-file", str(port_file), "--api-key", "cli-key", "--records", "30", "--batch-size", "30",
         "--record-types", "trip", "--track-points", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(port_file.exists, 20)
        url = f"http://127.0.0.1:{int(port_file.read_text())}"
        items = requests.get(url + "/v2/stream", headers={"x-access-token": "cli-key"}, timeout=T).json()[
            "items"
        ]
        assert len(items) == 30 and {r["type"] for r in items} == {"trip"}
        assert all(len(r["track"]) == 100 for r in items)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
