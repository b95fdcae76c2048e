"""Undecodable bodies: stored under _quarantine, and acknowledged only under ack_quarantined's rules."""

from __future__ import annotations

import pytest

from airflow_provider_ktexport.exceptions import (
    KtExportProtocolError,
    KtExportTransientError,
)
from tests.unit.drain.support import (
    FakeClient,
    make_batch,
    run,
)


def test_undecodable_body_is_quarantined_and_not_acked_by_default(tmp_path):
    lake = tmp_path / "lake"
    body = b'{"id": "bad1", "items": [{"type": "tele'
    client = FakeClient(
        [KtExportProtocolError("truncated", body=body, batch_id="bad1"), make_batch("ok", range(2))]
    )
    drain = run(client, lake, max_in_flight=1)
    assert drain.result.quarantined == 1
    assert client.acks == ["ok"]
    stored = [p for p in (lake / "_quarantine").iterdir() if p.read_bytes() == body]
    assert len(stored) == 1


def test_ack_quarantined_acknowledges_only_a_body_that_keeps_failing(tmp_path):
    lake = tmp_path / "lake"
    body = b'{"id": "bad2", "items": [1, 2'
    for attempt in (1, 2):  # a transient truncation heals by redelivery: no ack yet
        client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad2")])
        drain = run(client, lake, ack_quarantined=True)
        assert client.acks == [], attempt
        assert drain.result.quarantined == 1
    client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad2")])
    drain = run(client, lake, ack_quarantined=True)
    assert client.acks == ["bad2"]
    assert drain.result.acked == 1


def test_ack_quarantined_counts_a_body_redelivered_under_new_ids(tmp_path):
    """The service redelivers under a new id: the sightings are of the body, not of the id."""
    lake = tmp_path / "lake"
    for n in (1, 2, 3):
        batch_id = f"lease-{n}"
        body = b'{"id":"%b","items":[{"a":1}],"items":[]}' % batch_id.encode()
        client = FakeClient([KtExportProtocolError("items twice", body=body, batch_id=batch_id)])
        run(client, lake, ack_quarantined=True)
        assert client.acks == ([] if n < 3 else ["lease-3"]), n
    assert len(list((lake / "_quarantine").glob("*.body"))) == 1


def test_ack_quarantined_waits_for_a_stored_copy_that_reads_back(tmp_path):
    lake = tmp_path / "lake"
    body = b'{"id": "bad4", "items": [1, 2'
    run(
        FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad4")]),
        lake,
        ack_quarantined=True,
    )
    (stored,) = (lake / "_quarantine").glob("*.body")
    stored.write_bytes(b"damaged")
    client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad4")])
    drain = run(client, lake, ack_quarantined=True, ack_quarantined_after=1)
    assert client.acks == [] and drain.result.acked == 0
    assert stored.read_bytes() == body  # stored again: the next sighting may acknowledge
    client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id="bad4")])
    run(client, lake, ack_quarantined=True, ack_quarantined_after=1)
    assert client.acks == ["bad4"]


@pytest.mark.parametrize("bad_id", ["", ".", "..", "a/b", "x\ty", "a?b"])
def test_ack_quarantined_never_deletes_an_unsafe_id(tmp_path, bad_id):
    lake = tmp_path / "lake"
    body = b'{"id": "?", "items": [1, 2'
    for _ in range(3):
        client = FakeClient([KtExportProtocolError("truncated", body=body, batch_id=bad_id)])
        run(client, lake, ack_quarantined=True, ack_quarantined_after=1)
        assert client.acks == []


def test_a_failing_quarantine_ack_does_not_fail_the_run(tmp_path):
    lake = tmp_path / "lake"
    body = b'{"id": "bad3", "items": [1, 2'

    class AckRaises(FakeClient):
        def ack(self, batch_id):
            raise KtExportTransientError("503 on DELETE", status_code=503)

    client = AckRaises([KtExportProtocolError("truncated", body=body, batch_id="bad3")])
    drain = run(client, lake, ack_quarantined=True, ack_quarantined_after=1)
    assert drain.result.stopped == "empty"
    assert drain.result.ack_failed == 1
