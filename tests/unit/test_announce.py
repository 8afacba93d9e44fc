"""What ingest logs about new records: one INFO line per stored batch, each call at DEBUG."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from relay.core.models import CallRecord
from relay.ingest.announce import announce_new


@pytest.fixture
def caplog_debug(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG, logger="relay.ingest.poller")
    yield caplog


def _records() -> list[CallRecord]:
    return [
        CallRecord(7, "2026-11-29 08:40:13", b"{}"),
        CallRecord(8, "2026-11-29 08:40:11", b"{}", ("crm",)),
        CallRecord(9, "2026-11-29 08:41:00", b"{}"),  # stored before: not new
    ]


def test_one_info_line_per_stored_batch(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.ingest.poller")
    announce_new("main", ["crm", "erp"], [7, 8], _records())
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        (
            "INFO",
            "calls received: 2 new, 3 deliveries queued "
            "(call_timestamp 2026-11-29 08:40:11 to 2026-11-29 08:40:13)",
        )
    ]
    assert caplog.records[0].__dict__["account"] == "main"
    assert caplog.records[0].__dict__["new"] == 2


def test_each_call_at_debug(caplog_debug: pytest.LogCaptureFixture) -> None:
    announce_new("main", ["crm", "erp"], [7, 8], _records())
    debug = [r for r in caplog_debug.records if r.levelname == "DEBUG"]
    assert [(r.__dict__["rid"], r.getMessage()) for r in debug] == [
        (7, "call received, queued for 2 subscribers (call_timestamp 2026-11-29 08:40:13)"),
        (8, "call received, queued for 1 subscribers (call_timestamp 2026-11-29 08:40:11)"),
    ]
    assert sum(r.levelname == "INFO" for r in caplog_debug.records) == 1


def test_nothing_new_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.ingest.poller")
    announce_new("main", ["crm"], [], _records())
    assert caplog.records == []
