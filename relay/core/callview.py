"""A normalised view of one call, computed from the verbatim upstream record (pure, no I/O).

The WebFones record names its parties by side of the PBX (``*_outside`` is the far party,
``*_inside`` our own line and extension), not by role. Filters, templates and chat formats want
roles -- who called whom, was it missed, when did it start -- so :func:`call_view` derives them
once. The record itself is never rewritten: the view sits beside it.

Rules (documented for filter and template authors):

- ``direction``: ``INCOMING``/``INBOUND``/``IN`` -> ``inbound``, ``OUTGOING``/``OUTBOUND``/``OUT``
  -> ``outbound``, ``INTERNAL``/``LOCAL`` -> ``internal``, anything else (missing, null, a new
  word) -> ``unknown``. Case and surrounding spaces are ignored.
- ``answered``: the disposition is ``ANSWERED``. ``missed``: inbound and not answered, so a call
  that went to voicemail counts as missed (nobody picked up).
- Parties: inbound calls go from the outside party to the inside one; outbound calls the other
  way; internal calls from the ``*_outside`` extension to the ``*_inside`` one (the record does
  not say who dialled, this is the PBX's own convention for the columns).
- Numbers: parsed with ``phonenumbers`` in the configured default region. A number that is
  possible as a whole (not only as a local number) becomes E.164 and its extension is split out;
  anything else (``anonymous``, a 7-digit local number, garbage) stays exactly as written.
  A short run of digits (up to 6) is an extension, not a number.
- ``start``: ``call_timestamp`` read as wall-clock time in the upstream time zone, given as
  ISO 8601 with its offset and as epoch milliseconds; ``None`` if absent or not a valid time.
- ``duration``/``talk_seconds``: the record's ``duration``/``billsec`` as whole seconds when it
  is a non-negative number (or a string of digits), else ``None``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import phonenumbers

Direction = Literal["inbound", "outbound", "internal", "unknown"]

_DIRECTIONS: dict[str, Direction] = {
    "INCOMING": "inbound",
    "INBOUND": "inbound",
    "IN": "inbound",
    "OUTGOING": "outbound",
    "OUTBOUND": "outbound",
    "OUT": "outbound",
    "INTERNAL": "internal",
    "LOCAL": "internal",
}
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_EXTENSION_ONLY = re.compile(r"x?(\d{1,6})", re.IGNORECASE)
_DIGITS = re.compile(r"\d{1,12}")
# phonenumbers refuses longer input anyway; cutting first keeps a hostile field cheap.
_MAX_NUMBER_TEXT = 250


@dataclass(frozen=True, slots=True)
class Party:
    """One end of a call.

    ``side`` is ``inside`` for our own line. ``number`` is E.164 when it could be parsed, else
    the text as written (``None`` when the record has none); ``e164`` says which. ``extension``
    is the PBX extension, ``name`` the caller-id name (stripped; ``None`` when empty).
    """

    side: Literal["inside", "outside"]
    number: str | None
    extension: str | None
    name: str | None
    e164: bool
    written: str | None

    def label(self) -> str:
        """A short human label: ``B WHITTAKER (111) 111-1111``, ``x3203`` or ``unknown``.

        Our own side is named by extension when it has one (the main number says nothing), and
        so is a party known only by extension.
        """
        if self.extension and (self.side == "inside" or self.number is None):
            parts = [p for p in (self.name, f"x{self.extension}") if p]
        else:
            parts = [p for p in (self.name, self.written) if p]
        return " ".join(parts) if parts else "unknown"


@dataclass(frozen=True, slots=True)
class CallView:
    """What filters, templates and chat formats need to know about a call."""

    account: str
    rid: int | None
    direction: Direction
    disposition: str | None
    answered: bool
    missed: bool
    caller: Party
    callee: Party
    start: str | None
    start_ms: int | None
    duration: int | None
    talk_seconds: int | None
    timezone: str

    def as_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict (parties nested), for filters (``call.caller.number``) and
        templates (``{{ call.caller.number }}``).

        What ``dataclasses.asdict`` gives, built directly: every value is immutable, so its
        recursive deep copy (most of a filter's cost) buys nothing."""
        data = {name: getattr(self, name) for name in _VIEW_FIELDS}
        data["caller"] = {name: getattr(self.caller, name) for name in _PARTY_FIELDS}
        data["callee"] = {name: getattr(self.callee, name) for name in _PARTY_FIELDS}
        return data


_VIEW_FIELDS = tuple(f.name for f in fields(CallView))
_PARTY_FIELDS = tuple(f.name for f in fields(Party))


def call_view(record: dict[str, Any], account: str, tz: ZoneInfo, region: str | None) -> CallView:
    """Compute the :class:`CallView` of ``record`` (see the module docstring for the rules).

    ``tz`` is the upstream time zone ``call_timestamp`` is written in; ``region`` the default
    phone region (``"US"``), or ``None`` to accept only numbers written with ``+``. Never raises
    on record content: a field that is missing, null or of the wrong type yields ``None``.
    """
    direction = _DIRECTIONS.get(_text(record.get("direction")).upper(), "unknown")
    disposition = _text(record.get("disposition")) or None
    answered = disposition is not None and disposition.upper() == "ANSWERED"
    outside = _party(
        "outside", record.get("cidnumber_outside"), None, record.get("cidname_outside"), region
    )
    inside = _party(
        "inside", record.get("cidnumber_inside"), record.get("cidext_inside"), None, region
    )
    caller, callee = (inside, outside) if direction == "outbound" else (outside, inside)
    start = _start(record.get("call_timestamp"), tz)
    rid = record.get("rid")
    return CallView(
        account=account,
        rid=rid if isinstance(rid, int) and not isinstance(rid, bool) else None,
        direction=direction,
        disposition=disposition,
        answered=answered,
        missed=direction == "inbound" and not answered,
        caller=caller,
        callee=callee,
        start=start.isoformat() if start else None,
        start_ms=int(start.timestamp()) * 1000 if start else None,
        duration=_seconds(record.get("duration")),
        talk_seconds=_seconds(record.get("billsec")),
        timezone=tz.key,
    )


@functools.lru_cache(maxsize=4096)
def parse_number(text: str, region: str | None) -> tuple[str, str | None] | None:
    """``(E.164, extension)`` for a phone number written in ``text``, or ``None`` if it is not
    a whole number in ``region`` (see the module docstring). Shared with the ``e164`` filter.

    Cached: parsing costs tens of microseconds, most of a call view, and the same numbers come
    back all the time (a PBX's own lines on every call, callers who call again). Pure, so the
    cache changes nothing but the cost."""
    if not text or len(text) > _MAX_NUMBER_TEXT:
        return None
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164, parsed.extension or None


def _party(
    side: Literal["inside", "outside"],
    number: object,
    extension: object,
    name: object,
    region: str | None,
) -> Party:
    written = _text(number) or None
    ext = _text(extension) or None
    if ext is not None and not _DIGITS.fullmatch(ext):
        ext = None  # an extension is digits; anything else is noise we do not invent meaning for
    parsed = parse_number(written, region) if written else None
    if parsed is not None:
        e164, split_ext = parsed
        return Party(side, e164, ext or split_ext, _text(name) or None, True, written)
    if written is not None and (short := _EXTENSION_ONLY.fullmatch(written)):
        # Internal calls name the other side by extension only: "3204" is x3204, not +13204.
        return Party(side, None, ext or short.group(1), _text(name) or None, False, written)
    return Party(side, written, ext, _text(name) or None, False, written)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # an extension sent as a JSON number
    return ""


def _start(value: object, tz: ZoneInfo) -> datetime | None:
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return None
    try:
        # fold=0: in the repeated autumn hour the earlier instant is taken, as the PBX would.
        # The shape is checked above; fromisoformat reads it in C (strptime costs ~50 µs).
        return datetime.fromisoformat(value).replace(tzinfo=tz)
    except ValueError:
        return None  # 2025-02-30 and friends


def _seconds(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if 0 <= value < 1e12 else None  # NaN and inf fail the comparison
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        stripped = value.strip()
        return int(stripped) if len(stripped) <= 12 else None
    return None
