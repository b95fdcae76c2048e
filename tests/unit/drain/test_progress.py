"""Progress lines (#23): running totals after every flush and a summary when the drain ends."""

from __future__ import annotations

import logging
import re
import types

from airflow_provider_ktexport.drain import Drain, DrainConfig, DrainResult, Progress
from airflow_provider_ktexport.drain import progress as progress_module
from tests.unit.drain.support import FakeClient, MaskingClient, batch_of, make_batch, writer_for

#: The documented wording (docs/monitoring.md, "Progress lines"): tools may parse it.
PROGRESS = re.compile(
    r"^Progress: (?P<records>\d+) records landed \((?P<rate>\d+) records/s\), lag (?P<lag>[\d.]+ s|n/a), "
    r"(?P<rejected>\d+) rejected, (?P<acked>\d+) acked, (?P<ack_failed>\d+) ack failed, "
    r"(?P<expired>\d+) leases expired, (?P<deduped>\d+) deduped, (?P<files>\d+) files$"
)
FINISHED = re.compile(
    r"^Drain finished \((?P<stopped>\w+)\): (?P<records>\d+) records in \d+ batches, \d+ files, \d+ bytes, "
    r"(?P<acked>\d+) acked, \d+ ack failed, \d+ leases expired, \d+ deduped, (?P<rejected>\d+) rejected, \d+ quarantined, "
    r"[\d.]+ s \(\d+ records/s\), max lag (?:[\d.]+ s|n/a)$"
)


def drain_lines(caplog, pattern: re.Pattern[str]) -> list[re.Match[str]]:
    return [m for r in caplog.records if (m := pattern.match(r.getMessage()))]


def test_every_flush_logs_one_line_of_running_totals_and_the_end_a_summary(tmp_path, caplog):
    lake = tmp_path / "lake"
    batches = [make_batch(f"b{i}", range(i * 10, i * 10 + 10)) for i in range(6)]
    batches.append(batch_of("bad", [b"[1,2,3]"]))  # valid JSON that cannot be a row: a reject
    client = FakeClient(batches, lake=lake)
    drain = Drain(
        client,
        writer_for(lake),
        DrainConfig(lease_seconds=8, flush_seconds=3, flush_records=20, max_in_flight=1),
    )
    with caplog.at_level(logging.INFO, logger="airflow_provider_ktexport.drain"):
        result = drain.run()
    lines = drain_lines(caplog, PROGRESS)
    assert len(lines) == result.flushes >= 3  # one per flush, none more
    landed = [int(m["records"]) for m in lines]
    assert landed == sorted(landed) and landed[-1] == result.records == 60  # running totals
    last = lines[-1]
    assert (int(last["acked"]), int(last["rejected"]), int(last["files"])) == (7, 1, len(result.files))
    assert all(m["lag"].endswith(" s") for m in lines[:-1])  # their records carry an event time
    assert last["lag"] == "n/a"  # the last flush landed only the reject
    (summary,) = drain_lines(caplog, FINISHED)
    assert (summary["stopped"], int(summary["records"]), int(summary["acked"])) == ("empty", 60, 7)


def test_a_flush_of_records_without_an_event_time_says_its_lag_is_unknown(tmp_path, caplog):
    lake = tmp_path / "lake"
    client = FakeClient([batch_of("b1", [b'{"type":"t","seq":1}'])], lake=lake)
    drain = Drain(client, writer_for(lake), DrainConfig(lease_seconds=8, flush_seconds=3))
    with caplog.at_level(logging.INFO, logger="airflow_provider_ktexport.drain"):
        drain.run()
    (line,) = drain_lines(caplog, PROGRESS)
    assert line["lag"] == "n/a"


def test_progress_lines_never_show_the_key(tmp_path, caplog):
    lake = tmp_path / "lake"
    key = MaskingClient.key
    echo = b'{"type":"t","date":"2026-11-25T10:00:00Z","note":"GET /v2/stream?token=' + key.encode() + b'"}'
    client = MaskingClient([batch_of("b1", [echo, b'{"type":"t","v":1e999,"k":"' + key.encode() + b'"}'])])
    with caplog.at_level(logging.DEBUG, logger="airflow_provider_ktexport.drain"):
        Drain(client, writer_for(lake), DrainConfig(lease_seconds=8, flush_seconds=3)).run()
    assert drain_lines(caplog, PROGRESS) and drain_lines(caplog, FINISHED)
    assert key not in caplog.text


def test_the_rate_is_records_landed_per_second_since_the_run_started(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr(progress_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    result = DrainResult(
        records=5000, rejected=2, acked=9, ack_failed=1, lease_expired=3, deduped=4, files=["a", "b"]
    )
    progress = Progress(result, logging.getLogger("t"))
    progress.start()
    now[0] = 104.0
    with caplog.at_level(logging.INFO, logger="t"):
        progress.flushed(12.34)
        progress.flushed(None)
    assert [r.getMessage() for r in caplog.records] == [
        "Progress: 5000 records landed (1250 records/s), lag 12.3 s, 2 rejected, 9 acked, 1 ack failed, "
        "3 leases expired, 4 deduped, 2 files",
        "Progress: 5000 records landed (1250 records/s), lag n/a, 2 rejected, 9 acked, 1 ack failed, "
        "3 leases expired, 4 deduped, 2 files",
    ]
