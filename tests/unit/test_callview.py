"""call_view: table-driven over the spec's record and the awkward inputs it must survive."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relay.core.callview import Party, call_view, parse_number

NY = ZoneInfo("America/New_York")
UTC = ZoneInfo("UTC")

# The record from the spec, verbatim.
SPEC: dict[str, Any] = {
    "rid": 211159,
    "call_timestamp": "2025-07-01 20:54:53",
    "cidname_outside": "B WHITTAKER",
    "cidext_inside": "3203",
    "direction": "OUTGOING",
    "cidnumber_outside": "(111) 111-1111",
    "cidnumber_inside": "(111) 111-1111, x3203",
    "disposition": "ANSWERED",
}


def rec(**changes: Any) -> dict[str, Any]:
    out = dict(SPEC)
    for key, value in changes.items():
        if value is ...:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def test_spec_record_outbound() -> None:
    view = call_view(SPEC, "acme", NY, "US")
    assert view.direction == "outbound"
    assert view.answered and not view.missed
    assert view.caller == Party(
        "inside", "+11111111111", "3203", None, True, SPEC["cidnumber_inside"]
    )
    assert view.callee == Party(
        "outside", "+11111111111", None, "B WHITTAKER", True, "(111) 111-1111"
    )
    assert view.start == "2025-07-01T20:54:53-04:00"
    assert view.start_ms == 1751417693000
    assert view.duration is None and view.talk_seconds is None
    assert view.rid == 211159 and view.account == "acme" and view.timezone == "America/New_York"
    assert view.caller.label() == "x3203"
    assert view.callee.label() == "B WHITTAKER (111) 111-1111"


@pytest.mark.parametrize(
    ("direction", "disposition", "expected", "answered", "missed"),
    [
        ("INCOMING", "ANSWERED", "inbound", True, False),
        ("INCOMING", "NO ANSWER", "inbound", False, True),
        ("INCOMING", "VOICEMAIL", "inbound", False, True),
        ("incoming ", "answered", "inbound", True, False),
        ("INBOUND", "BUSY", "inbound", False, True),
        ("INCOMING", None, "inbound", False, True),
        ("INCOMING", ..., "inbound", False, True),
        ("OUTGOING", "NO ANSWER", "outbound", False, False),
        ("INTERNAL", "ANSWERED", "internal", True, False),
        ("SIDEWAYS", "ANSWERED", "unknown", True, False),
        (None, "ANSWERED", "unknown", True, False),
        (..., "NO ANSWER", "unknown", False, False),
        (7, "ANSWERED", "unknown", True, False),
        ("INCOMING", "", "inbound", False, True),
        ("INCOMING", 3, "inbound", False, True),
    ],
)
def test_direction_and_disposition(
    direction: Any, disposition: Any, expected: str, answered: bool, missed: bool
) -> None:
    view = call_view(rec(direction=direction, disposition=disposition), "a", UTC, "US")
    assert (view.direction, view.answered, view.missed) == (expected, answered, missed)


def test_inbound_roles_are_swapped() -> None:
    view = call_view(rec(direction="INCOMING", disposition="NO ANSWER"), "a", UTC, "US")
    assert view.caller.side == "outside" and view.caller.name == "B WHITTAKER"
    assert view.callee.label() == "x3203"


@pytest.mark.parametrize(
    ("written", "region", "number", "extension", "e164"),
    [
        ("(111) 111-1111, x3203", "US", "+11111111111", "3203", True),
        ("(212) 555-0100 ext. 12", "US", "+12125550100", "12", True),
        ("+44 20 7946 0958", "US", "+442079460958", None, True),
        ("020 7946 0958", "GB", "+442079460958", None, True),
        ("020 7946 0958", "US", "020 7946 0958", None, False),  # not a whole US number
        ("555-1234", "US", "555-1234", None, False),  # local only: no area code to invent
        ("(212) 555-0100", None, "(212) 555-0100", None, False),  # no region: + numbers only
        ("+1 212 555 0100", None, "+12125550100", None, True),
        ("anonymous", "US", "anonymous", None, False),
        ("Ünïcödé ☎", "US", "Ünïcödé ☎", None, False),
        ("3204", "US", None, "3204", False),  # internal calls name an extension
        ("x3204", "US", None, "3204", False),
        ("9" * 400, "US", "9" * 400, None, False),
        ("  (212) 555-0100  ", "US", "+12125550100", None, True),
    ],
)
def test_numbers(
    written: str, region: str | None, number: str | None, extension: str | None, e164: bool
) -> None:
    view = call_view(rec(cidnumber_outside=written), "a", UTC, region)
    assert (view.callee.number, view.callee.extension, view.callee.e164) == (
        number,
        extension,
        e164,
    )


@pytest.mark.parametrize("value", [None, "", "   ", True, 1.5, [], {}, ...])
def test_empty_numbers_and_names(value: Any) -> None:
    view = call_view(
        rec(cidnumber_outside=value, cidname_outside=value, cidnumber_inside=value), "a", UTC, "US"
    )
    assert view.callee.number is None and view.callee.name is None
    assert view.callee.label() == "unknown"
    assert view.caller.number is None and view.caller.extension == "3203"


def test_numeric_extension_and_bad_extension() -> None:
    assert call_view(rec(cidext_inside=3203), "a", UTC, "US").caller.extension == "3203"
    bad = call_view(rec(cidext_inside="<b>", cidnumber_inside=None), "a", UTC, "US")
    assert bad.caller.extension is None and bad.caller.label() == "unknown"


@pytest.mark.parametrize(
    "name", ["José Ñúñez", "王小明", "😀 Emoji Caller", "A & B <Co>", "  padded  ", "x" * 5000]
)
def test_unicode_names_kept(name: str) -> None:
    assert call_view(rec(cidname_outside=name), "a", UTC, "US").callee.name == name.strip()


@pytest.mark.parametrize(
    ("ts", "iso", "ms"),
    [
        ("2025-07-01 20:54:53", "2025-07-01T20:54:53-04:00", 1751417693000),
        ("2025-01-15 08:00:00", "2025-01-15T08:00:00-05:00", 1736946000000),
        ("2025-11-02 01:30:00", "2025-11-02T01:30:00-04:00", 1762061400000),  # repeated hour
        ("2025-02-30 10:00:00", None, None),
        ("2025-07-01T20:54:53", None, None),
        ("2025-07-01 20:54", None, None),
        ("", None, None),
        (None, None, None),
        (1751417693, None, None),
        (..., None, None),
    ],
)
def test_start_time(ts: Any, iso: str | None, ms: int | None) -> None:
    view = call_view(rec(call_timestamp=ts), "a", NY, "US")
    assert (view.start, view.start_ms) == (iso, ms)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (192, 192),
        (0, 0),
        ("45", 45),
        (" 45 ", 45),
        (12.9, 12),
        (-1, None),
        (True, None),
        (None, None),
        ("", None),
        ("1e3", None),
        ("٣", None),  # a non-ASCII digit is not a duration
        (float("nan"), None),
        (float("inf"), None),
        ("9" * 40, None),
        (..., None),
    ],
)
def test_durations(value: Any, expected: int | None) -> None:
    view = call_view(rec(duration=value, billsec=value), "a", UTC, "US")
    assert view.duration == expected and view.talk_seconds == expected


def test_rid_types() -> None:
    assert call_view(rec(rid="211159"), "a", UTC, "US").rid is None
    assert call_view(rec(rid=True), "a", UTC, "US").rid is None


def test_empty_record_and_as_dict() -> None:
    view = call_view({}, "acme", UTC, "US")
    assert view.direction == "unknown" and not view.answered and not view.missed
    data = view.as_dict()
    assert data["caller"] == {
        "side": "outside",
        "number": None,
        "extension": None,
        "name": None,
        "e164": False,
        "written": None,
    }
    assert list(data) == [
        "account", "rid", "direction", "disposition", "answered", "missed", "caller",
        "callee", "start", "start_ms", "duration", "talk_seconds", "timezone",
    ]  # fmt: skip


def test_parse_number_direct() -> None:
    assert parse_number("", "US") is None
    assert parse_number("(212) 555-0100 x7", "US") == ("+12125550100", "7")
