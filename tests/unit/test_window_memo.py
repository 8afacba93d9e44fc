"""The per-second caches and the per-account memo of :mod:`relay.core.window` against the plain
computation they replace: the window arithmetic as it was written before them (below, as the
oracle), over times next to every kind of zone transition and next to the microsecond rounding
edge of ``datetime.fromtimestamp``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.window import (
    START_NOW,
    PollPlan,
    StartMemo,
    WindowPolicy,
    _shift,
    format_ts,
    parse_ts,
    plan_poll,
    skew_limit,
    upstream_now,
)

# -- the oracle: plan_poll and skew_limit as they were, with no cache --------------------------

_MIN_TEXT = "0001-01-01 00:00:00"


def ref_plan(
    newest: str | None,
    last_sweep: float | None,
    now: float,
    policy: WindowPolicy,
    tz: ZoneInfo,
    *,
    sweep_from: str | None = None,
) -> PollPlan:
    if newest is None:
        return ref_without_cursor(last_sweep, now, policy, tz)
    cursor = parse_ts(newest)
    if cursor is None:
        since = _shift(upstream_now(now, tz), -policy.lookback, tz)
        return PollPlan(since=since, sweep=True, seed_only=False)
    due = (
        last_sweep is None
        or now - last_sweep >= policy.sweep_interval
        or now < last_sweep  # the wall clock moved back: sweeping is the safe side
    )
    if due:
        anchor = parse_ts(sweep_from)
        if anchor is not None and sweep_from is not None and sweep_from < newest:
            cursor = anchor
        since = ref_before_fall_back(_shift(cursor, -policy.lookback, tz), now, tz)
        return PollPlan(since=since, sweep=True, seed_only=False)
    since = ref_before_fall_back(_shift(cursor, -policy.recent_window, tz), now, tz)
    return PollPlan(since=since, sweep=False, seed_only=False)


def ref_before_fall_back(since: str, now: float, tz: ZoneInfo) -> str:
    start = parse_ts(since)
    if start is None:
        return since
    then = start.replace(tzinfo=tz).utcoffset()
    current = datetime.fromtimestamp(now, tz).utcoffset()
    if then is None or current is None or current >= then:
        return since
    try:
        return format_ts(start - (then - current))
    except OverflowError:
        return _MIN_TEXT


def ref_without_cursor(
    last_sweep: float | None, now: float, policy: WindowPolicy, tz: ZoneInfo
) -> PollPlan:
    start = None
    if policy.start_from != START_NOW:
        start = parse_ts(policy.start_from)
        if start is None:
            raise ValueError("start_from must be 'now' or a YYYY-MM-DD HH:MM:SS timestamp")
    if last_sweep is None:  # truly the first poll
        if start is None:
            since = _shift(upstream_now(now, tz), -policy.lookback, tz)
            return PollPlan(since=since, sweep=True, seed_only=True)
        return PollPlan(since=format_ts(start), sweep=True, seed_only=False)
    # Polled before, but no record was ever seen, so no cursor exists. With a fixed start,
    # read from it again: nothing was stored, so this costs only what exists, and the first
    # records may be stamped before the last look (one appearing up to `lookback` behind
    # another would be missed by a window that starts at the last look).
    if start is not None:
        return PollPlan(since=format_ts(start), sweep=True, seed_only=False)
    # start_from=now: seeding again would swallow whatever arrived since the last poll, so the
    # last successful look stands in for the cursor (the earlier of it and now, should the
    # clock have moved back), and what is found is delivered.
    since = _shift(upstream_now(min(last_sweep, now), tz), -policy.lookback, tz)
    return PollPlan(since=ref_before_fall_back(since, now, tz), sweep=True, seed_only=False)


def ref_skew_limit(now: float, tz: ZoneInfo, max_clock_skew: float) -> str:
    return _shift(upstream_now(now, tz), max_clock_skew, tz)


# -- times next to transitions -------------------------------------------------------------------

ZONES = [
    ZoneInfo(name)
    for name in (
        "UTC",
        "America/New_York",  # an hour back and forth
        "Europe/Dublin",  # negative DST in the tz database
        "Australia/Lord_Howe",  # half an hour
        "Asia/Kathmandu",  # +05:45, never changes
        "Pacific/Apia",  # skipped a whole day (2011-12-30)
    )
]


def utc(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()


# Instants at or next to a transition of at least one of the zones above (UTC).
EDGES = [
    utc("2025-03-09 07:00:00"),  # New York springs forward
    utc("2025-11-02 06:00:00"),  # New York falls back
    utc("2025-03-30 01:00:00"),  # Dublin
    utc("2025-10-26 01:00:00"),
    utc("2025-04-05 15:00:00"),  # Lord Howe, 02:00 -> 01:30
    utc("2025-10-04 15:30:00"),
    utc("2011-12-30 10:00:00"),  # Apia jumps a day
    utc("2038-11-07 06:00:00"),  # past the TZif tables: the POSIX rule
]
# Fractions of a second, among them the ones that fromtimestamp rounds up to the next second.
FRACTIONS = [0.0, 0.25, 0.5, 0.999998, 0.9999989, 0.999999, 0.9999994, 0.9999995, 0.9999996]

times = st.builds(
    lambda edge, shift, frac: edge + shift + frac,
    st.sampled_from(EDGES),
    st.integers(-7300, 7300),
    st.sampled_from(FRACTIONS) | st.floats(0.0, 1.0, exclude_max=True),
)
texts = st.builds(
    lambda edge, shift, tz: format_ts(upstream_now(edge + shift, tz)),
    st.sampled_from(EDGES),
    st.integers(-7300, 7300),
    st.sampled_from(ZONES),
)
cursors = st.none() | texts | st.sampled_from(["not a time", "2025-13-01 00:00:00"])


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.lists(times, min_size=1, max_size=12),
    st.sampled_from([0, 1, 5, 300, 3600]) | st.sampled_from([0.5, 2.75]),
)
def test_skew_limit_is_the_plain_computation(tz: ZoneInfo, nows: list[float], skew: float) -> None:
    # Several times in a row, so that the per-second cache answers for most of them.
    for now in sorted(nows):
        assert skew_limit(now, tz, skew) == ref_skew_limit(now, tz, skew)
        assert skew_limit(now, tz, skew) == ref_skew_limit(now, tz, skew)


def test_a_time_that_reads_as_the_next_second_is_not_taken_from_the_cache() -> None:
    """``fromtimestamp`` rounds k + 0.9999996 up to k + 1: cached for k, it would be a second
    behind (this is what the microsecond guard in ``_whole_second`` is for)."""
    tz = ZoneInfo("America/New_York")
    k = utc("2025-11-02 05:59:59")  # the last second before New York falls back
    first = skew_limit(float(k), tz, 0)
    assert first == "2025-11-02 01:59:59"
    assert skew_limit(k + 0.9999996, tz, 0) == ref_skew_limit(k + 0.9999996, tz, 0)
    assert skew_limit(k + 0.9999996, tz, 0) == "2025-11-02 01:00:00"  # the second pass begins
    assert skew_limit(k + 0.5, tz, 0) == first


polls = st.tuples(
    cursors,  # newest
    st.none() | st.integers(-4000, 4000),  # last sweep, seconds from now
    times,  # now
    st.none() | texts,  # sweep_from
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(ZONES),
    st.sampled_from([START_NOW, "2025-01-01 00:00:00"]),
    st.lists(polls, min_size=1, max_size=20),
)
def test_plan_poll_with_a_memo_plans_what_the_plain_computation_plans(
    tz: ZoneInfo, start_from: str, sequence: list[tuple[str | None, int | None, float, str | None]]
) -> None:
    policy = WindowPolicy(
        recent_window=600, lookback=7200, sweep_interval=3600, start_from=start_from
    )
    memo = StartMemo()  # one account's memo across all its polls, as the poller keeps it
    for newest, since_sweep, now, sweep_from in sequence:
        last_sweep = None if since_sweep is None else now - since_sweep
        expected = ref_plan(newest, last_sweep, now, policy, tz, sweep_from=sweep_from)
        args = (newest, last_sweep, now, policy, tz)
        assert plan_poll(*args, sweep_from=sweep_from, memo=memo) == expected
        assert plan_poll(*args, sweep_from=sweep_from) == expected
        # and again, the memo answering
        assert plan_poll(*args, sweep_from=sweep_from, memo=memo) == expected


def test_the_memo_follows_a_moving_cursor_and_stays_small() -> None:
    tz = ZoneInfo("UTC")
    policy = WindowPolicy(
        recent_window=600, lookback=7200, sweep_interval=3600, start_from=START_NOW
    )
    memo = StartMemo()
    now = utc("2025-07-01 12:00:00")
    for minute in range(30):
        cursor = datetime(2025, 7, 1, 11, minute)
        plan = plan_poll(format_ts(cursor), now, now + minute, policy, tz, memo=memo)
        assert plan == PollPlan(format_ts(cursor - timedelta(minutes=10)), False, False)
        assert len(memo._entries) <= StartMemo.SIZE
