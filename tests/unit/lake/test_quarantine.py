"""Undecodable bodies kept once in ``_quarantine/``, their sightings counted, their copies read back."""

from __future__ import annotations

import json
from pathlib import Path

from airflow_provider_ktexport.lake.writer import LakeWriter


def test_quarantine_once_per_body(writer: LakeWriter, tmp_path: Path) -> None:
    first = writer.quarantine(b"\x1f\x8b garbage", reason="not JSON", batch_id="b1")
    meta_path = tmp_path / "_quarantine" / (Path(first).stem + ".json")
    meta = json.loads(meta_path.read_text())
    again = writer.quarantine(b"\x1f\x8b garbage", reason="still not JSON", batch_id="b2")
    assert first == again
    assert json.loads(meta_path.read_text()) == meta  # first sighting kept
    assert meta["reason"] == "not JSON" and meta["batch_id"] == "b1" and meta["first_seen"]
    other = writer.quarantine(b"other", reason="r", batch_id=None)
    assert other != first
    assert sorted(p.suffix for p in (tmp_path / "_quarantine").iterdir()) == [
        ".body",
        ".body",
        ".json",
        ".json",
        ".seen",
        ".seen",
    ]
    assert writer.quarantine_sightings(b"\x1f\x8b garbage") == 2
    assert writer.quarantine_sightings(b"other") == 1
    assert writer.quarantine_sightings(b"never stored") == 0
    assert (tmp_path / "_quarantine" / Path(first).name).read_bytes() == b"\x1f\x8b garbage"


def test_a_body_redelivered_under_new_ids_is_stored_once_and_counted(
    writer: LakeWriter, tmp_path: Path
) -> None:
    def body(batch_id: str) -> bytes:
        return b'{"id":"%b","items":[{"a":1}],"items":[]}' % batch_id.encode()

    uris = {
        writer.quarantine(body(f"lease-{n}"), reason="items twice", batch_id=f"lease-{n}") for n in range(3)
    }
    assert len(uris) == 1
    stored = sorted((tmp_path / "_quarantine").iterdir())
    assert [p.suffix for p in stored] == [".body", ".json", ".seen"]
    assert stored[0].read_bytes() == body("lease-0")  # the first delivery's copy
    assert writer.quarantine_sightings(body("lease-9")) == 3
    assert writer.quarantine_kept(body("lease-9"))


def test_a_quarantined_copy_that_does_not_read_back_is_stored_again(
    writer: LakeWriter, tmp_path: Path
) -> None:
    body = b'{"id":"q-1","items":[1,'
    uri = writer.quarantine(body, reason="cut", batch_id="q-1")
    path = tmp_path / "_quarantine" / Path(uri).name
    path.write_bytes(body[:5])  # damaged after it was stored
    assert not writer.quarantine_kept(body)
    assert path.read_bytes() == body
    assert writer.quarantine_kept(b'{"id":"q-2","items":[1,')
    path.unlink()
    assert not writer.quarantine_kept(body) and path.read_bytes() == body
