"""The records of a large body, parsed by orjson a slice at a time instead of event by event.

ijson's event parser cost about 15 µs a record, the largest part of a big poll's time on the
event loop (and every re-read of the recent window pays it again). orjson parses the same bytes
about ten times faster, but only whole documents. So the records array is cut into pieces of
about a slice's worth of records, each cut just after a ``}`` that a ``,`` and a ``{`` follow
(blanks allowed), and each piece is parsed as ``[`` piece ``]``.

Why a cut can be trusted without a tokenizer: every piece starts where an element starts
(outside any string), so orjson reads its tokens exactly as a whole parse would. If it accepts
``[`` piece ``]`` the piece is a run of complete elements and the cut fell between two of them;
a cut inside a string leaves that string unclosed, and a cut inside a nested value leaves a
bracket open, and either is refused. A refused piece is tried again up to the next possible
cut a few times (text such as ``"},{"`` inside a string), and then the rest of the array goes
to the event parser, as before: ``fallback(start)``, which also reads what follows the array.
The last piece runs to the ``]`` of the body's closing ``]}``; if the records were not the
last member, it is refused too, and the event parser takes over there.

What orjson would read differently from a whole parse is kept away by the caller
(:class:`relay.ingest.body.StreamedBody`): integers of 20 digits or more (orjson reads them as
floats) and lone surrogate escapes; numbers beyond double range and NaN are refused by orjson
itself, and the event parser then abandons the stream, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson

# Where the records array's elements start: the one "records" member (the caller checked that
# the name occurs once), its colon and bracket.
_OPEN = re.compile(rb'"records"\s*:\s*\[\s*')
# The body ends with the records array and the top-level object.
_CLOSE = re.compile(rb"\]\s*\}\s*\Z")
# A possible cut: the end of an element that is an object, before the next one.
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_GUESS = 256  # bytes a record takes, until the first piece tells
_RETRIES = 4  # further cuts tried after a refused one, before the event parser takes over


def array_span(body: bytes) -> tuple[int, int] | None:
    """Where the records array's elements lie in ``body`` (after ``[``, up to the final
    ``]``), or None when the body does not end with that array."""
    opened = _OPEN.search(body)
    closed = _CLOSE.search(body)
    if opened is None or closed is None or closed.start() < opened.end():
        return None
    return opened.end(), closed.start()


def sliced(
    body: bytes,
    span: tuple[int, int],
    per_slice: int,
    fallback: Callable[[int], Iterator[Any]],
) -> Iterator[Any]:
    """The elements of the array at ``span``, one by one, parsed about ``per_slice`` at a time;
    from the first piece no cut can be found for, ``fallback(start of that piece)``."""
    at, end = span
    if at >= end:
        return  # an empty array
    width = _GUESS * per_slice
    while at < end:
        parsed: list[Any] | None = None
        cut = at + width
        for _ in range(_RETRIES + 1):
            found = _BOUNDARY.search(body, cut, end) if cut < end else None
            stop = end if found is None else found.start() + 1
            try:
                items = orjson.loads(b"[" + body[at:stop] + b"]")
            except orjson.JSONDecodeError:
                if found is None:
                    break
                cut = found.end()
                continue
            if isinstance(items, list) and items:  # "[" + "]" around elements is a list
                parsed = items
                next_at = stop if found is None else found.end() - 1
            break
        if parsed is None:
            yield from fallback(at)
            return
        # The next piece aims at per_slice records from what these ones measured.
        width = max(1, (next_at - at) // len(parsed)) * per_slice
        at = next_at
        yield from parsed
