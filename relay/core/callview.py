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
- Numbers: parsed with ``phonenumbers`` in the configured default region (through the fast path
  and cache of :mod:`relay.core.phones`, which give the same answers). A number that is
  possible as a whole (not only as a local number) becomes E.164 and its extension is split out;
  anything else (``anonymous``, a 7-digit local number, garbage) stays exactly as written.
  A short run of digits (up to 6) is an extension, not a number.
- ``start``: ``call_timestamp`` read as wall-clock time in the upstream time zone, given as
  ISO 8601 with its offset and as epoch milliseconds; ``None`` if absent or not a valid time.
- ``duration``/``talk_seconds``: the record's ``duration``/``billsec`` as whole seconds when it
  is a non-negative number (or a string of digits), else ``None``.

Cost matters: a chat format computes a view for every delivery and a filter on ``call.…`` one
for every polled record. :func:`call_view` caches what repeats across calls (each party's
parse, keyed by what the record wrote; each hour's UTC offset) and :class:`LazyCallView` gives
filters only the fields they read, so ``call.missed`` never parses a phone number.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

from relay.core.phones import parse_number

__all__ = ["CallView", "Direction", "LazyCallView", "Party", "call_view", "parse_number"]

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
_SIXTY = {f"{n:02d}": n for n in range(60)}  # "00".."59" -> seconds, a lookup cheaper than int()
_MINUTES = {f"{n:02d}": 60 * n for n in range(60)}
# Parties are cached by what the record wrote; longer texts (a hostile 5,000-character name)
# are computed every time rather than held.
_CACHED_PARTY_TEXT = 256


@dataclass(slots=True)
class Party:
    """One end of a call.

    ``side`` is ``inside`` for our own line. ``number`` is E.164 when it could be parsed, else
    the text as written (``None`` when the record has none); ``e164`` says which. ``extension``
    is the PBX extension, ``name`` the caller-id name (stripped; ``None`` when empty).

    Read-only by convention, not ``frozen``, for the reason :class:`CallView` gives: a new
    caller is a new party on every chat delivery, and a frozen ``__init__`` (one
    ``object.__setattr__`` per field) was most of its cost. Parties are shared by the cache
    below, so nothing may mutate one.
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

    def as_dict(self) -> dict[str, Any]:
        """The party as a plain dict (``call.caller`` in filters and templates)."""
        return {
            "side": self.side,
            "number": self.number,
            "extension": self.extension,
            "name": self.name,
            "e164": self.e164,
            "written": self.written,
        }


@dataclass(slots=True)
class CallView:
    """What filters, templates and chat formats need to know about a call.

    Read-only by convention, not ``frozen``: a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``, which made building a view (once per chat delivery) cost
    more than everything else in it. Nothing mutates a view; its values are all immutable."""

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
        data["caller"] = self.caller.as_dict()
        data["callee"] = self.callee.as_dict()
        return data


_VIEW_FIELDS = tuple(f.name for f in fields(CallView))


def call_view(record: dict[str, Any], account: str, tz: ZoneInfo, region: str | None) -> CallView:
    """Compute the :class:`CallView` of ``record`` (see the module docstring for the rules).

    ``tz`` is the upstream time zone ``call_timestamp`` is written in; ``region`` the default
    phone region (``"US"``), or ``None`` to accept only numbers written with ``+``. Never raises
    on record content: a field that is missing, null or of the wrong type yields ``None``.
    """
    direction, disposition, answered, missed = _roles(record)
    caller, callee = _parties(record, direction, region)
    start = _start(record.get("call_timestamp"), tz)
    return CallView(
        account,
        _rid(record),
        direction,
        disposition,
        answered,
        missed,
        caller,
        callee,
        start[0] if start else None,
        start[1] if start else None,
        _seconds(record.get("duration")),
        _seconds(record.get("billsec")),
        tz.key,
    )


class LazyCallView(Mapping[str, Any]):
    """The call view of one record as the mapping :meth:`CallView.as_dict` gives, each field
    computed when first read: a filter on ``call.missed`` costs a dictionary lookup and two
    string comparisons, not a phone-number parse and a time-zone conversion."""

    __slots__ = ("_account", "_record", "_region", "_tz", "_values")

    def __init__(
        self, record: Mapping[str, Any], account: str, tz: ZoneInfo, region: str | None
    ) -> None:
        self._record = record
        self._account = account
        self._tz = tz
        self._region = region
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            pass
        compute = _LAZY.get(key)
        if compute is None:
            raise KeyError(key)
        compute(self)
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``self[key]``, or ``default`` for a name the call view does not have."""
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        return iter(_VIEW_FIELDS)

    def __len__(self) -> int:
        return len(_VIEW_FIELDS)

    def _roles(self) -> None:
        direction, disposition, answered, missed = _roles(self._record)
        self._values.update(
            direction=direction, disposition=disposition, answered=answered, missed=missed
        )

    def _parties(self) -> None:
        caller, callee = _parties(self._record, self["direction"], self._region)
        self._values.update(caller=caller.as_dict(), callee=callee.as_dict())

    def _start(self) -> None:
        start = _start(self._record.get("call_timestamp"), self._tz)
        self._values.update(start=start[0] if start else None, start_ms=start[1] if start else None)

    def _simple(self) -> None:
        record = self._record
        self._values.update(
            account=self._account,
            rid=_rid(record),
            duration=_seconds(record.get("duration")),
            talk_seconds=_seconds(record.get("billsec")),
            timezone=self._tz.key,
        )


_LAZY: dict[str, Callable[[LazyCallView], None]] = {
    "account": LazyCallView._simple,
    "rid": LazyCallView._simple,
    "direction": LazyCallView._roles,
    "disposition": LazyCallView._roles,
    "answered": LazyCallView._roles,
    "missed": LazyCallView._roles,
    "caller": LazyCallView._parties,
    "callee": LazyCallView._parties,
    "start": LazyCallView._start,
    "start_ms": LazyCallView._start,
    "duration": LazyCallView._simple,
    "talk_seconds": LazyCallView._simple,
    "timezone": LazyCallView._simple,
}
assert set(_LAZY) == set(_VIEW_FIELDS)  # a new CallView field needs its lazy twin


def _roles(record: Mapping[str, Any]) -> tuple[Direction, str | None, bool, bool]:
    raw = record.get("direction")
    direction = _DIRECTIONS.get((raw.strip() if isinstance(raw, str) else _text(raw)).upper())
    raw = record.get("disposition")
    disposition = (raw.strip() if isinstance(raw, str) else _text(raw)) or None
    answered = disposition is not None and disposition.upper() == "ANSWERED"
    if direction is None:
        return "unknown", disposition, answered, False
    return direction, disposition, answered, direction == "inbound" and not answered


def _parties(
    record: Mapping[str, Any], direction: Direction, region: str | None
) -> tuple[Party, Party]:
    """(caller, callee)."""
    outside = _party(
        "outside", record.get("cidnumber_outside"), None, record.get("cidname_outside"), region
    )
    inside = _party(
        "inside", record.get("cidnumber_inside"), record.get("cidext_inside"), None, region
    )
    return (inside, outside) if direction == "outbound" else (outside, inside)


def _rid(record: Mapping[str, Any]) -> int | None:
    rid = record.get("rid")
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


def _party(
    side: Literal["inside", "outside"],
    number: object,
    extension: object,
    name: object,
    region: str | None,
) -> Party:
    # Strings inline (the common case), anything else through _text.
    written = number.strip() if isinstance(number, str) else _text(number)
    ext = extension.strip() if isinstance(extension, str) else _text(extension)
    label = name.strip() if isinstance(name, str) else _text(name)
    if len(written) + len(ext) + len(label) > _CACHED_PARTY_TEXT:
        return _make_party(side, written, ext, label, region)
    return _cached_party(side, written, ext, label, region)


def _make_party(
    side: Literal["inside", "outside"], number: str, extension: str, name: str, region: str | None
) -> Party:
    written = number or None
    ext = extension or None
    label = name or None
    if ext is not None and not _DIGITS.fullmatch(ext):
        ext = None  # an extension is digits; anything else is noise we do not invent meaning for
    parsed = parse_number(written, region) if written else None
    if parsed is not None:
        e164, split_ext = parsed
        return Party(side, e164, ext or split_ext, label, True, written)
    if written is not None and (short := _EXTENSION_ONLY.fullmatch(written)):
        # Internal calls name the other side by extension only: "3204" is x3204, not +13204.
        return Party(side, None, ext or short.group(1), label, False, written)
    return Party(side, written, ext, label, False, written)


# Pure and immutable, so caching changes only the cost: a PBX's own lines are on every call.
_cached_party = functools.lru_cache(maxsize=4096)(_make_party)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # an extension sent as a JSON number
    return ""


def _start(value: object, tz: ZoneInfo) -> tuple[str, int] | None:
    """``(ISO 8601 with offset, epoch ms)`` of a record's ``call_timestamp``, or ``None``.

    What :func:`_exact_start` gives, with the time-zone work done once per wall-clock hour."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return None
    if value.isascii() and (hour := _hour(value[:13], tz)) is not None:
        minute, second = _MINUTES.get(value[14:16]), _SIXTY.get(value[17:19])
        if minute is None or second is None:
            return None  # what fromisoformat says about 20:61:00
        suffix, epoch = hour
        return f"{value[:10]}T{value[11:]}{suffix}", (epoch + minute + second) * 1000
    return _exact_start(value, tz)


def _exact_start(value: str, tz: ZoneInfo) -> tuple[str, int] | None:
    try:
        # fold=0: in the repeated autumn hour the earlier instant is taken, as the PBX would.
        # The shape is checked by the caller; fromisoformat reads it in C (strptime: ~50 µs).
        start = datetime.fromisoformat(value).replace(tzinfo=tz)
    except ValueError:
        return None  # 2025-02-30 and friends
    return start.isoformat(), int(start.timestamp()) * 1000


@functools.lru_cache(maxsize=1024)
def _hour(prefix: str, tz: ZoneInfo) -> tuple[str, int] | None:
    """For the wall-clock hour ``YYYY-MM-DD HH`` in ``tz``: its UTC offset as ISO 8601 writes
    it and the epoch second its first second stands for; ``None`` when the hour is not a valid
    time or holds an offset change (a transition not on the hour: those are converted one by
    one, exactly). Every second of an hour with one offset is the first plus its distance."""
    try:
        first = datetime.fromisoformat(f"{prefix}:00:00").replace(tzinfo=tz)
        last = datetime.fromisoformat(f"{prefix}:59:59").replace(tzinfo=tz)
    except ValueError:
        return None
    if first.utcoffset() != last.utcoffset():
        return None
    return first.isoformat()[19:], int(first.timestamp())


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
