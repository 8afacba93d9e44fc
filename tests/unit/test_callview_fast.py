"""The call view's shortcuts change only its cost: the lazy view a filter reads is the view's own
``as_dict()``, and the per-hour time-zone cache gives what a full conversion gives."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import callview
from relay.core.callview import LazyCallView, call_view

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",  # 30-minute DST shift
    "Asia/Kolkata",
    "America/St_Johns",  # half-hour offset
    "Pacific/Chatham",  # 45-minute offset
    "Africa/Casablanca",  # suspends DST for Ramadan
    "Europe/Amsterdam",  # 1900s offsets in seconds (LMT, AMT)
]
AWKWARD: list[Any] = [None, "", "  ", 7, True, 1.5, [], {}, "☎ & <x>", "x" * 400]
TEXT = st.one_of(st.sampled_from(AWKWARD), st.text(max_size=30))


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    choices = {
        "rid": st.one_of(st.integers(), st.sampled_from(AWKWARD)),
        "direction": st.one_of(st.sampled_from(["INCOMING", "OUTGOING", "INTERNAL", " in "]), TEXT),
        "disposition": st.one_of(st.sampled_from(["ANSWERED", "NO ANSWER", "answered"]), TEXT),
        "cidnumber_outside": st.one_of(
            st.sampled_from(["(555) 017-7737", "+44 20 7946 0958", "3204", "anonymous"]), TEXT
        ),
        "cidnumber_inside": st.one_of(st.sampled_from(["(555) 010-1000, x7102"]), TEXT),
        "cidname_outside": TEXT,
        "cidext_inside": st.one_of(st.sampled_from(["3203", 3203, "<b>"]), TEXT),
        "call_timestamp": st.one_of(st.sampled_from(["2025-11-02 01:30:00"]), TEXT),
        "duration": st.one_of(st.integers(-5, 10**13), TEXT),
        "billsec": st.one_of(st.integers(-5, 10**13), TEXT),
    }
    keys = draw(st.sets(st.sampled_from(sorted(choices))))
    return {key: draw(choices[key]) for key in sorted(keys)}


@settings(max_examples=400, deadline=None)
@given(records(), st.sampled_from(ZONES), st.sampled_from(["US", None, "GB"]))
def test_lazy_view_is_as_dict(record: dict[str, Any], zone: str, region: str | None) -> None:
    tz = ZoneInfo(zone)
    expected = call_view(record, "acme", tz, region).as_dict()
    lazy = LazyCallView(record, "acme", tz, region)
    assert lazy.get("missed") == expected["missed"]  # one field first, then all of them
    assert dict(lazy) == expected
    assert list(lazy) == list(expected) and len(lazy) == len(expected)
    assert lazy.get("nope", 5) == 5 and "nope" not in lazy


def test_lazy_view_reads_only_what_is_asked(monkeypatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("a phone number was parsed for call.missed")

    monkeypatch.setattr(callview, "_party", fail)
    lazy = LazyCallView(
        {"direction": "INCOMING", "disposition": "BUSY"}, "a", ZoneInfo("UTC"), "US"
    )
    assert lazy["missed"] is True and lazy["direction"] == "inbound"


@settings(max_examples=1000, deadline=None)
@given(
    st.datetimes(min_value=datetime(1850, 1, 1), max_value=datetime(2100, 12, 31)),
    st.sampled_from(ZONES),
    st.booleans(),
)
def test_hour_cache_matches_full_conversion(moment: datetime, zone: str, near: bool) -> None:
    tz = ZoneInfo(zone)
    if near:  # most of the interest is around transitions: a minute either side of an hour
        moment = moment.replace(minute=0, second=0) - timedelta(seconds=moment.second)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    assert callview._start(text, tz) == callview._exact_start(text, tz), (text, zone)


def test_transition_hours_exactly() -> None:
    cases = {
        "America/New_York": ["2025-03-09 02:30:00", "2025-11-02 01:30:00", "2025-11-02 02:00:00"],
        "Australia/Lord_Howe": ["2025-04-06 01:45:00", "2025-10-05 02:15:00"],
        "Europe/Amsterdam": ["1937-07-01 00:00:00", "1937-06-30 23:59:59", "1900-01-01 00:00:00"],
    }
    for zone, texts in cases.items():
        tz = ZoneInfo(zone)
        for text in texts:
            assert callview._start(text, tz) == callview._exact_start(text, tz), (text, zone)
    utc = ZoneInfo("UTC")
    for bad in ["2025-02-30 10:00:00", "2025-07-01 24:00:00", "2025-07-01 20:60:00"]:
        assert callview._start(bad, utc) is None
    assert callview._start("2025-07-01 20:54:5٩", utc) is None  # an Arabic-Indic digit
