"""Upstream bad input, one case each, against the real relay and the simulated WebFones.

For every case the relay keeps running, logs one clear line (none for input that is odd but
valid), never moves its cursor to a timestamp it did not store in the same transaction, and loses
no valid record: the records added just before and just after the fault are delivered once.
"""

from __future__ import annotations

import json
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import orjson
import pytest
from standardwebhooks.webhooks import Webhook

from relay.core.errors import MalformedResponse
from relay.core.models import IngestBatch
from relay.http1.client import Http1Client
from relay.ingest import poller
from relay.ingest.upstream import Credentials, WebFonesClient
from relay.sim.receiver import Receiver
from relay.sim.simulator import MALFORMED, Fault, SimulatedWebFones
from relay.store.sqlite.store import SqliteStore
from tests.helpers import (
    GENEROUS,
    KEY_A,
    RunningRelay,
    Sub,
    ago,
    make_settings,
    new_secret,
    rids,
    running,
    verify_all,
    wait_until_async,
)

MiB = 1024 * 1024


@dataclass
class Rig:
    """A simulator, one receiver, and a spy on every committed ingest."""

    sim: SimulatedWebFones
    rx: Receiver
    secret: str
    caplog: pytest.LogCaptureFixture
    make: Callable[..., Any]
    batches: list[IngestBatch] = field(default_factory=list)

    def settings(self, **upstream: Any) -> Any:
        return self.make(upstream={"timeout": "500ms", **upstream})

    def poller_problems(self) -> list[str]:
        return [
            r.getMessage()
            for r in self.caplog.records
            if r.name == "relay.ingest.poller" and r.levelno >= logging.WARNING
        ]

    async def wait_fault_served(self, after: int) -> None:
        async def served() -> bool:
            return any(e.fault for e in self.sim.request_log[after:])

        await wait_until_async(served)

    async def wait_polls(self, n: int) -> None:
        target = len(self.sim.request_log) + n

        async def polled() -> bool:
            return len(self.sim.request_log) >= target

        await wait_until_async(polled)


@pytest.fixture
async def rig(sim, receiver_factory, tmp_path, caplog, monkeypatch) -> AsyncIterator[Rig]:
    rx, url = await receiver_factory()
    secret = new_secret()
    caplog.set_level(logging.INFO, logger="relay")

    def make(**kwargs: Any) -> Any:
        return make_settings(tmp_path, sim.url, [Sub("crm", url, secret)], **kwargs)

    rig = Rig(sim, rx, secret, caplog, make)
    ingest = SqliteStore.ingest

    async def spy(self: SqliteStore, batch: IngestBatch) -> Any:
        outcome = await ingest(self, batch)
        rig.batches.append(batch)  # committed
        return outcome

    monkeypatch.setattr(SqliteStore, "ingest", spy)
    # Production waits 15 minutes after a rejected key and a minute after a bare 429; the
    # behaviour under test is the same with shorter pauses.
    monkeypatch.setattr(poller, "AUTH_RETRY", 0.2)
    monkeypatch.setattr(poller, "RATE_LIMIT_PAUSE", 0.2)
    yield rig
    check_cursor_only_follows_stored_records(rig.batches)


def check_cursor_only_follows_stored_records(batches: list[IngestBatch]) -> None:
    """Every cursor move was to the timestamp of a record stored in that same commit."""
    cursor: str | None = None
    for batch in batches:
        if batch.cursor is not None and batch.cursor != cursor:
            assert batch.cursor in {r.call_ts for r in batch.records}, "cursor moved past data"
            assert cursor is None or batch.cursor > cursor, "cursor moved backwards"
            cursor = batch.cursor


async def around_a_fault(
    rig: Rig,
    fault: Fault | Callable[[SimulatedWebFones], Fault],
    settings: Any | None = None,
) -> tuple[list[dict[str, Any]], RunningRelay, str | None]:
    """Deliver v0; queue ``fault`` (or build it now from the simulator); add v1 before it is
    served and v2 after; deliver both.

    Returns the valid records, the (stopped) relay and its final cursor.
    """
    sim, rx = rig.sim, rig.rx
    made = [sim.add_record(KEY_A, started_at=ago(40))]
    async with running(settings or rig.settings()) as relay:
        assert relay.supervisor is not None and relay.task is not None
        await rx.wait_count(1, timeout=GENEROUS)
        rig.caplog.clear()  # only what the fault causes from here on
        served = len(sim.request_log)
        sim.fail_next(fault(sim) if callable(fault) else fault, key=KEY_A)
        made.append(sim.add_record(KEY_A, started_at=ago(30)))
        await rig.wait_fault_served(served)
        made.append(sim.add_record(KEY_A, started_at=ago(20)))
        await rx.wait_count(3, timeout=GENEROUS)
        assert not relay.task.done(), "the relay keeps running"
        cursor = (await relay.supervisor.store.load_cursor("alpha")).newest
    assert sorted(rids(rx.requests)) == sorted(r["rid"] for r in made), "each exactly once"
    by_rid = {r["rid"]: r for r in made}
    for doc in verify_all(rx.requests, rig.secret):
        assert doc["data"] == by_rid[doc["data"]["rid"]]
    return made, relay, cursor


def answer_with_count(sim: SimulatedWebFones, count: int) -> Fault:
    records = sim.records(KEY_A)
    body = orjson.dumps({"success": True, "count": count, "records": records})
    return Fault.raw(200, "application/json", body)


# -- a whole response is bad --------------------------------------------------------------------

WHOLE_RESPONSE = [
    pytest.param(MALFORMED["not_json"], "body is not valid JSON", id="not-json"),
    pytest.param(MALFORMED["empty_body"], "body is not valid JSON", id="empty-body"),
    pytest.param(
        MALFORMED["html_200"], "expected JSON, got content type 'text/html'", id="html-200"
    ),
    pytest.param(MALFORMED["truncated_json"], "body is not valid JSON", id="truncated-json"),
    pytest.param(MALFORMED["success_false"], "success is false", id="success-false"),
    pytest.param(MALFORMED["records_missing"], "records is missing", id="records-missing"),
    pytest.param(MALFORMED["records_null"], "records is null", id="records-null"),
    pytest.param(MALFORMED["records_not_list"], "records is an object", id="records-not-list"),
    pytest.param(
        Fault.raw(200, "application/json", b'{"success": true, "count": 3, "records": []}'),
        "count says 3 but 0 records came; using the records, cursor kept",
        id="count-above-records",
    ),
    pytest.param(
        lambda sim: answer_with_count(sim, 0), "count says 0 but 1 records came", id="count-below"
    ),
    pytest.param(Fault.slow(1.0), "no complete answer within 0.5s", id="slower-than-timeout"),
    pytest.param(Fault.reset(), "connection broke while reading the response", id="reset-mid-body"),
    *[
        pytest.param(Fault.status(code), f"{code} ", id=f"{code}-with-body")
        for code in (400, 404, 500, 502, 503)
    ],
    *[
        pytest.param(Fault.status(code, body=b""), f"{code} ", id=f"{code}-empty-body")
        for code in (400, 404, 500, 502, 503)
    ],
    *[
        pytest.param(Fault.status(code, body=body), "API key rejected", id=f"{code}-{name}")
        for code in (401, 403)
        for name, body in (("with-body", None), ("empty-body", b""))
    ],
    pytest.param(Fault.status(429), "rate limited by WebFones", id="429-with-body"),
    pytest.param(Fault.status(429, body=b""), "rate limited by WebFones", id="429-empty-body"),
]


@pytest.mark.parametrize(("fault", "problem"), WHOLE_RESPONSE)
async def test_bad_response_moves_no_cursor_and_loses_nothing(
    rig: Rig, fault: Fault | Callable[[SimulatedWebFones], Fault], problem: str
) -> None:
    made, _, cursor = await around_a_fault(rig, fault)
    [line] = rig.poller_problems()
    assert problem in line
    assert cursor == max(r["call_timestamp"] for r in made)


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_redirect_is_not_followed(rig: Rig, code: int) -> None:
    # Following it would hand the API key to whoever the Location names.
    marker = "1999-01-01 00:00:00"
    location = f"{rig.sim.url}/call_log/records_after_timestamp?timestamp={marker}"
    await around_a_fault(rig, Fault.redirect(location, code))
    [line] = rig.poller_problems()
    assert f"{code} redirect to" in line and "not followed" in line
    assert all(e.timestamp != marker for e in rig.sim.request_log)


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_50mb_response_over_the_cap_is_refused_cleanly(rig: Rig, chunked: bool) -> None:
    settings = rig.settings(max_response_bytes=8 * MiB)
    await around_a_fault(rig, Fault.huge(50 * MiB, chunked=chunked), settings)
    [line] = rig.poller_problems()
    assert "exceeds max_response_bytes" in line


async def test_50mb_response_under_the_default_cap_is_processed(rig: Rig) -> None:
    # The API has no paging: a first poll far back can legitimately be this big.
    await around_a_fault(rig, Fault.huge(50 * MiB), rig.settings(timeout="20s"))
    assert rig.poller_problems() == []


async def test_reading_a_50mb_response_costs_at_most_the_cap(sim: SimulatedWebFones) -> None:
    sim.add_record(KEY_A, started_at=ago(10))
    sim.fail_next(Fault.huge(50 * MiB), key=KEY_A)
    cap = 4 * MiB
    async with Http1Client() as session:
        client = WebFonesClient(session, sim.url, timeout=GENEROUS, max_response_bytes=cap)
        tracemalloc.start()
        try:
            with pytest.raises(MalformedResponse, match="exceeds max_response_bytes"):
                await client.fetch(Credentials(KEY_A), "2000-01-01 00:00:00")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # The same process also served the 50 MB; both sides together stay near the cap.
        assert peak < 2 * cap, f"peak {peak / MiB:.1f} MiB"
        result = await client.fetch(Credentials(KEY_A), "2000-01-01 00:00:00")
        assert len(result.records) == 1


# -- Retry-After --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "header", "at_least"),
    [
        (429, lambda: "1", 1.0),
        # An HTTP date has whole seconds, and some time passes before the relay reads it:
        # three seconds ahead is a pause of well over one and a half.
        (429, lambda: formatdate(time.time() + 3, usegmt=True), 1.5),
        (503, lambda: "1", 1.0),
    ],
    ids=["429-seconds", "429-http-date", "503-seconds"],
)
async def test_retry_after_pauses_polling(
    rig: Rig, code: int, header: Callable[[], str], at_least: float
) -> None:
    # Built when it is queued, not when the test starts, so relay start-up does not eat into it.
    def fault(sim: SimulatedWebFones) -> Fault:
        return Fault.status(code, headers={"Retry-After": header()})

    await around_a_fault(rig, fault)
    log = rig.sim.request_log
    [i] = [n for n, e in enumerate(log) if e.fault]
    assert log[i + 1].at - log[i].at >= at_least - 0.01
    [line] = rig.poller_problems()
    assert ("pausing this API key" if code == 429 else "retrying in") in line


# -- one record in a response is bad ------------------------------------------------------------


def raw_answer(sim: SimulatedWebFones, *extra: Any) -> Fault:
    """The simulator's full answer plus ``extra`` records, built with the standard library (it
    writes what orjson cannot: integers past 64 bits, lone surrogate escapes)."""
    records = [*sim.records(KEY_A), *extra]
    body = json.dumps({"success": True, "count": len(records), "records": records})
    return Fault.raw(200, "application/json", body.encode())


def base_record(sim: SimulatedWebFones, **changes: Any) -> dict[str, Any]:
    """A realistic record with a fresh rid that is not (yet) in the simulator."""
    record = sim.add_record(KEY_B_UNUSED, started_at=ago(25))
    record.update(changes)
    return {k: v for k, v in record.items() if v is not DROP}


KEY_B_UNUSED = "key-bravo-0123456789abcdef"  # the fixture's second key; never polled here
DROP = object()


@dataclass(frozen=True)
class Case:
    """One bad (or odd but valid) record: how it is served, and what must happen to it."""

    changes: dict[str, Any]
    quarantine: str | None = None  # the reason, if it must be kept aside
    warning: str | None = None  # the one line expected for a delivered record
    one_shot: bool = False  # served once in a raw answer (the simulator cannot serve it)
    twin: bool = False  # a second copy with the same rid and different content


RECORD_CASES = {
    "no-rid": Case({"rid": DROP}, quarantine="rid missing"),
    "rid-as-text": Case({"rid": "R-17"}, quarantine="rid not an integer"),
    "rid-negative": Case({"rid": -5}, quarantine="rid not an integer"),
    "rid-fraction": Case({"rid": 17.5}, quarantine="rid not an integer"),
    "rid-past-64-bits": Case({"rid": 2**70}, quarantine="rid out of range", one_shot=True),
    "not-an-object": Case({}, quarantine="record is not an object", one_shot=True),
    "same-rid-different-content": Case({}, quarantine="duplicate rid in response", twin=True),
    "timestamp-malformed": Case({"call_timestamp": "not a time"}, "call_timestamp malformed"),
    "timestamp-null": Case({"call_timestamp": None}, quarantine="call_timestamp missing"),
    "timestamp-missing": Case({"call_timestamp": DROP}, quarantine="call_timestamp missing"),
    "timestamp-no-zero-padding": Case({"call_timestamp": "9999-7-1 9:05:03"}, "malformed"),
    # Odd but valid: delivered verbatim.
    "timestamp-future": Case(
        {"call_timestamp": "2099-01-01 00:00:00"}, warning="more than max_clock_skew ahead"
    ),
    "timestamp-decades-old": Case(
        {"call_timestamp": "1990-01-01 00:00:00"}, warning="before the", one_shot=True
    ),
    "rid-as-digits": Case({"rid": "987654321"}),
    "unicode-and-emoji": Case(
        {"cidname_outside": "Zoë 🎉 王芳 مرحبا", "queue": "Ünïcödé ☎️", "did": "\u0000\u202e"}
    ),
    "lone-surrogate": Case({"cidname_outside": "Caller \ud83d"}, one_shot=True),
    "integer-past-64-bits": Case({"uniqueid": 123456789012345678901234567890}, one_shot=True),
    "null-fields": Case({"cidname_outside": None, "disposition": None, "duration": None}),
    "unknown-fields": Case({"x_new_field": {"nested": [1, 2, 3]}, "recording": ""}),
}


@pytest.mark.parametrize("case", RECORD_CASES.values(), ids=RECORD_CASES.keys())
async def test_bad_record_is_kept_aside_once_and_the_rest_delivered(rig: Rig, case: Case) -> None:
    sim, rx = rig.sim, rig.rx
    made = [sim.add_record(KEY_A, started_at=ago(40))]
    bad: Any = base_record(sim, **case.changes)
    if case.quarantine == "record is not an object":
        bad = "oops"
    async with running(rig.settings()) as relay:
        assert relay.supervisor is not None and relay.task is not None
        store = relay.supervisor.store
        await rx.wait_count(1, timeout=GENEROUS)
        rig.caplog.clear()
        if case.one_shot:
            sim.fail_next(raw_answer(sim, bad), key=KEY_A)
        else:
            sim.add_raw(KEY_A, bad)
            if case.twin:
                sim.add_raw(KEY_A, {**bad, "cidname_outside": "SOMEONE ELSE"})
        made.append(sim.add_record(KEY_A, started_at=ago(20)))
        deliverable = case.quarantine is None
        await rx.wait_count(len(made) + deliverable + case.twin, timeout=GENEROUS)
        # The bad record keeps coming back on every poll (and the sweeps): it stays quiet.
        await rig.wait_polls(12)
        stats = await store.stats()
        cursor = (await store.load_cursor("alpha")).newest
        assert not relay.task.done()

    wh = Webhook(rig.secret)
    for r in rx.requests:
        wh.verify(r.body, dict(r.headers))
    delivered = [json.loads(r.body)["data"] for r in rx.requests]  # json: exact, surrogates too
    expected = [*made, bad] if deliverable else list(made)
    if case.twin:
        expected.append(bad)  # the first copy is the record; the second is kept aside
    key = lambda d: str(d["rid"])  # noqa: E731
    assert sorted(delivered, key=key) == sorted(expected, key=key)
    assert stats.quarantined == (0 if deliverable else 1)
    problems = rig.poller_problems()
    if case.quarantine is not None:
        [line] = problems
        assert case.quarantine in line and "quarantine" in line
    elif case.warning is not None:
        [line] = problems
        assert case.warning in line
    else:
        assert problems == []
    # The cursor never follows a record it cannot trust.
    assert cursor == made[-1]["call_timestamp"]


async def test_each_bad_record_is_logged_once_however_often_it_is_served(rig: Rig) -> None:
    sim = rig.sim
    sim.add_record(KEY_A, started_at=ago(40))
    bad = [base_record(sim, rid=DROP), base_record(sim, call_timestamp="soon")]
    async with running(rig.settings()) as relay:
        assert relay.supervisor is not None
        await rig.rx.wait_count(1, timeout=GENEROUS)
        for record in bad:
            sim.add_raw(KEY_A, record)
        await rig.wait_polls(20)
        stats = await relay.supervisor.store.stats()
    assert stats.quarantined == 2
    assert len(rig.poller_problems()) == 2


async def test_a_key_echoed_in_an_error_body_is_not_repeated(rig: Rig) -> None:
    body = orjson.dumps({"error": f"Invalid API key {KEY_A}"})
    async with running(rig.settings()) as relay:
        assert relay.supervisor is not None
        rig.sim.fail_next(Fault.status(403, body=body), Fault.status(500, body=body), key=KEY_A)
        await rig.wait_polls(3)
        stats = await relay.supervisor.store.stats()
    text = "\n".join(rig.poller_problems()) + repr(stats)
    assert KEY_A not in text
    assert "[redacted]" in "\n".join(rig.poller_problems())
