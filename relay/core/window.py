"""Cursor and look-back arithmetic over the upstream's own timestamps, plus record validation.

Upstream timestamps are naive ``YYYY-MM-DD HH:MM:SS`` text in the upstream's IANA zone. In that
fixed-width format, text order is time order, so cursors are compared as text. The one exception
is a DST fall-back hour: the repeated wall-clock hour sorts as if it happened once. The relay
lives with that instead of guessing which pass a timestamp belongs to, because nothing is lost:
look-back windows re-read every record stamped in that hour and rids are de-duplicated.

Shifting a timestamp by N seconds ("newest minus the look-back") is done in real elapsed time
(via UTC), reading ambiguous or skipped wall-clock text with ``fold=0``. Across a spring-forward gap
that makes the window an hour wider in wall-clock terms, never narrower; inside a fall-back hour
it resolves to the earlier pass, which again only widens the window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

TS_FORMAT = "%Y-%m-%d %H:%M:%S"
START_NOW = "now"
RID_MAX = 2**63 - 1  # rids are stored as SQL BIGINT / SQLite INTEGER

_TS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2}) ([0-9]{2}):([0-9]{2}):([0-9]{2})", re.ASCII)
_MIN_TEXT = "0001-01-01 00:00:00"
_MAX_TEXT = "9999-12-31 23:59:59"


def parse_ts(text: object) -> datetime | None:
    """Parse ``YYYY-MM-DD HH:MM:SS`` strictly into a naive datetime; None if it is anything else.

    Strict means: a ``str``, exactly that shape with zero-padded ASCII digits (``strptime`` would
    also take ``2025-7-1 1:2:3``), no surrounding space, and a real calendar date and time.
    """
    if not isinstance(text, str):
        return None
    match = _TS.fullmatch(text)
    if match is None:
        return None
    try:
        year, month, day, hour, minute, second = map(int, match.groups())
        return datetime(year, month, day, hour, minute, second)
    except ValueError:
        return None


def format_ts(dt: datetime) -> str:
    """Format ``dt`` as ``YYYY-MM-DD HH:MM:SS`` (fractions dropped; years below 1000 padded)."""
    # Not strftime: glibc's %Y does not zero-pad years below 1000.
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d} {dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    )


def upstream_now(now: float, tz: ZoneInfo) -> datetime:
    """The upstream's wall-clock time at Unix time ``now``, as a naive datetime in ``tz``."""
    return datetime.fromtimestamp(now, tz).replace(tzinfo=None)


def _shift(local: datetime, seconds: float, tz: ZoneInfo) -> str:
    """``local`` (naive, in ``tz``) moved by ``seconds`` of real time, formatted.

    Results beyond datetime's range clamp to the first or last representable timestamp.
    """
    try:
        # replace() keeps ``fold``: 0 for parsed text, the true pass for upstream_now().
        instant = local.replace(tzinfo=tz).astimezone(UTC) + timedelta(seconds=seconds)
        return format_ts(instant.astimezone(tz))
    except OverflowError:
        return _MIN_TEXT if seconds < 0 else _MAX_TEXT


@dataclass(frozen=True, slots=True)
class WindowPolicy:
    """How far back each poll reads.

    ``recent_window``: seconds re-read behind the cursor on every poll. ``lookback``: seconds
    re-read on a sweep, every ``sweep_interval`` seconds, to catch records written late (a call's
    record appears when it ends but is stamped when it began). ``start_from``: ``"now"`` or a
    ``YYYY-MM-DD HH:MM:SS`` upstream timestamp to start from on the very first poll.
    """

    recent_window: float
    lookback: float
    sweep_interval: float
    start_from: str


@dataclass(frozen=True, slots=True)
class PollPlan:
    """What the next poll asks for: records after ``since`` (upstream text).

    ``sweep``: this poll reads the full look-back (so the caller records the sweep time).
    ``seed_only``: remember the records as seen but deliver none of them.
    """

    since: str
    sweep: bool
    seed_only: bool


def plan_poll(
    newest: str | None,
    last_sweep: float | None,
    now: float,
    policy: WindowPolicy,
    tz: ZoneInfo,
    *,
    sweep_from: str | None = None,
    memo: StartMemo | None = None,
) -> PollPlan:
    """Plan the next poll from the cursor (``newest``) and the last sweep time.

    * First poll with ``start_from="now"``: read the last ``lookback`` and only *seed* from it:
      records that already exist are marked seen without delivery (so a late record from before
      the relay started is not delivered as new later) and the cursor is set. Reading the whole
      look-back makes this a sweep too.
    * First poll with a start timestamp: read (and deliver) everything after it, as a sweep.
    * Polled before (``last_sweep`` set) but never a record seen, so still no cursor: sweep
      from the last poll's time minus ``lookback`` (not before ``start_from``), and deliver. A
      quiet account must not be re-seeded on every poll, or its first call would be swallowed.
    * Later polls: a sweep from ``sweep_from - lookback`` when one is due (never swept, at least
      ``sweep_interval`` since the last, or the wall clock went backwards past the last sweep),
      otherwise ``newest - recent_window``.

    ``sweep_from`` is the cursor as it was right after the previous sweep (None, unparsable or
    newer than ``newest``: ``newest``). Reading back from there rather than from ``newest`` is
    what makes the look-back exact: a record that appears after that sweep, stamped at most
    ``lookback`` behind the newest record *at the moment it appears*, is stamped after
    ``sweep_from - lookback``, however far the cursor has moved by the time the next sweep runs.

    Any window that reaches back across a fall-back (the upstream's UTC offset is smaller now
    than at the window's start) starts earlier by the difference: calls made in the repeated
    hour are stamped with text *behind* a cursor from its first pass, and would otherwise wait
    for a sweep, or never be read at all if ``lookback`` is shorter than the shift.

    A cursor that does not parse (it never should: only validated timestamps become cursors) is
    treated as lost: the plan sweeps back ``lookback`` from the upstream's now and delivers,
    trusting rid de-duplication, rather than re-seeding and silently skipping records.
    ``ValueError`` if ``start_from`` is neither ``"now"`` nor a valid timestamp.
    """
    if newest is None:
        return _plan_without_cursor(last_sweep, now, policy, tz)
    due = (
        last_sweep is None
        or now - last_sweep >= policy.sweep_interval
        or now < last_sweep  # the wall clock moved back: sweeping is the safe side
    )
    text = newest
    if (
        due
        and sweep_from is not None
        and sweep_from < newest
        and parse_ts(sweep_from) is not None
        and parse_ts(newest) is not None  # a cursor that does not parse is lost, anchor or not
    ):
        text = sweep_from
    seconds = policy.lookback if due else policy.recent_window
    start = memo.start(text, seconds, tz) if memo is not None else _window_start(text, seconds, tz)
    if start is None:  # the cursor does not parse: lost
        since = _shift(upstream_now(now, tz), -policy.lookback, tz)
        return PollPlan(since=since, sweep=True, seed_only=False)
    return PollPlan(since=_before_fall_back(*start, now, tz), sweep=due, seed_only=False)


_Start = tuple[str, timedelta | None]


def _window_start(text: str, seconds: float, tz: ZoneInfo) -> _Start | None:
    """``text`` moved back ``seconds``, with the upstream's UTC offset at that start (read as
    its first pass); None if ``text`` does not parse. A function of its arguments alone."""
    cursor = parse_ts(text)
    if cursor is None:
        return None
    since = _shift(cursor, -seconds, tz)
    return since, _offset_of(since, tz)


def _offset_of(text: str, tz: ZoneInfo) -> timedelta | None:
    start = parse_ts(text)
    return None if start is None else start.replace(tzinfo=tz).utcoffset()


class StartMemo:
    """One account's window starts, as :func:`plan_poll` computed them last.

    A start depends on the cursor text, the seconds read back and the zone alone, and an
    account's cursor moves only when a newer call comes: most polls ask again for the start
    they asked for last, and this answers without the datetime and zoneinfo work (~10 µs a
    poll, which at 10,000 accounts is a tenth of the poll's own cost). Holds at most a few
    entries (the recent window's and the sweep's start)."""

    __slots__ = ("_entries",)
    SIZE = 4

    def __init__(self) -> None:
        self._entries: dict[tuple[str, float, ZoneInfo], _Start | None] = {}

    def start(self, text: str, seconds: float, tz: ZoneInfo) -> _Start | None:
        key = (text, seconds, tz)
        try:
            return self._entries[key]
        except KeyError:
            pass
        value = _window_start(text, seconds, tz)
        if len(self._entries) >= self.SIZE:
            self._entries.clear()
        self._entries[key] = value
        return value


def _before_fall_back(since: str, then: timedelta | None, now: float, tz: ZoneInfo) -> str:
    """``since`` (whose UTC offset is ``then``), moved back by however much the upstream's
    clocks went back since then.

    ``since`` is read as its first pass (``fold=0``), the earlier instant, so the shift is never
    too small; across a spring-forward the offset grows and nothing changes.
    """
    current = _offset_now(now, tz)
    if then is None or current is None or current >= then:
        return since
    start = parse_ts(since)
    if start is None:
        return since
    try:
        return format_ts(start - (then - current))
    except OverflowError:
        return _MIN_TEXT


def _whole_second(now: float) -> int | None:
    """The whole second that ``datetime.fromtimestamp(now)`` falls in, where that is surely
    ``floor(now)``: None before 1970, and within a microsecond of the next second
    (``fromtimestamp`` rounds to microseconds, half to even, so ``k + 0.9999996`` reads as
    ``k + 1``).

    Every zone's transitions are at whole seconds (TZif files and POSIX rules count seconds),
    so a zone's offset, and the wall-clock second at a whole-second distance, are the same for
    every ``now`` of one such second: what the per-second caches below rely on."""
    if not now >= 0.0:  # also NaN
        return None
    whole = math.floor(now)
    if now - whole >= 0.999999:
        return None
    return int(whole)


# The last second's answers, per zone (and skew): time moves on, so one entry each is enough.
_OFFSETS: dict[ZoneInfo, tuple[int, timedelta | None]] = {}
_SKEW_LIMITS: dict[tuple[ZoneInfo, float], tuple[int, str]] = {}


def _offset_now(now: float, tz: ZoneInfo) -> timedelta | None:
    """The upstream's UTC offset at Unix time ``now``."""
    second = _whole_second(now)
    if second is not None:
        hit = _OFFSETS.get(tz)
        if hit is not None and hit[0] == second:
            return hit[1]
    offset = datetime.fromtimestamp(now, tz).utcoffset()
    if second is not None:
        _OFFSETS[tz] = (second, offset)
    return offset


def _plan_without_cursor(
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
    since = _before_fall_back(since, _offset_of(since, tz), now, tz)
    return PollPlan(since=since, sweep=True, seed_only=False)


def skew_limit(now: float, tz: ZoneInfo, max_clock_skew: float) -> str:
    """The newest plausible ``call_timestamp`` at Unix time ``now``: the upstream's wall clock
    plus ``max_clock_skew`` seconds. Later ones are not believed as cursors.

    With a whole number of seconds of skew, the answer is the same for every ``now`` of one
    second (see :func:`_whole_second`), and is computed once per second and zone."""
    second = _whole_second(now) if float(max_clock_skew).is_integer() else None
    if second is None:
        return _skew_limit(now, tz, max_clock_skew)
    key = (tz, max_clock_skew)
    hit = _SKEW_LIMITS.get(key)
    if hit is not None and hit[0] == second:
        return hit[1]
    limit = _skew_limit(float(second), tz, max_clock_skew)
    _SKEW_LIMITS[key] = (second, limit)
    return limit


def _skew_limit(now: float, tz: ZoneInfo, max_clock_skew: float) -> str:
    return _shift(upstream_now(now, tz), max_clock_skew, tz)


def advance_cursor(
    current: str | None,
    call_timestamps: Iterable[str],
    now: float,
    tz: ZoneInfo,
    max_clock_skew: float,
) -> str | None:
    """The new cursor: the newest of ``current`` and every plausible timestamp just seen.

    A timestamp more than ``max_clock_skew`` seconds ahead of the upstream's now is not
    plausible: its record is still delivered, but the cursor must not follow it into the future,
    where the recent window would no longer cover the real, current records. Timestamps that do
    not parse are ignored. The cursor never moves backwards.
    """
    limit = skew_limit(now, tz, max_clock_skew)
    best = current
    for ts in call_timestamps:
        # Valid text in this format compares like the times it names.
        if parse_ts(ts) is not None and ts <= limit and (best is None or ts > best):
            best = ts
    return best


def prune_before(newest: str, lookback: float, margin: float) -> str:
    """The ``call_timestamp`` below which remembered rids can be forgotten.

    That is ``newest - lookback - margin``: no future poll reads further back than
    ``newest - lookback``, and ``margin`` covers clock oddities (DST, skew). Plain wall-clock
    arithmetic (no zone) is enough here: the margin dwarfs a DST hour. ``ValueError`` if
    ``newest`` does not parse.
    """
    cursor = parse_ts(newest)
    if cursor is None:
        raise ValueError("newest is not a YYYY-MM-DD HH:MM:SS timestamp")
    try:
        return format_ts(cursor - timedelta(seconds=lookback + margin))
    except OverflowError:
        return _MIN_TEXT


@dataclass(frozen=True, slots=True)
class ValidRecord:
    """A record that passed validation: its rid as an int, its timestamp text, the record as is."""

    rid: int
    call_ts: str
    record: dict[str, Any]


def _check(raw: Any) -> tuple[int, str] | str:
    """(rid, call_ts) for an acceptable record, else the reason it is not."""
    if not isinstance(raw, dict):
        return "record is not an object"
    rid = raw.get("rid")
    if rid is None:
        return "rid missing"
    if isinstance(rid, str) and rid.isascii() and rid.isdigit():
        if len(rid) > 19:  # also keeps int() clear of its huge-string guard
            return "rid out of range"
        rid = int(rid)  # only our copy: the record itself keeps the upstream's string
    if not isinstance(rid, int) or isinstance(rid, bool) or rid < 0:
        return "rid not an integer"
    if rid > RID_MAX:
        return "rid out of range"
    ts = raw.get("call_timestamp")
    if ts is None:
        return "call_timestamp missing"
    if not isinstance(ts, str) or parse_ts(ts) is None:
        return "call_timestamp malformed"
    return rid, ts


def validate_records(
    records: list[Any],
) -> tuple[list[ValidRecord], list[tuple[Any, str]]]:
    """Split one response's records into valid ones and rejects (each with a short reason).

    A valid record is a JSON object with a non-negative integer ``rid`` (an int, not a bool, or
    a string of ASCII digits, which is converted for our use only) that fits a signed 64-bit
    column, and a ``call_timestamp`` that :func:`parse_ts` accepts. Reasons: ``"record is not an
    object"``, ``"rid missing"``, ``"rid not an integer"`` (also negative), ``"rid out of
    range"``, ``"call_timestamp missing"``, ``"call_timestamp malformed"``, ``"duplicate rid in
    response"``.

    When a rid repeats within the response, the first valid occurrence wins. A later one with
    identical content is a pure duplicate and is dropped silently (it is in neither list); one
    with different content is rejected as ``"duplicate rid in response"`` so it can be looked at.
    """
    valid: list[ValidRecord] = []
    rejected: list[tuple[Any, str]] = []
    by_rid: dict[int, ValidRecord] = {}
    for raw in records:
        checked = _check(raw)
        if isinstance(checked, str):
            rejected.append((raw, checked))
            continue
        rid, ts = checked
        first = by_rid.get(rid)
        if first is None:
            by_rid[rid] = record = ValidRecord(rid, ts, raw)
            valid.append(record)
        elif first.record != raw:
            rejected.append((raw, "duplicate rid in response"))
    return valid, rejected
