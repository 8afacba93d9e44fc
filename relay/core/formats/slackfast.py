"""The ``slack`` body straight from a record: the bytes of :func:`render_slack` of the call view,
for the common case, without building the view, the summary or any dict.

A Slack delivery is rendered from the stored record on every attempt, so this runs once per
POST. The plain path (:func:`~relay.core.callview.call_view`, then
:func:`~relay.core.formats.common.summary`, then the message) builds two objects and a dozen
strings, and checks the whole message for text that needs an escape or a cut; measured, that was
most of what ``format: slack`` cost a delivery. Here the same rules are applied piece by piece
(the call view's own helpers for roles, parties, time and durations; the summary's own texts for
each party), and what repeats is worked out once and kept: a party's two texts and whether they
are *plain* (nothing for mrkdwn or JSON to escape, short enough that no limit can cut), a
disposition's texts, an account's footer. A message made only of plain pieces is the
``_MESSAGE`` pattern filled in; anything else -- an ``&``, a quote, a long name, a lone surrogate
-- returns ``None`` and the caller takes the plain path, which knows how to escape and cut.

``tests/unit/test_formats_fast.py`` compares the two on generated awkward records and
``tests/unit/test_formats_corpus.py`` pins the bytes of both.
"""

from __future__ import annotations

import re
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo

from relay.core.callview import (
    _CACHED_PARTY_TEXT,
    _SIXTY,
    _hour,
    _party,
    _rid,
    _roles,
    _seconds,
    _start,
)
from relay.core.formats.common import _KINDS, _texts, clean, mmss
from relay.core.phones import fast_parse

# A piece at most this long cannot take any part of the message past a Slack limit: the
# section holds two labels and a status (3 x 500 + ~40 < 3,000), a field one number (< 2,000).
_PLAIN_MAX = 500
# Plain for both mrkdwn (no & < >) and JSON (no quote, backslash or control character).
_PLAIN = re.compile(rf'[^&<>"\\\x00-\x1f]{{0,{_PLAIN_MAX}}}')

# The message is filled in as bytes: each piece is UTF-8 on its own (the repeating ones once, in
# their cache), which gives the bytes of the whole text encoded, without formatting a wide
# string of ~600 characters and encoding it again (an arrow makes the whole text UCS-2).
_MESSAGE = (
    b'{"text":"%s%s","blocks":[{"type":"section","text":{"type":"mrkdwn","text":"*%s*%s"},'
    b'"fields":[%s%s%s%s%s%s]},{"type":"context","elements":[{"type":"mrkdwn","text":"%s"}]}]}'
)
_FROM = '{"type":"mrkdwn","text":"*From*\\n%s"},'
_TO = '{"type":"mrkdwn","text":"*To*\\n%s"},'
_DIRECTION = {
    d: b'{"type":"mrkdwn","text":"*Direction*\\n' + d.encode() + b'"}'
    for d in ("inbound", "outbound", "internal", "unknown")
}
_TITLES = {title: title.encode() for title in ("Missed call", "Call", *_KINDS.values())}
_STATUS = ',{"type":"mrkdwn","text":"*Status*\\n%s"}'
_DURATION = b',{"type":"mrkdwn","text":"*Duration*\\n%s"}'
_STARTED_OPEN = ',{"type":"mrkdwn","text":"*Started*\\n'
_STARTED = _STARTED_OPEN + '%s"}'

# Bounded caches of what repeats (cleared when full: a bound, not an LRU, cheap to hit), keyed
# by what the record wrote (and the phone region or time zone that reads it). The entries hold
# the pieces ready to drop into _MESSAGE; None means a piece that is not plain.
_CACHE_MAX = 4096
# What a lookup gives for a key it does not hold (compared by identity: entries are built at
# run time, never this object).
_UNSEEN = ("", b"", b"")
_NO_TEXTS = (b"", "")
# A party: (label, its From field, its To field). A name: the name, if plain.
Entry = tuple[str, bytes, bytes]
K = TypeVar("K")
V = TypeVar("V")
_OUTSIDE: dict[tuple[str, str, str | None], Entry | None] = {}
_INSIDE: dict[tuple[str, str | None, str | None], Entry | None] = {}
_NAMES: dict[str, str | None] = {}
# The disposition as the view has it: (its Status field, what is said after the headline).
_DISPOSITIONS: dict[str, tuple[bytes, str] | None] = {}
_ACCOUNTS: dict[str, str | None] = {}  # account -> its cleaned footer text
_SPOKEN: dict[int, tuple[str, bytes]] = {}  # seconds -> (mm:ss, the Duration field)
# (call_timestamp to the minute, zone) -> (", HH:MM", the Started field before the seconds,
# after them): only for hours with one UTC offset, where every second is written alike.
_MINUTES: dict[tuple[str, ZoneInfo], tuple[str, str, str]] = {}


def render_slack_record(
    record: dict[str, Any], account: str, tz: ZoneInfo, region: str | None
) -> bytes | None:
    """``render_slack(call_view(record, account, tz, region))``, or ``None`` when a piece is not
    plain (then that is the call to make)."""
    direction, disposition, answered, missed = _roles(record)
    outside = _outside(record.get("cidnumber_outside"), record.get("cidname_outside"), region)
    if outside is None:
        return None
    inside = _inside(record.get("cidnumber_inside"), record.get("cidext_inside"), region)
    if inside is None:
        return None
    caller, callee = (inside, outside) if direction == "outbound" else (outside, inside)
    foot = _ACCOUNTS.get(account, "")
    if foot == "":
        foot = _account_text(account)
    if foot is None:
        return None
    title = "Missed call" if missed else _KINDS.get(direction, "Call")
    hhmm, started = _when(record.get("call_timestamp"), tz)
    seconds = record.get("billsec")
    if type(seconds) is not int or seconds <= 0:
        seconds = _seconds(seconds) or _seconds(record.get("duration"))
    spoken = ""
    duration = b""
    if seconds:
        spoken, duration = _SPOKEN.get(seconds) or _spoken(seconds)
    status = b""
    said = ""
    if disposition:
        texts = _DISPOSITIONS.get(disposition, _NO_TEXTS)
        if texts is _NO_TEXTS:
            texts = _disposition_texts(disposition)
        if texts is None:
            return None
        status, said = texts
        if missed and said == "no answer":
            said = ""
        elif answered and spoken:
            said = f" ({said}, {spoken})"
        elif said:
            said = f" ({said})"
    rest = f" from {caller[0]} → {callee[0]}{hhmm}{said}"
    rid = record.get("rid")
    if type(rid) is int or _rid(record) is not None:
        foot = f"{foot} · rid {rid}"
    try:
        # The rest, the start and the footer are new on every call; a lone surrogate in one
        # cannot be encoded (the cached pieces were checked when they were made).
        pieces = (rest.encode(), started.encode(), foot.encode())
    except UnicodeEncodeError:
        return None  # the plain path's dumps() knows what to do with it
    head = _TITLES[title]
    return _MESSAGE % (
        head, pieces[0], head, pieces[0],
        caller[1], callee[2], _DIRECTION[direction], status, duration, pieces[1], pieces[2],
    )  # fmt: skip


def _when(value: object, tz: ZoneInfo) -> tuple[str, str]:
    """(``", 20:54"``, the Started field) for a ``call_timestamp``; empty without a valid one."""
    if type(value) is str and len(value) == 19:
        hit = _MINUTES.get((value[:16], tz))
        # The key's shape was checked when it was stored; the seconds are checked here.
        if hit is not None and value[16] == ":" and value[17:19] in _SIXTY:
            return hit[0], hit[1] + value[17:19] + hit[2]
    start = _start(value, tz)
    if start is None:
        return "", ""
    iso = start[0]
    if type(value) is str and value.isascii() and _hour(value[:13], tz) is not None:
        # _start wrote this from the hour's one offset: so is every second of this minute.
        if len(_MINUTES) >= _CACHE_MAX:
            _MINUTES.clear()
        _MINUTES[(value[:16], tz)] = (", " + iso[11:16], _STARTED_OPEN + iso[:17], iso[19:] + '"}')
    return ", " + iso[11:16], _STARTED % iso


def _outside(number: object, name: object, region: str | None) -> Entry | None:
    """The far party's (label, number fact) as the summary shows them, or None if not plain."""
    if type(number) is not str or type(name) is not str:
        return _party_texts("outside", number, None, name, region)
    key = (number, name, region)
    hit = _OUTSIDE.get(key, _UNSEEN)
    if hit is not _UNSEEN:
        return hit
    hit = _fresh_outside(number.strip(), name.strip(), region)
    if hit is _UNSEEN:
        hit = _party_texts("outside", number, None, name, region)
    return _remember(_OUTSIDE, key, hit)


def _fresh_outside(written: str, name: str, region: str | None) -> Entry | None:
    """A new caller with a North American number (the case on every call from someone new),
    worked out directly: what ``Party.label`` and the summary's number fact give for it.
    ``_UNSEEN`` when the shape is another one (then the party is built as usual)."""
    parsed = fast_parse(written, region)  # what parse_number gives, for the shapes it reads
    if parsed is None or len(written) + len(name) > _CACHED_PARTY_TEXT:
        return _UNSEEN
    e164, extension = parsed
    number = f"{e164} x{extension}" if extension else e164
    if not name:
        return _entry(written, number)  # a NANP number is plain, and printable
    shown = _NAMES.get(name, "")
    if shown == "":
        shown = _name_text(name)
    if shown is None:
        return None
    return _entry(f"{shown} {written}", f"{shown} {number}")


def _inside(number: object, extension: object, region: str | None) -> Entry | None:
    """Our own line's (label, number fact), or None if not plain: a PBX's lines repeat."""
    if type(number) is not str or (extension is not None and type(extension) is not str):
        # Only str and None as keys: True == 1 as a key, and a list cannot be one.
        return _party_texts("inside", number, extension, None, region)
    key = (number, extension, region)
    hit = _INSIDE.get(key, _UNSEEN)
    if hit is _UNSEEN:
        hit = _remember(_INSIDE, key, _party_texts("inside", number, extension, None, region))
    return hit


def _remember(cache: dict[K, V], key: K, hit: V) -> V:
    """Keep ``hit`` under ``key`` in a bounded cache (full: it starts over; parties are few)."""
    if len(cache) >= _CACHE_MAX:
        cache.clear()
    cache[key] = hit
    return hit


def _party_texts(
    side: Literal["inside", "outside"],
    number: object,
    extension: object,
    name: object,
    region: str | None,
) -> Entry | None:
    label, fact = _texts(_party(side, number, extension, name, region))
    return _entry(label, fact) if _PLAIN.fullmatch(label) and _PLAIN.fullmatch(fact) else None


def _entry(label: str, fact: str) -> Entry | None:
    # An empty number fact is left out of the fields, as the summary leaves it out.
    if not fact:
        return (label, b"", b"")
    try:
        return (label, (_FROM % fact).encode(), (_TO % fact).encode())
    except UnicodeEncodeError:
        return None  # a lone surrogate: not plain


def _name_text(name: str) -> str | None:
    # A printable name is what clean() leaves of it (it is stripped already); anything else
    # goes the long way, where clean() turns control characters into spaces.
    shown = name if name.isprintable() and _PLAIN.fullmatch(name) else None
    if len(_NAMES) >= _CACHE_MAX:
        _NAMES.clear()
    _NAMES[name] = shown
    return shown


def _disposition_texts(disposition: str) -> tuple[bytes, str] | None:
    shown = clean(disposition)
    said = shown.lower()
    texts = None
    if _PLAIN.fullmatch(shown) and _PLAIN.fullmatch(said):
        try:
            texts = ((_STATUS % shown).encode() if shown else b"", said)
        except UnicodeEncodeError:
            texts = None  # a lone surrogate: not plain
    if len(_DISPOSITIONS) >= _CACHE_MAX:
        _DISPOSITIONS.clear()
    _DISPOSITIONS[disposition] = texts
    return texts


def _account_text(account: str) -> str | None:
    text = clean(account)
    foot = text if _PLAIN.fullmatch(text) else None
    if len(_ACCOUNTS) >= _CACHE_MAX:
        _ACCOUNTS.clear()
    _ACCOUNTS[account] = foot
    return foot


def _spoken(seconds: int) -> tuple[str, bytes]:
    text = mmss(seconds) or ""
    if len(_SPOKEN) >= _CACHE_MAX:
        _SPOKEN.clear()
    _SPOKEN[seconds] = hit = (text, _DURATION % text.encode())
    return hit
