"""Property: for any upstream history the API allows, every record is queued exactly once per
matching subscriber (no crash).

The API allows: records appear over time, several may share one second, and a record may appear
late, stamped less than ``lookback`` behind the newest record there is when it appears (a long
call is written when it ends; before any record exists, behind the upstream's clock). The bound
is exclusive because the API returns records strictly *after* a timestamp: a record stamped
exactly ``lookback`` behind sits on the edge of the sweep and is not returned. Polls fail at
random. Hypothesis writes the histories; the real
:class:`~relay.poller.AccountPoller` and the real SQLite store run them against an in-process
upstream with a controllable clock, so nothing sleeps.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.config.schema import Settings
from relay.core.errors import UpstreamError
from relay.ingest.body import FetchResult
from relay.ingest.poller import AccountPoller
from relay.ingest.upstream import Credentials
from relay.store.sqlite.store import SqliteStore

LOOKBACK = 600  # seconds
RECENT = 60
SWEEP = 120
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class FakeUpstream:
    """``records_after_timestamp`` over an in-memory history, in the simulator's order."""

    tz: ZoneInfo
    rows: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    fail: bool = False
    polls: list[str] = field(default_factory=list)

    async def fetch(self, credentials: Credentials, since: str) -> FetchResult:
        self.polls.append(since)
        if self.fail:
            raise UpstreamError("503 server error: scripted", status=503)
        found = [dict(r) for ts, _, r in sorted(self.rows) if ts > since]
        return FetchResult(records=found, count=len(found), nbytes=0)

    def add(self, rid: int, moment: datetime) -> None:
        ts = moment.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S")
        self.rows.append((ts, rid, {"rid": rid, "call_timestamp": ts, "disposition": "ANSWERED"}))


class NoBudget:
    async def acquire(self) -> None:
        return None

    def pause(self, seconds: float) -> None:
        return None


def relay_settings(
    timezone: str, lookback: int, recent: int, sweep: int, start_from: str = "2000-01-01 00:00:00"
) -> Settings:
    return Settings.model_validate(
        {
            "state": "unused.db",
            "upstream": {
                "base_url": "http://127.0.0.1:9",
                "timezone": timezone,
                "lookback": lookback,
                "recent_window": recent,
                "sweep_interval": sweep,
                "start_from": start_from,
                "accounts": [
                    {"name": "alpha", "api_key": "key-alpha-123456"},
                    {"name": "bravo", "api_key": "key-bravo-123456"},
                ],
            },
            "subscribers": [
                {"name": "all", "url": "http://127.0.0.1:9/a", "secret": SECRET},
                {
                    "name": "only-alpha",
                    "url": "http://h/b",
                    "secret": SECRET,
                    "accounts": ["alpha"],
                },
                {
                    "name": "only-bravo",
                    "url": "http://h/c",
                    "secret": SECRET,
                    "accounts": ["bravo"],
                },
            ],
        }
    )


SECRET = "whsec_" + "A" * 43 + "="

# One step of a history: let time pass, make records appear, or poll (which may fail).
wait = st.tuples(st.just("wait"), st.integers(0, 90))
appear = st.tuples(
    st.just("appear"),
    st.integers(1, 4),  # how many, sharing one second
    st.one_of(st.just(0), st.integers(0, 2 * LOOKBACK)),  # how long ago the call started
)
poll = st.tuples(st.just("poll"), st.booleans())  # True: this poll fails
restart = st.tuples(st.just("restart"))  # a new poller over the same state file
histories = st.lists(st.one_of(wait, appear, poll, poll, restart), max_size=60)


async def run_history(
    steps: list[tuple[Any, ...]], timezone: str, start: datetime, start_from: str | None = None
) -> None:
    """Run ``steps``, then check every record was queued once. With ``start_from="now"`` the
    history must begin with a poll, before any record exists (the seed delivers nothing)."""
    tz = ZoneInfo(timezone)
    upstream = FakeUpstream(tz)
    clock = [start.timestamp()]
    conf = relay_settings(timezone, LOOKBACK, RECENT, SWEEP, *([start_from] if start_from else []))
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(str(Path(tmp) / "state.db"))
        await store.open()
        try:

            async def start() -> AccountPoller:
                poller = AccountPoller(
                    conf.upstream.accounts[0],
                    conf,
                    store,
                    upstream,  # type: ignore[arg-type]
                    NoBudget(),  # type: ignore[arg-type]
                    lambda subscribers: None,
                    clock=lambda: clock[0],
                )
                await poller.load()  # what run() does first
                return poller

            poller = await start()
            newest: datetime | None = None
            rid = 1000

            async def poll_once(fail: bool) -> None:
                upstream.fail = fail
                try:
                    await poller.poll_once()
                except UpstreamError:
                    assert fail

            for step in steps:
                now = datetime.fromtimestamp(clock[0], UTC)
                if step[0] == "wait":
                    clock[0] += step[1]
                elif step[0] == "restart":
                    poller = await start()
                elif step[0] == "appear":
                    _, count, ago = step
                    started = (now - timedelta(seconds=ago)).replace(microsecond=0)
                    # The API's promise: less than `lookback` late.
                    reference = now.replace(microsecond=0) if newest is None else newest
                    started = max(started, reference - timedelta(seconds=LOOKBACK - 1))
                    for _ in range(count):
                        rid += 1
                        upstream.add(rid, started)
                    newest = started if newest is None else max(newest, started)
                else:
                    await poll_once(step[1])
                clock[0] += 0.25  # every step takes a little time
            # Then the upstream behaves for a while: two sweeps' worth of good polls.
            for _ in range(2):
                clock[0] += SWEEP + 1
                await poll_once(False)

            produced = sorted(rid for _, rid, _ in upstream.rows)
            for subscriber, expected in (
                ("all", produced),
                ("only-alpha", produced),
                ("only-bravo", []),
            ):
                claimed = await store.claim(subscriber, 100_000, clock[0] + 1, 60)
                got = sorted(d.rid for d in claimed)
                assert got == expected, (subscriber, upstream.polls)
        finally:
            await store.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories)
def test_every_record_is_queued_exactly_once_per_matching_subscriber(steps) -> None:
    asyncio.run(run_history(steps, "UTC", T0))


# Ten minutes before a fall-back (New York: 02:00 EDT becomes 01:00 EST, so an hour of text
# timestamps repeats) and before a spring-forward (Berlin: 02:00 CET becomes 03:00 CEST).
DST_STARTS = {
    "America/New_York": datetime(2025, 11, 2, 5, 50, tzinfo=UTC),
    "Europe/Berlin": datetime(2025, 3, 30, 0, 50, tzinfo=UTC),
}


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories, st.sampled_from(sorted(DST_STARTS)))
def test_detection_across_daylight_saving_changes(steps, timezone) -> None:
    asyncio.run(run_history(steps, timezone, DST_STARTS[timezone]))


def test_a_call_in_the_repeated_hour_is_caught_with_a_short_lookback() -> None:
    # Its text (01:0x EST) sorts behind the cursor (01:5x EDT) by more than the look-back.
    steps = [("appear", 1, 0), ("poll", False)]
    steps += [("wait", 90), ("poll", False)] * 8  # into the second pass of 01:xx
    steps += [("appear", 1, 0), ("poll", False)]
    asyncio.run(run_history(steps, "America/New_York", DST_STARTS["America/New_York"]))


def test_a_late_record_is_caught_after_the_cursor_moved_past_its_lookback() -> None:
    # What a sweep reading back from the *current* cursor misses: a record appears stamped
    # almost `lookback` behind the newest one, then a newer record moves the cursor on before
    # the next sweep. The sweep must read back from where the cursor stood after the last one.
    steps = [
        ("appear", 1, 0),  # A at t0
        ("poll", False),  # a sweep: cursor = anchor = t0
        ("appear", 1, 2 * LOOKBACK),  # C, clamped to t0 - LOOKBACK + 1s
        ("wait", 60),
        ("appear", 1, 0),  # D at t0 + 60
        ("poll", False),  # not a sweep yet: reads t0 - RECENT onwards, cursor = t0 + 60
    ]  # then the closing sweeps, which must still reach back to C
    asyncio.run(run_history(steps, "UTC", T0))
    # The same with a restart before those sweeps: where the last sweep left the cursor must
    # come from the state file, not from memory.
    asyncio.run(run_history([*steps, ("restart",)], "UTC", T0))


def test_start_from_now_catches_a_late_record_before_the_first_one() -> None:
    # An account with no record yet under start_from=now: B appears stamped almost `lookback`
    # ago, then A stamped almost `lookback` behind B, both between two polls. A is more than
    # `lookback` behind the last poll, which is where a cursor-less account reads back from.
    steps: list[tuple[Any, ...]] = [("poll", False)]  # the seed: nothing exists yet
    steps += [("wait", 60), ("poll", False)] * (2 * LOOKBACK // 60)
    steps += [("appear", 1, 2 * LOOKBACK), ("appear", 1, 3 * LOOKBACK), ("poll", False)]
    asyncio.run(run_history(steps, "UTC", T0, start_from="now"))
    asyncio.run(run_history([*steps, ("restart",)], "UTC", T0, start_from="now"))
