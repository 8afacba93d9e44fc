"""Phone numbers to E.164: ``phonenumbers``, with a fast path for the shapes PBXs write.

:func:`parse_number` is what the call view and the template ``e164`` filter use. Its answer is
always the one ``phonenumbers`` gives (``tests/unit/test_phones.py`` compares the two on
generated numbers); only the cost differs. ``phonenumbers.parse`` costs 20-40 µs, most of a
chat format's render, and a new caller is a new number, so a cache alone does not help the
first delivery of every call. The fast path reads the North American shapes a PBX writes --
``(555) 017-7737``, ``555-017-7737``, ``+1 555 017 7737``, ``1-555-017-7737``, each optionally
with ``, x3203`` -- with one regular expression, in about a microsecond. Only what provably
gives the same answer is taken:

- ten digits whose area code starts with 2-9 (the NANP's own rule, and what ``phonenumbers``
  needs to treat a leading ``1`` as the country code rather than a digit);
- without ``+1``, only when the default region is ``US`` or ``CA`` (whose metadata both parse
  this way; other NANP regions have their own prefix rules, and other countries read the digits
  as their own national number);
- an extension of 1-6 ASCII digits after ``x``.

Anything else (other countries, other digits, letters, full-width characters, long or odd
extensions) goes to ``phonenumbers``. Both paths sit behind one bounded LRU cache: the same
numbers come back all the time (a PBX's own lines on every call, callers who call again).
"""

from __future__ import annotations

import functools
import re

import phonenumbers

# phonenumbers refuses longer input anyway; cutting first keeps a hostile field cheap.
MAX_NUMBER_TEXT = 250
FAST_REGIONS = frozenset({"US", "CA"})

_NANP = re.compile(
    r"(?P<plus>\+)?(?P<one>1[ .-]?)?"
    r"(?:\((?P<area>[2-9][0-9]{2})\) ?|(?P<bare>[2-9][0-9]{2})[ .-]?)"
    r"(?P<exchange>[0-9]{3})[ .-]?(?P<line>[0-9]{4})"
    r"(?:(?:, ?| )?x(?P<ext>[0-9]{1,6}))?",
    re.ASCII,
)

Parsed = tuple[str, str | None]


@functools.lru_cache(maxsize=4096)
def parse_number(text: str, region: str | None) -> Parsed | None:
    """``(E.164, extension)`` for a phone number written in ``text``, or ``None`` if it is not
    a whole number in ``region`` (possible as a whole, not only as a local number).

    ``region`` is the default region (``"US"``), or ``None`` to accept only numbers written with
    ``+``. Pure; the answer is the one ``phonenumbers`` gives (see the module docstring)."""
    if not text or len(text) > MAX_NUMBER_TEXT:
        return None
    if region is None and "+" not in text and "\uff0b" not in text:
        # Without a default region phonenumbers reads only a number that starts with one of
        # its plus signs (after a ``tel:`` prefix and phone-context, which are cut from this
        # text): with none anywhere it refuses, after ~8 us of parsing and an exception.
        return None
    return fast_parse(text, region) or slow_parse(text, region)


def fast_parse(text: str, region: str | None) -> Parsed | None:
    """The fast path alone: the result for text it reads, else ``None``, meaning only
    :func:`slow_parse` knows (every shape it reads is a whole number). Exposed for the
    equivalence tests."""
    match = _NANP.fullmatch(text)
    if match is None:
        return None
    plus, one, area, bare, exchange, line, ext = match.group(
        "plus", "one", "area", "bare", "exchange", "line", "ext"
    )
    if plus is not None and one is None:
        return None  # "+555..." is country code 5, not a North American number
    if plus is None and region not in FAST_REGIONS:
        return None
    return f"+1{area or bare}{exchange}{line}", ext


def slow_parse(text: str, region: str | None) -> Parsed | None:
    """What ``phonenumbers`` makes of ``text``: parse, require a possible (not local-only)
    number, format as E.164 and split out the extension."""
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164, parsed.extension or None
