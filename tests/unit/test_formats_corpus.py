"""Every format's bytes for a fixed generated corpus, pinned by one digest.

The chat formats have shortcuts (pre-encoded fragments, caches) that must change only their
cost. The property tests compare shortcut and plain path on awkward text; this test pins the
*output itself*: a fixed corpus of records (realistic ones, and the awkward inputs -- empty and
null fields, ``& < >``, quotes and backslashes, control characters, emoji, lone surrogates, long
fields, odd numbers, DST edges) is rendered through every format, in three time zones and two
phone regions, both from the stored envelope (:class:`~relay.delivery.shaping.Shaper`, what the
sender does) and with :func:`~relay.core.formats.render` directly. The sha256 of all bodies is
compared with the digest recorded below. A speed-up that changes one byte of one body fails here.

If a change to a format's bytes is *meant* (a new field, a fixed bug), say so in the commit,
check the new bodies by eye (``python -m tests.unit.test_formats_corpus`` prints a sample), and
record the new digest.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

from relay.core.callview import call_view
from relay.core.envelope import build_body
from relay.core.errors import RenderError
from relay.core.formats import FORMATS, EnvelopeFields, compile_format, render
from relay.delivery.shaping import Shaper

# Recorded from the plain (dict + dumps) renderers before any shortcut relied on this test.
DIGEST = "cdd04e068869b74aa548e4b9dab07bb779424c9f2c983365b8acc795033ae00f"
RECORDS = 600
ZONES = ("America/New_York", "UTC", "Australia/Lord_Howe")  # DST by an hour, none, by 30 min
REGIONS = ("US", None)
ACCOUNTS = ("acme", 'Tom & <Jerry> "Ltd"')
RECEIVED_AT = 1751417700.5
TEMPLATE = (
    '{"ts": {{ call.start_ms | tojson }}, "from": {{ call.caller.number | e164 | tojson }},'
    ' "to": {{ record.cidnumber_inside | e164 | tojson }},'
    ' "ms": {{ record.duration | duration_ms | tojson }},'
    ' "mmss": {{ record.billsec | mmss | tojson }},'
    ' "utc": {{ record.call_timestamp | utc | tojson }},'
    ' "iso": {{ record.call_timestamp | iso | tojson }},'
    ' "who": {{ call.caller.name | tojson }}, "acct": {{ account | tojson }},'
    ' "id": {{ webhook_id | tojson }}, "at": {{ received_at | tojson }},'
    ' "q": {{ 1 // (0 if record.queue == "Support" else 1) }}}'  # fails: a RenderError
)

_NAMES = ["B WHITTAKER", "José Ñúñez", "李小龙", "O'Brien", "Anna-Lena", "WIRELESS CALLER"]
_AWKWARD = [
    "",
    " ",
    "   padded   ",
    "Tom & Jerry",
    "<!channel>",
    "<@U123|x>",
    "a > b < c",
    "&amp; already",
    'say "hi"',
    "back\\slash",
    "line\nbreak",
    "tab\there",
    "nul\x00byte",
    "del\x7f and c1 \x85",
    "sep\u2028para\u2029",
    "😀 emoji 👩‍👩‍👧",
    "*bold* _it_ ~s~ `code` ||spoiler|| # head",
    "@everyone @here",
    "lone \ud800 surrogate",
    "é" * 40,
    "x" * 2100,
    "&" * 1200,
    "<" * 3100,
]
_NUMBERS = [
    "(111) 111-1111",
    "(212) 555-0100, x3203",
    "555-017-7737",
    "+1 555 017 7737",
    "1-555-017-7737",
    "+44 20 7946 0958",
    "+33 1 23 45 67 89",
    "020 7946 0958",
    "3204",
    "x3204",
    "555-0177",
    "anonymous",
    "Restricted",
    "",
    "+",
    "(111) 111-1111 x1234567",
    "１２３-４５６-７８９０",
    "2125550100",
    "12125550100",
]
_DIRECTIONS = ["INCOMING", "OUTGOING", "INTERNAL", "incoming ", "IN", "OUT", "LOCAL", "", "?"]
_DISPOSITIONS = ["ANSWERED", "NO ANSWER", "BUSY", "FAILED", "VOICEMAIL", "answered", ""]
_STAMPS = [
    "2025-07-01 20:54:53",
    "2026-03-08 01:59:59",
    "2026-03-08 02:30:00",  # does not exist in New York
    "2026-11-01 01:30:00",  # happens twice in New York
    "2026-04-05 01:45:00",  # Lord Howe's half-hour fold
    "2026-10-04 02:15:00",  # Lord Howe's half-hour gap
    "2025-02-30 10:00:00",
    "2025-07-01T20:54:53",
    "2025-07-01 20:61:00",
    "",
    "yesterday",
]


def _pick(rng: random.Random, realistic: list[Any], awkward: list[Any]) -> Any:
    roll = rng.random()
    if roll < 0.08:
        return None
    if roll < 0.11:
        return rng.choice([0, 3203, True, 1.5, [], {"x": 1}])
    return rng.choice(awkward if roll < 0.3 else realistic)


def corpus(n: int = RECORDS) -> Iterator[dict[str, Any]]:
    """``n`` records, the same on every run (a seeded generator; ``random.Random`` streams are
    stable across Python versions for ``random()`` and ``choice()``)."""
    rng = random.Random(20261202)
    for i in range(n):
        record: dict[str, Any] = {
            "rid": rng.choice([211159 + i] * 8 + [None, "211159", 2**70, -1]),
            "call_timestamp": rng.choice(
                [f"2026-03-08 0{rng.randrange(4)}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"]
                * 4
                + _STAMPS
            ),
            "cidname_outside": _pick(rng, _NAMES, _AWKWARD),
            "cidext_inside": _pick(rng, ["3203", "3204", "7", "42"], ["", "x12", " 3203 ", "abc"]),
            "direction": _pick(rng, _DIRECTIONS[:3] * 4, _DIRECTIONS),
            "cidnumber_outside": _pick(
                rng, [f"({200 + i % 800}) 555-{i % 10000:04d}"] * 4 + _NUMBERS, _AWKWARD
            ),
            "cidnumber_inside": _pick(rng, ["(212) 555-0100, x3203", "(111) 111-1111"], _NUMBERS),
            "disposition": _pick(rng, _DISPOSITIONS[:3] * 3, _DISPOSITIONS + _AWKWARD),
            "duration": _pick(rng, [0, 7, 59, 192, 3725, 86400], ["12", " 30 ", "-5", 1e13]),
            "billsec": _pick(rng, [0, 5, 180, 3600], ["0", "x"]),
        }
        if rng.random() < 0.2:
            record["queue"] = _pick(rng, ["Sales", "Support"], _AWKWARD)
        if rng.random() < 0.1:
            del record[rng.choice(sorted(record))]
        yield record


def bodies() -> Iterator[bytes]:
    """Every body of the corpus, in a fixed order; a render error is a body too (its text)."""
    records = list(corpus())
    for zone_name in ZONES:
        zone = ZoneInfo(zone_name)
        for region in REGIONS:
            specs = [
                compile_format(name, TEMPLATE if name == "template" else None, "s", tz=zone,
                               region=region)
                for name in FORMATS
            ]  # fmt: skip
            shapers = [Shaper(spec, zone, region) for spec in specs]
            for i, record in enumerate(records):
                account = ACCOUNTS[i % len(ACCOUNTS)]
                stored = build_body(account, RECEIVED_AT, record)
                fields: EnvelopeFields = {
                    "account": account,
                    "received_at": RECEIVED_AT,
                    "webhook_id": f"msg_{i}",
                }
                view = call_view(record, account, zone, region)
                for spec, shaper in zip(specs, shapers, strict=True):
                    yield _attempt(lambda: shaper.body(stored, account, f"msg_{i}"))  # noqa: B023
                    if spec.name != "envelope":  # render() would rebuild the envelope itself
                        yield _attempt(lambda: render(spec, record, view, fields))  # noqa: B023


def _attempt(make: Any) -> bytes:
    try:
        body: bytes = make()
    except RenderError as exc:
        return f"RenderError: {exc}".encode()
    return body


def digest() -> str:
    """The sha256 of every body, each prefixed by its length (so no two corpora collide by
    moving bytes from one body to the next)."""
    sha = hashlib.sha256()
    for body in bodies():
        sha.update(len(body).to_bytes(4, "big"))
        sha.update(body)
    return sha.hexdigest()


def test_every_format_renders_the_recorded_bytes() -> None:
    assert digest() == DIGEST, (
        "a format's bytes changed for the fixed corpus; if that is meant, record the new digest "
        "(see the module docstring)"
    )


def test_the_corpus_reaches_the_awkward_paths() -> None:
    # A digest of a corpus that never escapes, cuts or falls back would pin nothing useful.
    out = b"\n".join(bodies())
    for needle in (b"&amp;", b"&lt;", b"\\u0000", "…".encode(), b"\\n", b"RenderError"):
        assert needle in out, needle


if __name__ == "__main__":
    print(digest())
    for body in list(bodies())[:: max(1, RECORDS // 3)][:12]:
        sys.stdout.write(body[:400].decode("utf-8", "replace") + "\n")
