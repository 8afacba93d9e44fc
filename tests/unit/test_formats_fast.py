"""The chat formats' shortcuts change only their cost, never a byte.

Each shortcut is taken only when the slow path would do nothing (no escape, no cut, nothing JSON
must escape); these tests feed both sides awkward text and check the bytes are what the plain
path writes: ``dumps`` of the same structure, and the escaped/cut text of the slow helpers.
"""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.callview import call_view
from relay.core.formats import CHAT_RENDERERS, FormatSpec, render
from relay.core.formats.common import clean, dumps
from relay.core.formats.common import fit as slow_fit
from relay.core.formats.discord import _escape_all as discord_all
from relay.core.formats.discord import _escape_char as discord_char
from relay.core.formats.discord import escape as discord_escape
from relay.core.formats.slack import _escape_all as slack_all
from relay.core.formats.slack import _escape_char as slack_char
from relay.core.formats.slack import escape as slack_escape
from relay.core.formats.slack import render_slack
from relay.core.formats.slackfast import render_slack_record

NY = ZoneInfo("America/New_York")
NASTY = st.sampled_from(['"', "\\", "\n", "\x00", "\x7f", "\u2028", "&", "<", ">", "*", "é", "😀"])
TEXT = st.lists(st.one_of(NASTY, st.text(max_size=5)), max_size=12).map("".join)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "rid": draw(st.integers(0, 10**9)),
        "call_timestamp": draw(st.sampled_from(["2025-07-01 20:54:53", "", "2025-03-09 02:30:00"])),
        "cidname_outside": draw(st.one_of(TEXT, st.sampled_from(["B WHITTAKER", "x" * 2500]))),
        "cidext_inside": draw(st.sampled_from(["3203", "", "7"])),
        "direction": draw(st.sampled_from(["INCOMING", "OUTGOING", "INTERNAL", "?"])),
        "cidnumber_outside": draw(st.one_of(TEXT, st.sampled_from(["(555) 017-7737", "3204"]))),
        "cidnumber_inside": "(555) 010-1000, x3203",
        "disposition": draw(st.one_of(TEXT, st.sampled_from(["ANSWERED", "NO ANSWER"]))),
        "duration": draw(st.integers(0, 5000)),
        "billsec": draw(st.integers(0, 5000)),
    }


@settings(max_examples=300, deadline=None)
@given(records(), st.sampled_from(sorted(CHAT_RENDERERS)), TEXT)
def test_chat_bytes_are_what_dumps_writes(record: dict[str, Any], name: str, account: str) -> None:
    view = call_view(record, account or "acme", NY, "US")
    body = CHAT_RENDERERS[name](view)
    assert body == dumps(orjson.loads(body))  # the compact bytes of the structure sent
    assert body == render(FormatSpec(name), record, view, {"account": "x", "received_at": 0.0})


@settings(max_examples=500, deadline=None)
@given(TEXT, st.integers(0, 40))
def test_escape_shortcuts_match_the_slow_path(text: str, limit: int) -> None:
    assert slack_escape(text, limit) == slow_fit(text, limit, slack_char, slack_all)
    assert discord_escape(text, limit) == slow_fit(clean(text), limit, discord_char, discord_all)


FAST_NUMBERS = st.sampled_from(
    ["(555) 017-7737", "(212) 555-0100, x3203", "+1 555 017 7737", "1-555-017-7737", "5550177737"]
)
FAST_NAMES = st.sampled_from(["", "B WHITTAKER", " José Ñúñez ", "Tom & Jerry", 'say "hi"'])


@st.composite
def slack_records(draw: st.DrawFn) -> dict[str, Any]:
    """The awkward records above, with the shapes the Slack shortcut reads (a new NANP caller,
    a name, our own line) drawn often, and now and then a field of another JSON type."""
    record = draw(records())
    odd = st.sampled_from([None, 0, 1, True, 3203, 2.5, [], {"a": 1}])
    record["cidnumber_outside"] = draw(st.one_of(FAST_NUMBERS, TEXT, odd))
    record["cidname_outside"] = draw(st.one_of(FAST_NAMES, TEXT, odd))
    record["cidnumber_inside"] = draw(st.one_of(FAST_NUMBERS, st.just(""), odd))
    record["cidext_inside"] = draw(st.one_of(st.sampled_from(["3203", "", " 7 ", "x1"]), odd))
    record["rid"] = draw(st.one_of(st.integers(-5, 10**12), odd))
    record["billsec"] = draw(st.one_of(st.integers(-5, 5000), st.sampled_from(["12", "x"]), odd))
    record["duration"] = draw(st.one_of(st.integers(-5, 5000), odd))
    # Seconds of a few minutes (either side of New York's and Lord Howe's changes), some not a
    # time at all: the shortcut keeps each minute's text and checks only the seconds.
    hour, minute = draw(st.sampled_from(["01", "02", "03"])), draw(st.sampled_from(["00", "59"]))
    second = draw(st.one_of(st.integers(0, 61).map("{:02d}".format), st.sampled_from(["5", "٣٣"])))
    stamp = st.sampled_from(
        [f"2026-03-08 {hour}:{minute}:{second}", f"2026-04-05 {hour}:{minute}:{second}"]
    )
    record["call_timestamp"] = draw(st.one_of(stamp, st.just(record["call_timestamp"]), odd))
    return record


@settings(max_examples=1500, deadline=None)
@given(
    slack_records(),
    st.sampled_from(["acme", "Tom & <Jerry>", " ", 'a"b']),
    st.sampled_from(["US", None]),
    st.sampled_from([NY, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("UTC")]),
)
def test_slack_from_the_record_is_the_slack_of_the_view(
    record: dict[str, Any], account: str, region: str | None, tz: ZoneInfo
) -> None:
    # Twice: the second call reads the shortcut's caches the first one filled.
    for _ in range(2):
        fast = render_slack_record(record, account, tz, region)
        if fast is not None:
            assert fast == render_slack(call_view(record, account, tz, region))


def test_slack_shortcut_is_taken_for_a_plain_new_caller() -> None:
    record = {
        "rid": 7,
        "call_timestamp": "2025-07-01 20:54:53",
        "cidname_outside": "B WHITTAKER",
        "cidext_inside": "3203",
        "direction": "INCOMING",
        "cidnumber_outside": "(555) 017-7737",
        "cidnumber_inside": "(111) 111-1111, x3203",
        "disposition": "ANSWERED",
        "duration": 192,
        "billsec": 180,
    }
    fast = render_slack_record(record, "acme", NY, "US")
    assert fast is not None
    assert fast == render_slack(call_view(record, "acme", NY, "US"))
    # Anything to escape sends it the long way, which escapes it.
    assert render_slack_record({**record, "cidname_outside": "A & B"}, "acme", NY, "US") is None
    assert render_slack_record(record, "a<b", NY, "US") is None
