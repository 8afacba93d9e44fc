"""Shared pieces of the chat formats: the one-line summary, the facts, JSON and truncation.

Slack, Teams and Discord show the same information in their own shapes; it is computed here
once so they cannot drift apart. Everything is pure and deterministic: same call view, same text.

These run for every delivery of a chat format, so the common case is kept cheap without changing
a byte: text without control characters skips the regex, and a party's texts are cached (our own
lines and repeat callers come back on call after call; :class:`Party` is immutable).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson

from relay.core.callview import CallView, Party

ELLIPSIS = "…"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, deterministic for a given value (keys keep their order).

    orjson for speed; values orjson refuses but JSON allows (integers beyond 64 bits) fall back
    to the stdlib with the same compact separators, as the envelope does.
    """
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "backslashreplace"
        )


def clean(text: str) -> str:
    """One line of text: control characters and line breaks become single spaces, so a caller
    name cannot start a Markdown heading or a list on a new line."""
    if text.isprintable():  # no Cc, Zl or Zp character: the regex would find nothing
        return text.strip()
    return _CONTROL.sub(" ", text).strip()


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters (code points), ending in ``…`` if cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - 1, 0)] + ELLIPSIS


def fit(
    text: str,
    limit: int,
    escape_char: Callable[[str], str],
    escape_all: Callable[[str], str] | None = None,
) -> str:
    """Escape ``text`` char by char and cut it (with ``…``) so the result fits ``limit``
    characters. Escapes are kept whole: cutting ``&amp;`` or ``\\*`` in half shows garbage.
    ``escape_all`` is the same escape for a whole text, done in C (``str.replace``, a regex):
    the common case, which then costs no Python call per character."""
    escaped = escape_all(text) if escape_all is not None else "".join(map(escape_char, text))
    if len(escaped) <= limit:
        return escaped
    out: list[str] = []
    used = 0
    for char in text:
        piece = escape_char(char)
        if used + len(piece) > limit - 1:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + ELLIPSIS


def mmss(seconds: int | None) -> str | None:
    """``192`` -> ``"3:12"``, ``3725`` -> ``"1:02:05"``; ``None`` stays ``None``."""
    if seconds is None:
        return None
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


_KINDS = {"inbound": "Incoming call", "outbound": "Outgoing call", "internal": "Internal call"}


class Summary(NamedTuple):
    """What every chat format shows: the kind (``Missed call``), the one-line headline, the
    label/value facts in display order (empty values left out) and the footer."""

    kind: str
    line: str
    facts: list[tuple[str, str]]
    footer: str


def summary(view: CallView) -> Summary:
    """The :class:`Summary` of ``view``, computed in one pass (it runs on every delivery)."""
    caller_label, caller_number = _texts(view.caller)
    callee_label, callee_number = _texts(view.callee)
    title = "Missed call" if view.missed else _KINDS.get(view.direction, "Call")
    disposition = clean(view.disposition) if view.disposition else ""
    spoken = mmss(view.talk_seconds or view.duration or None)  # talk time, else the duration
    line = f"{title} from {caller_label} → {callee_label}"
    if when := view.start[11:16] if view.start else "":
        line += f", {when}"  # the local wall-clock start, 20:54
    # The status after the headline: "answered, 3:12", "voicemail", "busy"... A plain missed
    # call (no answer) needs none: the headline says it.
    said = disposition.lower()
    if view.disposition and not (view.missed and said == "no answer"):
        if view.answered and spoken:
            said += f", {spoken}"
        if said:
            line += f" ({said})"
    pairs = [
        ("From", caller_number),
        ("To", callee_number),
        ("Direction", view.direction),
        ("Status", disposition),
        ("Duration", spoken or ""),
        ("Started", view.start or ""),
    ]
    rid = f" · rid {view.rid}" if view.rid is not None else ""
    return Summary(
        title, line, [(label, value) for label, value in pairs if value], clean(view.account) + rid
    )


def kind(view: CallView) -> str:
    """``Missed call``, ``Incoming call``, ``Outgoing call``, ``Internal call`` or ``Call``."""
    if view.missed:
        return "Missed call"
    return _KINDS.get(view.direction, "Call")


def talk_time(view: CallView) -> int | None:
    """Seconds worth showing: talk time if the record has it, else the whole duration."""
    if view.talk_seconds:
        return view.talk_seconds
    return view.duration or None


def hhmm(view: CallView) -> str | None:
    """The local wall-clock start ``20:54`` (in the upstream time zone), if known."""
    return view.start[11:16] if view.start else None


def headline(view: CallView) -> str:
    """The one-liner, e.g. ``Missed call from B WHITTAKER (111) 111-1111 → x3203, 20:54``."""
    return summary(view).line


def facts(view: CallView) -> list[tuple[str, str]]:
    """Label/value pairs for a card or an embed, in display order; empty values left out."""
    return summary(view).facts


def footer(view: CallView) -> str:
    """``acme · rid 211159``: where the call came from, for whoever has to look it up."""
    return summary(view).footer


# Party -> its texts, by identity: parties come from the call view's cache, so the same object
# comes back for our own lines and repeat callers; the entry holds the party, so its id cannot
# be reused while the entry lives. Cleared when full (a bound, not an LRU: cheap to hit).
_TEXTS: dict[int, tuple[Party, str, str]] = {}
_TEXTS_MAX = 4096


def _texts(party: Party) -> tuple[str, str]:
    """A party's cleaned label and its number as a fact (``B WHITTAKER +15550177737 x12``)."""
    hit = _TEXTS.get(id(party))
    if hit is not None and hit[0] is party:
        return hit[1], hit[2]
    label, number = clean(party.label()), _number(party)
    if len(_TEXTS) >= _TEXTS_MAX:
        _TEXTS.clear()
    _TEXTS[id(party)] = (party, label, number)
    return label, number


def _number(party: Party) -> str:
    number = party.number or ""
    if party.extension:
        number = f"{number} x{party.extension}".strip()
    name = clean(party.name) if party.name else ""
    return clean(f"{name} {number}".strip()) if name or number else ""
