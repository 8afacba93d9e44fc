"""The simulated WebFones API, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from relay.sim.simulator import (
    MALFORMED,
    PATH,
    Fault,
    RawFault,
    SimulatedWebFones,
    key_id,
)
from tests.helpers import GENEROUS

KEY = "wf_live_main_0123456789abcdef"
OTHER = "wf_live_branch_fedcba9876543210"
KEYS = {KEY: "main", OTHER: "branch"}
EPOCH = "2000-01-01 00:00:00"
T0 = datetime(2025, 7, 1, 20, 54, 53, tzinfo=UTC)


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedWebFones]:
    async with SimulatedWebFones(KEYS, seed=1) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def poll(
    http: aiohttp.ClientSession,
    sim: SimulatedWebFones,
    since: str | None = EPOCH,
    *,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One GET; returns (status, parsed JSON, response)."""
    params = {} if since is None else {"timestamp": since}
    async with http.get(
        sim.url + PATH,
        params=params,
        headers={"x-api-key": KEY} if headers is None else headers,
        **kwargs,
    ) as resp:
        return resp.status, await resp.json(content_type=None), resp


def rids(doc: dict[str, Any]) -> list[int]:
    return [r["rid"] for r in doc["records"]]


# --- the documented contract -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status", "error"),
    [
        ({}, 401, "Missing API key"),
        ({"x-api-key": ""}, 401, "Missing API key"),
        ({"Authorization": f"Basic {KEY}"}, 401, "Missing API key"),
        ({"x-api-key": "wf_live_nope"}, 403, "Invalid API key"),
        ({"Authorization": "Bearer wf_live_nope"}, 403, "Invalid API key"),
        ({"x-api-key": KEY}, 200, None),
        ({"Authorization": f"Bearer {KEY}"}, 200, None),
        ({"authorization": f"bearer {OTHER}"}, 200, None),
    ],
)
async def test_auth(
    sim: SimulatedWebFones,
    http: aiohttp.ClientSession,
    headers: dict[str, str],
    status: int,
    error: str | None,
) -> None:
    got, doc, _ = await poll(http, sim, headers=headers)
    assert got == status
    assert doc == ({"error": error} if error else {"success": True, "count": 0, "records": []})


@pytest.mark.parametrize(
    ("since", "error"),
    [
        (None, "Missing timestamp in query"),
        ("", "Missing timestamp in query"),
        ("yesterday", "Invalid timestamp format, expected YYYY-MM-DD HH:MM:SS"),
        ("2025-07-01T20:54:53", "Invalid timestamp format, expected YYYY-MM-DD HH:MM:SS"),
    ],
)
async def test_bad_timestamp_is_400(
    sim: SimulatedWebFones, http: aiohttp.ClientSession, since: str | None, error: str
) -> None:
    assert (await poll(http, sim, since))[:2] == (400, {"error": error})


async def test_strictly_after_ordered_by_timestamp_then_rid(
    sim: SimulatedWebFones, http: aiohttp.ClientSession
) -> None:
    first = sim.add_record(KEY, started_at=T0)
    newest = sim.add_record(KEY, started_at=T0 + timedelta(seconds=2))
    same_a = sim.add_record(KEY, started_at=T0 + timedelta(seconds=1))
    same_b = sim.add_record(KEY, started_at=T0 + timedelta(seconds=1))
    # A long call written when it ended: visible now, stamped long ago.
    late = sim.add_record(KEY, started_at=T0 - timedelta(minutes=20))
    sim.add_record(OTHER, started_at=T0 + timedelta(seconds=5))

    status, doc, resp = await poll(http, sim, EPOCH)
    assert status == 200
    assert resp.content_type == "application/json"
    assert rids(doc) == [late["rid"], first["rid"], same_a["rid"], same_b["rid"], newest["rid"]]
    assert doc["count"] == 5
    assert late["rid"] > newest["rid"]  # rids follow visibility, timestamps follow the call

    _, doc, _ = await poll(http, sim, "2025-07-01 20:54:54")  # == same_a's second: excluded
    assert rids(doc) == [newest["rid"]]
    _, doc, _ = await poll(http, sim, "2025-07-01 20:54:53")
    assert rids(doc) == [same_a["rid"], same_b["rid"], newest["rid"]]
    _, doc, _ = await poll(http, sim, "2025-7-1 20:54:55")  # unpadded but parsable
    assert doc == {"success": True, "count": 0, "records": []}


async def test_records_look_like_webfones(sim: SimulatedWebFones) -> None:
    made = [sim.add_record(KEY) for _ in range(300)]
    assert [r["rid"] for r in made] == sorted({r["rid"] for r in made})
    for r in made:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r["call_timestamp"])
        assert r["direction"] in {"INCOMING", "OUTGOING", "INTERNAL"}
        assert r["disposition"] in {"ANSWERED", "NO ANSWER", "BUSY", "FAILED", "VOICEMAIL"}
        assert re.fullmatch(r"\(555\) 010-\d{4}, x" + r["cidext_inside"], r["cidnumber_inside"])
        if r["direction"] != "INTERNAL":
            assert re.fullmatch(r"\(555\) 01\d-\d{4}", r["cidnumber_outside"])
        assert r["duration"] >= r["billsec"] >= 0
        assert r["rid"] in sim.visible_at
    assert any(not r["cidname_outside"].isascii() for r in made)
    assert {r["direction"] for r in made} == {"INCOMING", "OUTGOING", "INTERNAL"}


async def test_unicode_survives_the_wire(
    sim: SimulatedWebFones, http: aiohttp.ClientSession
) -> None:
    sim.add_record(KEY, cidname_outside="José Nuñez", started_at=T0)
    _, doc, _ = await poll(http, sim)
    assert doc["records"][0]["cidname_outside"] == "José Nuñez"


async def test_timestamps_are_in_the_configured_zone() -> None:
    sim = SimulatedWebFones(KEYS, timezone="America/New_York")
    record = sim.add_record(KEY, started_at=T0)  # 20:54:53 UTC is 16:54:53 EDT
    assert record["call_timestamp"] == "2025-07-01 16:54:53"
    naive = sim.add_record(KEY, started_at=datetime(2025, 1, 2, 3, 4, 5))  # taken as local
    assert naive["call_timestamp"] == "2025-01-02 03:04:05"


async def test_raw_records_are_served_verbatim(
    sim: SimulatedWebFones, http: aiohttp.ClientSession
) -> None:
    sim.add_raw(KEY, {"rid": "not-an-int", "direction": "SIDEWAYS"})  # no call_timestamp
    sim.add_raw(KEY, {"rid": 5, "call_timestamp": "2025-07-01 10:00:00"})
    _, doc, _ = await poll(http, sim, "2025-07-01 12:00:00")
    assert doc["records"] == [{"rid": "not-an-int", "direction": "SIDEWAYS"}]
    _, doc, _ = await poll(http, sim, EPOCH)
    assert doc["count"] == 2
    assert sim.add_record(KEY)["rid"] > 211_000  # raw rids do not disturb generated ones


async def test_unknown_key_in_helpers_does_not_echo_it(sim: SimulatedWebFones) -> None:
    with pytest.raises(KeyError) as info:
        sim.add_record("wf_live_secret_typo")
    assert "wf_live_secret_typo" not in str(info.value)


# --- rate limit ------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_rate_limit_is_a_sliding_window(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with SimulatedWebFones(KEYS, rate_limit=(5, 1.0), clock=clock) as sim:

        async def statuses(n: int, key: str = KEY) -> list[int]:
            return [(await poll(http, sim, headers={"x-api-key": key}))[0] for _ in range(n)]

        assert await statuses(6) == [200] * 5 + [429]
        assert await statuses(1, OTHER) == [200]  # per key
        clock.now += 0.5
        assert await statuses(1) == [429]
        clock.now += 0.5  # exactly `per` later: the window is closed, the first five still count
        assert await statuses(1) == [429]
        clock.now += 0.001
        assert await statuses(6) == [200] * 5 + [429]
        _, doc, _ = await poll(http, sim)
        assert doc == {"error": "Too many requests for this API key, please try again later."}

    assert sim.max_window_count(1.0, key=KEY) == 5
    assert sim.max_window_count(1.0) == 6  # with OTHER's request
    assert sim.max_window_count(2.0, key=KEY) == 10
    assert sim.count_status(429) == 5
    assert sim.count_status(200) == 11
    assert all(KEY not in repr(entry) for entry in sim.request_log)
    assert {e.key for e in sim.request_log} == {key_id(KEY), key_id(OTHER)}


async def test_rate_limit_on_the_loop_clock(http: aiohttp.ClientSession) -> None:
    async with SimulatedWebFones(KEYS, rate_limit=(5, 1.0)) as sim:
        results = await asyncio.gather(*(poll(http, sim) for _ in range(8)))
        anonymous = await asyncio.gather(*(poll(http, sim, headers={}) for _ in range(6)))
    assert sorted(status for status, _, _ in results) == [200] * 5 + [429] * 3
    assert sim.max_window_count(1.0, key=KEY) == 5
    # Without a key the limit is per IP, with the spec's other message.
    assert [s for s, _, _ in anonymous].count(429) == 1
    assert {"error": "Too many requests from this IP, please try again later."} in [
        doc for _, doc, _ in anonymous
    ]


# --- faults ----------------------------------------------------------------------------------


async def test_status_faults(sim: SimulatedWebFones, http: aiohttp.ClientSession) -> None:
    sim.fail_next(
        Fault.status(500),
        Fault.status(429, headers={"Retry-After": "2"}),
        Fault.status(
            503, body=b"upstream down", headers={"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}
        ),
    )
    status, doc, _ = await poll(http, sim)
    assert status == 500
    assert doc["error"] == "Internal server error"
    assert doc["timestamp"].endswith("Z")
    status, doc, resp = await poll(http, sim)
    assert (status, resp.headers["Retry-After"]) == (429, "2")
    assert doc == {"error": "Too many requests for this API key, please try again later."}
    async with http.get(sim.url + PATH, params={"timestamp": EPOCH}) as resp:
        assert (resp.status, await resp.read()) == (503, b"upstream down")
        assert resp.headers["Retry-After"].endswith("GMT")
    assert (await poll(http, sim))[0] == 200  # the queue is used up
    assert [e.fault for e in sim.request_log] == ["status", "status", "status", None]


@pytest.mark.parametrize("name", sorted(MALFORMED))
async def test_malformed_bodies(
    sim: SimulatedWebFones, http: aiohttp.ClientSession, name: str
) -> None:
    fault = MALFORMED[name]
    assert isinstance(fault, RawFault)
    sim.fail_next(fault)
    async with http.get(sim.url + PATH, params={"timestamp": EPOCH}) as resp:
        assert resp.status == 200
        assert resp.content_type == fault.content_type
        assert await resp.read() == fault.body


async def test_slow_fault_answers_late(sim: SimulatedWebFones, http: aiohttp.ClientSession) -> None:
    sim.fail_next(Fault.slow(5.0), Fault.slow(0.1))
    with pytest.raises(TimeoutError):
        await poll(http, sim, timeout=aiohttp.ClientTimeout(total=0.1))
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert (await poll(http, sim))[0] == 200
    assert loop.time() - began >= 0.1


async def test_reset_fault_truncates_the_body(
    sim: SimulatedWebFones, http: aiohttp.ClientSession
) -> None:
    sim.add_record(KEY)
    sim.fail_next(Fault.reset())
    async with http.get(
        sim.url + PATH, params={"timestamp": EPOCH}, headers={"x-api-key": KEY}
    ) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    assert (await poll(http, sim))[0] == 200  # the next request is served normally


async def test_redirect_fault(sim: SimulatedWebFones, http: aiohttp.ClientSession) -> None:
    sim.fail_next(Fault.redirect("https://login.example.invalid/", 302))
    async with http.get(sim.url + PATH, allow_redirects=False) as resp:
        assert resp.status == 302
        assert resp.headers["Location"] == "https://login.example.invalid/"


async def test_per_key_faults(sim: SimulatedWebFones, http: aiohttp.ClientSession) -> None:
    sim.fail_next(Fault.status(502), key=OTHER)
    assert (await poll(http, sim))[0] == 200
    assert (await poll(http, sim, headers={"x-api-key": OTHER}))[0] == 502
    assert (await poll(http, sim, headers={"x-api-key": OTHER}))[0] == 200


async def test_random_faults_are_seeded(http: aiohttp.ClientSession) -> None:
    async def run(seed: int) -> list[int]:
        async with SimulatedWebFones(KEYS, seed=seed) as sim:
            sim.set_fault_rate(0.5, [Fault.status(500), Fault.status(502)])
            return [(await poll(http, sim))[0] for _ in range(30)]

    first = await run(3)
    assert set(first) == {200, 500, 502}
    assert await run(3) == first
    assert await run(4) != first


# --- producer --------------------------------------------------------------------------------


def stable_fields(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What a seed fixes (the wall clock decides call_timestamp, uniqueid and recording)."""
    fields = ("rid", "direction", "disposition", "cidname_outside", "duration", "billsec")
    return sorted(tuple(r[f] for f in fields) for r in records)


async def test_producer_is_bounded_and_reproducible() -> None:
    async def run(seed: int) -> tuple[int, list[dict[str, Any]]]:
        sim = SimulatedWebFones(KEYS, seed=seed)
        made = await sim.produce(KEY, rate=5000, count=40, burst_prob=0.3, late_prob=0.2)
        return made, sim.records(KEY)

    made, records = await run(9)
    assert made == len(records) == 40
    made_again, again = await run(9)
    assert (made_again, stable_fields(again)) == (made, stable_fields(records))
    assert stable_fields((await run(10))[1]) != stable_fields(records)


async def test_producer_bursts_and_late_records() -> None:
    sim = SimulatedWebFones(KEYS)
    started = datetime.now(UTC)
    await sim.produce(KEY, rate=5000, count=30, burst_prob=1.0, late_prob=0.0)
    stamps = [r["call_timestamp"] for r in sim.records(KEY)]
    assert len(set(stamps)) < len(stamps)

    await sim.produce(OTHER, rate=5000, count=10, burst_prob=0.0, late_prob=1.0, max_late=600)
    cutoff = sim.format_ts(started - timedelta(seconds=59))
    late = sim.records(OTHER)
    assert all(r["call_timestamp"] < cutoff and r["duration"] >= 60 for r in late)


async def test_producer_stops_after_duration_and_needs_a_bound() -> None:
    sim = SimulatedWebFones(KEYS)
    # Bounded only by its duration: were that ignored, it would produce until cancelled.
    made = await asyncio.wait_for(sim.produce(KEY, rate=100, duration=0.1), GENEROUS)
    assert made == len(sim.records(KEY)) < 60
    with pytest.raises(ValueError, match="duration or count"):
        await sim.produce(KEY, rate=1)


async def test_producer_cancels_cleanly() -> None:
    sim = SimulatedWebFones(KEYS)
    task = asyncio.create_task(sim.produce(KEY, rate=500, duration=30))
    await sim.wait_records(KEY, 5, timeout=GENEROUS)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    records = sim.records(KEY)
    assert len(records) >= 5
    assert all(r["rid"] in sim.visible_at for r in records)
    with pytest.raises(TimeoutError, match=r"of 1000 records"):
        await sim.wait_records(KEY, 1000, timeout=0.05)
