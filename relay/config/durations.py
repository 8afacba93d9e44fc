"""Human-friendly durations for configuration: ``30s``, ``15m``, ``2h``, ``1d``, ``500ms``.

Every time setting in the config is a number of seconds, but people write ``2h`` far more
reliably than ``7200``. Parsing is strict on purpose: a typo such as ``5 mins`` is an error with a
clear message rather than a silently different value.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator

__all__ = ["Duration", "PollInterval", "PositiveDuration", "format_duration", "parse_duration"]

_MESSAGE = "must be a duration like 30s, 15m, 2h"
_POLL_MESSAGE = 'must be "auto" or a duration like 5s, 500ms, 1m'

# Seconds per unit. Units are lower case only, so ``1M`` (a month? a minute?) is rejected.
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

# [0-9], not \d: \d matches other scripts' digits, which float() would then accept.
_PATTERN = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)\s*(?P<unit>ms|s|m|h|d)?")

# Largest first: format_duration picks the biggest unit that represents the value exactly.
_DISPLAY_UNITS = (("d", 86400), ("h", 3600), ("m", 60))


def parse_duration(value: object) -> float:
    """Return ``value`` as a number of seconds.

    Accepts a non-negative int or float (seconds) or a string: a number with an optional unit
    (``ms``, ``s``, ``m``, ``h``, ``d``), e.g. ``"90"``, ``"30s"``, ``"1.5h"``, ``"500ms"``.
    Raises ValueError for anything else (negative, bool, empty, unknown unit, not finite).
    """
    # bool is an int subclass; a YAML ``yes`` where a duration belongs is a mistake, not 1s.
    if isinstance(value, bool):
        raise ValueError(_MESSAGE)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        match = _PATTERN.fullmatch(value.strip())
        if match is None:
            raise ValueError(_MESSAGE)
        seconds = float(match["number"]) * _UNITS[match["unit"] or "s"]
    else:
        raise ValueError(_MESSAGE)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(_MESSAGE)
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds compactly for display: 7200 -> ``2h``, 90 -> ``90s``, 0.5 -> ``500ms``.

    The biggest unit that shows the value exactly is used, so the text parses back to the same
    number; values finer than a millisecond fall back to plain seconds (``0.0005s``).
    """
    if seconds < 0:
        return "-" + format_duration(-seconds)
    millis = round(seconds * 1000)
    # Float arithmetic: 0.1 * 1000 is not exactly 100, so compare with a tolerance.
    if not math.isclose(millis / 1000, seconds, rel_tol=1e-12, abs_tol=1e-12):
        return f"{seconds:g}s"
    if millis % 1000:
        return f"{millis}ms"
    whole = millis // 1000
    for unit, size in _DISPLAY_UNITS:
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be greater than 0s")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""Seconds (>= 0), written in config as a number or a string such as ``30s``."""

PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]
"""Like :data:`Duration`, but zero is rejected (intervals, timeouts)."""


def _auto_or_duration(value: object) -> float | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return _positive(parse_duration(value))
    except ValueError as exc:
        if str(exc) == _MESSAGE:
            raise ValueError(_POLL_MESSAGE) from None
        raise


PollInterval = Annotated[float | Literal["auto"], BeforeValidator(_auto_or_duration)]
"""A :data:`PositiveDuration`, or ``"auto"``: as often as the API key's budget allows
(:mod:`relay.core.cadence`)."""
