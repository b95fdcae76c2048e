"""What the drain's unit tests share: a scripted fake client, batches, and a real lake on a local folder."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from pathlib import Path

import fsspec

from airflow_provider_ktexport.api.keymask import key_mask
from airflow_provider_ktexport.drain import Drain, DrainConfig
from airflow_provider_ktexport.lake.writer import LakeWriter, read_lake_table
from airflow_provider_ktexport.transport.sync_client import Batch

EMPTY = object()


#: Valid JSON that cannot be a row, each kind the issue names (the exact bytes must be kept).
HOSTILE = {
    "number_out_of_range": b'{"type":"telemetry","v":1e400}',
    "list_400_deep": b'{"type":"telemetry","v":' + b"[" * 400 + b"]" * 400 + b"}",
    "object_1000_deep": b'{"type":"telemetry","v":' + b'{"a":' * 1000 + b"1" + b"}" * 1000 + b"}",
    "year_0_utc": b'{"type":"event","eventDate":"0001-01-01T00:30:00+01:00","id":"e1"}',
    "year_10000_utc": b'{"type":"event","eventDate":"9999-12-31T23:30:00-01:00","id":"e2"}',
    "lone_surrogate": b'{"type":"telemetry","s":"\\ud800"}',
    "not_an_object": b"[1,2,3]",
}


def make_batch(batch_id: str, seqs: range) -> Batch:
    raw = [
        json.dumps(
            {"type": "telemetry", "date": "2026-11-25T10:00:00Z", "seq": s, "location": {"lat": 1.5}}
        ).encode()
        for s in seqs
    ]
    return Batch(id=batch_id, raw_items=raw, leased_at=time.monotonic(), body_size=sum(map(len, raw)))


def batch_of(batch_id: str, raws: list[bytes]) -> Batch:
    return Batch(id=batch_id, raw_items=raws, leased_at=time.monotonic(), body_size=sum(map(len, raws)))


def good_records(n: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"type": "telemetry", "date": "2026-11-25T10:00:00Z", "seq": s, "v": 1.5}).encode()
        for s in range(start, start + n)
    ]


class FakeClient:
    """Serves scripted answers; records every ack with what the lake held at that moment."""

    long_poll_seconds = 0.2

    def __init__(self, answers, lake: Path | None = None, ack_result: bool = True) -> None:
        self.answers = deque(answers)
        self.lake = lake
        self.ack_result = ack_result
        self.acks: list[str] = []
        self.landed_at_ack: dict[str, set[int]] = {}
        self.lock = threading.Lock()
        self.gets = 0

    def get_batch(self, *, deadline=None):
        with self.lock:
            self.gets += 1
            answer = self.answers.popleft() if self.answers else EMPTY
        if answer is EMPTY:
            wait = self.long_poll_seconds
            if deadline is not None:
                wait = max(0.0, min(wait, deadline - time.monotonic()))
            time.sleep(wait)
            return None
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            return answer()
        answer.leased_at = time.monotonic()
        return answer

    def ack(self, batch_id: str) -> bool:
        with self.lock:
            self.acks.append(batch_id)
            if self.lake is not None:
                self.landed_at_ack[batch_id] = set(lake_seqs(self.lake))
        return self.ack_result


def lake_seqs(lake: Path) -> list[int]:
    if not any(lake.rglob("*.parquet")):
        return []
    return read_lake_table(lake.as_uri()).column("seq").to_pylist()


def rejected_files(lake: Path) -> list[Path]:
    return sorted((lake / "_rejected").rglob("*.parquet")) if (lake / "_rejected").exists() else []


def writer_for(lake: Path) -> LakeWriter:
    return LakeWriter(fsspec.filesystem("file"), str(lake))


def run(client, lake: Path, **cfg) -> Drain:
    cfg.setdefault("max_runtime", 20)
    cfg.setdefault("lease_seconds", 8)
    cfg.setdefault("flush_seconds", 3)
    cfg.setdefault("max_in_flight", 2)
    drain = Drain(client, writer_for(lake), DrainConfig(**cfg))
    drain.run()
    return drain


#: Record types that make bad folder names; all but the lone surrogate are valid records.
BAD_TYPES = {
    "lone_surrogate": b'{"type":"trip\\ud800","seq":100}',
    "cjk_120": json.dumps({"type": "\u6570" * 120, "seq": 101}, ensure_ascii=False).encode(),
    "emoji_70": json.dumps({"type": "\U0001f69a" * 70, "seq": 102}, ensure_ascii=False).encode(),
    "rejected": b'{"type":"_rejected","seq":103}',
    "quarantine": b'{"type":"_quarantine","seq":104}',
    "schema": b'{"type":"_schema","seq":105}',
}


class MaskingClient(FakeClient):
    """A fake client that masks its key in records as the real one does (``KeyMask``)."""

    key = "s3cr3t-KEY"

    def mask_records(self, raws: list[bytes]) -> list[bytes]:
        return key_mask(self.key).records(raws)
