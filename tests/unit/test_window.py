from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relay.core.window import (
    PollPlan,
    ValidRecord,
    WindowPolicy,
    advance_cursor,
    format_ts,
    parse_ts,
    plan_poll,
    prune_before,
    upstream_now,
    validate_records,
)

NY = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")
POLICY = WindowPolicy(recent_window=600, lookback=7200, sweep_interval=3600, start_from="now")


def at(local: str, tz: ZoneInfo = UTC_ZONE, fold: int = 0) -> float:
    """Unix time of a wall-clock reading in ``tz`` (``fold=1``: the second pass of a repeat)."""
    return datetime.strptime(local, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz, fold=fold).timestamp()


# --- parse_ts / format_ts / upstream_now ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-07-01 20:54:53", datetime(2025, 7, 1, 20, 54, 53)),
        ("2024-02-29 00:00:00", datetime(2024, 2, 29)),
        ("0001-01-01 00:00:00", datetime(1, 1, 1)),
        ("9999-12-31 23:59:59", datetime(9999, 12, 31, 23, 59, 59)),
        ("1970-01-01 00:00:00", datetime(1970, 1, 1)),
        ("2025-02-29 00:00:00", None),  # not a leap year
        ("0000-01-01 00:00:00", None),
        ("2025-13-01 00:00:00", None),
        ("2025-07-01 24:00:00", None),
        ("2025-07-01 23:59:60", None),  # no leap seconds
        ("2025-7-1 1:2:3", None),  # strptime would accept this
        ("2025-07-01T20:54:53", None),
        ("2025-07-01 20:54:53.123", None),
        ("2025-07-01 20:54:53Z", None),
        ("2025-07-01 20:54:53 ", None),
        (" 2025-07-01 20:54:53", None),
        ("2025-07-01 20:54:53\n", None),
        ("2025-07-01  20:54:53", None),
        ("２０２５-07-01 20:54:53", None),  # non-ASCII digits
        ("2025-07-01", None),
        ("", None),
        (None, None),
        (1751403293, None),
        (b"2025-07-01 20:54:53", None),
        (datetime(2025, 7, 1), None),
    ],
)
def test_parse_ts(text: object, expected: datetime | None) -> None:
    assert parse_ts(text) == expected


@pytest.mark.parametrize(
    ("dt", "text"),
    [
        (datetime(2025, 7, 1, 20, 54, 53), "2025-07-01 20:54:53"),
        (datetime(2025, 7, 1, 20, 54, 53, 999_999), "2025-07-01 20:54:53"),
        (datetime(999, 1, 2, 3, 4, 5), "0999-01-02 03:04:05"),
        (datetime(2025, 7, 1, 8, 0, tzinfo=UTC), "2025-07-01 08:00:00"),
    ],
)
def test_format_ts(dt: datetime, text: str) -> None:
    assert format_ts(dt) == text
    assert parse_ts(text) == dt.replace(microsecond=0, tzinfo=None)


@pytest.mark.parametrize(
    ("now", "tz", "text", "fold"),
    [
        (at("2025-07-01 16:00:00"), NY, "2025-07-01 12:00:00", 0),
        (at("2025-01-15 17:00:00"), NY, "2025-01-15 12:00:00", 0),
        (at("2025-07-01 16:00:00"), UTC_ZONE, "2025-07-01 16:00:00", 0),
        (at("2025-11-02 05:30:00"), NY, "2025-11-02 01:30:00", 0),  # first pass (EDT)
        (at("2025-11-02 06:30:00"), NY, "2025-11-02 01:30:00", 1),  # second pass (EST)
        (at("2025-03-09 07:00:00"), NY, "2025-03-09 03:00:00", 0),  # 02:00-03:00 never happens
    ],
)
def test_upstream_now(now: float, tz: ZoneInfo, text: str, fold: int) -> None:
    local = upstream_now(now, tz)
    assert local.tzinfo is None
    assert format_ts(local) == text
    assert local.fold == fold


# --- plan_poll ------------------------------------------------------------------------------

NOON = at("2025-07-01 12:00:00")


@pytest.mark.parametrize(
    ("newest", "last_sweep", "now", "policy", "tz", "plan"),
    [
        # First poll, start_from=now: seed from the last look-back, deliver nothing.
        (None, None, NOON, POLICY, UTC_ZONE, PollPlan("2025-07-01 10:00:00", True, True)),
        (
            None,
            None,
            at("2025-07-01 12:00:00", NY),
            POLICY,
            NY,
            PollPlan("2025-07-01 10:00:00", True, True),
        ),
        # First poll from a fixed start: deliver everything after it.
        (
            None,
            None,
            NOON,
            WindowPolicy(600, 7200, 3600, "2025-06-01 00:00:00"),
            UTC_ZONE,
            PollPlan("2025-06-01 00:00:00", True, False),
        ),
        # Never swept: sweep.
        (
            "2025-07-01 11:59:00",
            None,
            NOON,
            POLICY,
            UTC_ZONE,
            PollPlan("2025-07-01 09:59:00", True, False),
        ),
        # Swept recently: only the recent window.
        (
            "2025-07-01 11:59:00",
            NOON - 3599,
            NOON,
            POLICY,
            UTC_ZONE,
            PollPlan("2025-07-01 11:49:00", False, False),
        ),
        # Exactly sweep_interval since the last sweep: due.
        (
            "2025-07-01 11:59:00",
            NOON - 3600,
            NOON,
            POLICY,
            UTC_ZONE,
            PollPlan("2025-07-01 09:59:00", True, False),
        ),
        # The wall clock went backwards past the last sweep: sweep rather than trust it.
        (
            "2025-07-01 11:59:00",
            NOON + 10,
            NOON,
            POLICY,
            UTC_ZONE,
            PollPlan("2025-07-01 09:59:00", True, False),
        ),
        # Same second as the cursor, crossing midnight and a year.
        (
            "2025-01-01 00:05:00",
            NOON,
            NOON,
            POLICY,
            UTC_ZONE,
            PollPlan("2024-12-31 23:55:00", False, False),
        ),
        # Decades-old cursor: arithmetic still right.
        (
            "1990-01-01 01:00:00",
            None,
            NOON,
            POLICY,
            NY,
            PollPlan("1989-12-31 23:00:00", True, False),
        ),
        # So old that the look-back leaves datetime's range: clamped, not crashed.
        (
            "0001-01-01 00:30:00",
            None,
            NOON,
            POLICY,
            NY,
            PollPlan("0001-01-01 00:00:00", True, False),
        ),
        # Seeded (or swept) before but never saw a record, so still no cursor: no second seed
        # (it would swallow the first call of a quiet account); read from the last look.
        (None, NOON - 30, NOON, POLICY, UTC_ZONE, PollPlan("2025-07-01 09:59:30", True, False)),
        # ... however long ago that was (the relay was down for a week).
        (
            None,
            NOON - 7 * 86400,
            NOON,
            POLICY,
            UTC_ZONE,
            PollPlan("2025-06-24 10:00:00", True, False),
        ),
        # ... never after now (the wall clock moved back) ...
        (None, NOON + 600, NOON, POLICY, UTC_ZONE, PollPlan("2025-07-01 10:00:00", True, False)),
        # With a fixed start_from, from the start again: nothing was stored, so it is cheap, and
        # the first records may be stamped before the last look.
        (
            None,
            NOON - 30,
            NOON,
            WindowPolicy(600, 7200, 3600, "2025-07-01 11:00:00"),
            UTC_ZONE,
            PollPlan("2025-07-01 11:00:00", True, False),
        ),
        (
            None,
            NOON - 30,
            NOON,
            WindowPolicy(600, 7200, 3600, "2025-06-01 00:00:00"),
            UTC_ZONE,
            PollPlan("2025-06-01 00:00:00", True, False),
        ),
        # A cursor that does not parse: sweep from the upstream's now, and deliver.
        ("garbage", NOON, NOON, POLICY, UTC_ZONE, PollPlan("2025-07-01 10:00:00", True, False)),
    ],
)
def test_plan_poll(
    newest: str | None,
    last_sweep: float | None,
    now: float,
    policy: WindowPolicy,
    tz: ZoneInfo,
    plan: PollPlan,
) -> None:
    assert plan_poll(newest, last_sweep, now, policy, tz) == plan


@pytest.mark.parametrize(
    ("newest", "window", "since"),
    [
        # Spring forward (02:00 EST -> 03:00 EDT): two real hours back from 03:30 EDT is
        # 00:30 EST; naive wall-clock arithmetic would say 01:30 (one real hour only).
        ("2025-03-09 03:30:00", 7200, "2025-03-09 00:30:00"),
        ("2025-03-09 03:05:00", 600, "2025-03-09 01:55:00"),
        ("2025-03-09 04:00:00", 600, "2025-03-09 03:50:00"),
        # Fall back (02:00 EDT -> 01:00 EST): the repeated hour is read as its first pass,
        # which can only widen the window.
        ("2025-11-02 01:30:00", 7200, "2025-11-01 23:30:00"),
        ("2025-11-02 02:30:00", 7200, "2025-11-02 01:30:00"),
        ("2025-11-02 02:10:00", 1200, "2025-11-02 01:50:00"),
        ("2025-11-02 03:00:00", 600, "2025-11-02 02:50:00"),
    ],
)
def test_plan_poll_across_dst(newest: str, window: float, since: str) -> None:
    policy = WindowPolicy(recent_window=window, lookback=window, sweep_interval=1, start_from="now")
    assert plan_poll(newest, None, NOON, policy, NY).since == since  # sweep
    assert plan_poll(newest, NOON, NOON, policy, NY).since == since  # recent window


def test_seed_during_second_pass_of_fall_back_hour() -> None:
    now = at("2025-11-02 01:30:00", NY, fold=1)  # 06:30 UTC, EST
    policy = WindowPolicy(600, 3600, 3600, "now")
    # One real hour before 01:30 EST is 01:30 EDT: the same text.
    assert plan_poll(None, None, now, policy, NY) == PollPlan("2025-11-02 01:30:00", True, True)


@pytest.mark.parametrize(
    ("sweep_from", "since"),
    [
        # The sweep reads back from the cursor as it was after the last sweep, so a record
        # stamped up to `lookback` behind the newest one when it appeared is still in range.
        ("2025-07-01 11:30:00", "2025-07-01 09:30:00"),
        # No anchor, a broken one, or one ahead of the cursor: from the cursor.
        (None, "2025-07-01 09:59:00"),
        ("garbage", "2025-07-01 09:59:00"),
        ("2025-07-01 12:30:00", "2025-07-01 09:59:00"),
    ],
)
def test_plan_poll_sweeps_from_the_last_sweeps_cursor(sweep_from: str | None, since: str) -> None:
    newest = "2025-07-01 11:59:00"
    plan = plan_poll(newest, None, NOON, POLICY, UTC_ZONE, sweep_from=sweep_from)
    assert plan == PollPlan(since, True, False)
    # Between sweeps the anchor plays no part: the recent window follows the cursor.
    recent = plan_poll(newest, NOON, NOON, POLICY, UTC_ZONE, sweep_from=sweep_from)
    assert recent == PollPlan("2025-07-01 11:49:00", False, False)


FALL_BACK = datetime(2025, 11, 2, 6, 0, tzinfo=UTC).timestamp()  # 02:00 EDT -> 01:00 EST


@pytest.mark.parametrize(
    ("newest", "now", "since"),
    [
        # In the repeated hour, calls are stamped with text behind a first-pass cursor: the
        # window reaches back one more hour so that they are read at all.
        ("2025-11-02 01:50:00", FALL_BACK + 7 * 60, "2025-11-02 00:40:00"),
        # ... also after it, while the window still starts before the change.
        ("2025-11-02 01:59:00", FALL_BACK + 65 * 60, "2025-11-02 00:49:00"),
        # Far from any change: the plain recent window.
        ("2025-11-02 03:30:00", FALL_BACK + 3 * 3600, "2025-11-02 03:20:00"),
        # Across a spring-forward the real-time shift already widens the window.
        ("2025-03-09 03:05:00", at("2025-03-09 03:06:00", NY), "2025-03-09 01:55:00"),
    ],
)
def test_windows_reach_back_across_a_fall_back(newest: str, now: float, since: str) -> None:
    policy = WindowPolicy(recent_window=600, lookback=600, sweep_interval=3600, start_from="now")
    assert plan_poll(newest, now, now, policy, NY) == PollPlan(since, False, False)
    assert plan_poll(newest, None, now, policy, NY) == PollPlan(since, True, False)


@pytest.mark.parametrize("last_sweep", [None, NOON - 30])
@pytest.mark.parametrize("start_from", ["yesterday", "2025-6-1 00:00:00", "", "NOW"])
def test_plan_poll_rejects_bad_start_from(start_from: str, last_sweep: float | None) -> None:
    with pytest.raises(ValueError, match="start_from"):
        plan_poll(None, last_sweep, NOON, WindowPolicy(600, 7200, 3600, start_from), UTC_ZONE)


# --- advance_cursor -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "seen", "tz", "expected"),
    [
        (None, [], UTC_ZONE, None),
        ("2025-07-01 11:00:00", [], UTC_ZONE, "2025-07-01 11:00:00"),
        (
            None,
            ["2025-07-01 11:00:00", "2025-07-01 11:30:00", "2025-07-01 10:00:00"],
            UTC_ZONE,
            "2025-07-01 11:30:00",
        ),
        # Never backwards.
        ("2025-07-01 11:45:00", ["2025-07-01 11:30:00"], UTC_ZONE, "2025-07-01 11:45:00"),
        # Same second as the cursor.
        ("2025-07-01 11:30:00", ["2025-07-01 11:30:00"], UTC_ZONE, "2025-07-01 11:30:00"),
        # Up to max_clock_skew (300 s) ahead is believed, inclusive; beyond it is not.
        (None, ["2025-07-01 12:05:00"], UTC_ZONE, "2025-07-01 12:05:00"),
        (None, ["2025-07-01 12:05:01"], UTC_ZONE, None),
        ("2025-07-01 11:00:00", ["2025-07-01 12:05:01"], UTC_ZONE, "2025-07-01 11:00:00"),
        (
            None,
            ["2030-01-01 00:00:00", "2025-07-01 11:30:00", "9999-12-31 23:59:59"],
            UTC_ZONE,
            "2025-07-01 11:30:00",
        ),
        # Unparsable text never becomes the cursor (nor does it sort above real times).
        (
            None,
            ["garbage", "2025-07-01 11:30:00", "2025-07-01 9:00:00"],
            UTC_ZONE,
            "2025-07-01 11:30:00",
        ),
        (None, ["1990-01-01 00:00:00"], UTC_ZONE, "1990-01-01 00:00:00"),
        # A cursor already in the future (older relay, clock fixed since) stays where it is.
        ("2031-01-01 00:00:00", ["2025-07-01 11:30:00"], UTC_ZONE, "2031-01-01 00:00:00"),
        # New York: 08:00 EDT is the upstream's now; a record stamped in UTC (12:00) by a
        # misconfigured upstream looks 4 h ahead and must not drag the cursor along.
        (None, ["2025-07-01 08:04:00"], NY, "2025-07-01 08:04:00"),
        (None, ["2025-07-01 08:05:00", "2025-07-01 12:00:00"], NY, "2025-07-01 08:05:00"),
    ],
)
def test_advance_cursor(
    current: str | None, seen: list[str], tz: ZoneInfo, expected: str | None
) -> None:
    now = at("2025-07-01 12:00:00") if tz is UTC_ZONE else at("2025-07-01 08:00:00", NY)
    assert advance_cursor(current, seen, now, tz, 300) == expected


def test_advance_cursor_takes_any_iterable() -> None:
    stamps = (ts for ts in ["2025-07-01 11:00:00", "2025-07-01 11:01:00"])
    assert advance_cursor(None, stamps, NOON, UTC_ZONE, 0) == "2025-07-01 11:01:00"


# --- prune_before ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("newest", "lookback", "margin", "horizon"),
    [
        ("2025-07-01 12:00:00", 7200, 3600, "2025-07-01 09:00:00"),
        ("2025-07-01 12:00:00", 7200, 0, "2025-07-01 10:00:00"),
        ("2025-01-01 00:30:00", 1800, 1, "2024-12-31 23:59:59"),
        ("0001-01-01 00:30:00", 7200, 3600, "0001-01-01 00:00:00"),
    ],
)
def test_prune_before(newest: str, lookback: float, margin: float, horizon: str) -> None:
    assert prune_before(newest, lookback, margin) == horizon


def test_prune_before_rejects_bad_cursor() -> None:
    with pytest.raises(ValueError):
        prune_before("2025-07-01", 7200, 3600)


# --- validate_records -----------------------------------------------------------------------

TS = "2025-07-01 20:54:53"


@pytest.mark.parametrize(
    ("raw", "rid"),
    [
        ({"rid": 211159, "call_timestamp": TS}, 211159),
        ({"rid": 0, "call_timestamp": TS}, 0),
        ({"rid": "42", "call_timestamp": TS}, 42),
        ({"rid": "0042", "call_timestamp": TS}, 42),
        ({"rid": 2**63 - 1, "call_timestamp": TS}, 2**63 - 1),
        ({"call_timestamp": TS, "rid": 7, "extra": {"x": [1]}, "z": None}, 7),
    ],
)
def test_valid_record(raw: dict[str, Any], rid: int) -> None:
    snapshot = dict(raw)
    valid, rejected = validate_records([raw])
    assert rejected == []
    assert valid == [ValidRecord(rid, TS, raw)]
    assert valid[0].record is raw and raw == snapshot  # verbatim, untouched


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ([1, 2], "record is not an object"),
        ("211159", "record is not an object"),
        (None, "record is not an object"),
        ({"call_timestamp": TS}, "rid missing"),
        ({"rid": None, "call_timestamp": TS}, "rid missing"),
        ({"rid": True, "call_timestamp": TS}, "rid not an integer"),
        ({"rid": False, "call_timestamp": TS}, "rid not an integer"),
        ({"rid": 1.0, "call_timestamp": TS}, "rid not an integer"),
        ({"rid": -1, "call_timestamp": TS}, "rid not an integer"),
        ({"rid": "", "call_timestamp": TS}, "rid not an integer"),
        ({"rid": " 42", "call_timestamp": TS}, "rid not an integer"),
        ({"rid": "-42", "call_timestamp": TS}, "rid not an integer"),
        ({"rid": "4２", "call_timestamp": TS}, "rid not an integer"),
        ({"rid": "0x2a", "call_timestamp": TS}, "rid not an integer"),
        ({"rid": [1], "call_timestamp": TS}, "rid not an integer"),
        ({"rid": 2**63, "call_timestamp": TS}, "rid out of range"),
        ({"rid": "9" * 20, "call_timestamp": TS}, "rid out of range"),
        ({"rid": "9" * 5000, "call_timestamp": TS}, "rid out of range"),
        ({"rid": 1}, "call_timestamp missing"),
        ({"rid": 1, "call_timestamp": None}, "call_timestamp missing"),
        ({"rid": 1, "call_timestamp": ""}, "call_timestamp malformed"),
        ({"rid": 1, "call_timestamp": 1751403293}, "call_timestamp malformed"),
        ({"rid": 1, "call_timestamp": "2025-07-01T20:54:53Z"}, "call_timestamp malformed"),
        ({"rid": 1, "call_timestamp": "2025-02-30 00:00:00"}, "call_timestamp malformed"),
    ],
)
def test_rejected_record(raw: Any, reason: str) -> None:
    assert validate_records([raw]) == ([], [(raw, reason)])


def test_duplicates_within_one_response() -> None:
    first = {"rid": 7, "call_timestamp": TS, "disposition": "ANSWERED"}
    same = dict(first)  # identical content, different object
    changed = {"rid": 7, "call_timestamp": TS, "disposition": "BUSY"}
    as_text = {"rid": "7", "call_timestamp": TS, "disposition": "ANSWERED"}
    other = {"rid": 8, "call_timestamp": TS}
    valid, rejected = validate_records([first, same, changed, other, as_text, same])
    # The pure duplicates vanish; the conflicting ones are kept aside for inspection.
    assert [v.record for v in valid] == [first, other]
    assert valid[0].record is first
    assert rejected == [
        (changed, "duplicate rid in response"),
        (as_text, "duplicate rid in response"),
    ]


def test_invalid_occurrence_does_not_claim_the_rid() -> None:
    broken = {"rid": 9, "call_timestamp": "soon"}
    good = {"rid": 9, "call_timestamp": TS}
    valid, rejected = validate_records([broken, good])
    assert valid == [ValidRecord(9, TS, good)]
    assert rejected == [(broken, "call_timestamp malformed")]


def test_order_and_mixture_preserved() -> None:
    records: list[Any] = [
        {"rid": 3, "call_timestamp": "2025-07-01 10:00:00"},
        "junk",
        {"rid": 1, "call_timestamp": "2025-07-01 09:00:00"},
        {"rid": 2},
    ]
    valid, rejected = validate_records(records)
    assert [v.rid for v in valid] == [3, 1]
    assert [reason for _, reason in rejected] == [
        "record is not an object",
        "call_timestamp missing",
    ]
    assert validate_records([]) == ([], [])
