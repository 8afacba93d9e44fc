"""A 200 answer's body, parsed: at once into a :class:`FetchResult`, or, when it is large, as a
:class:`StreamedBody` whose records are read a slice at a time.

Pure: bytes in, records or a :class:`~relay.core.errors.MalformedResponse` out; no HTTP here
(:mod:`relay.ingest.upstream` fetches the bytes). A body of up to :data:`STREAM_ABOVE`
bytes (a normal poll) is parsed at once. A larger one (a catch-up after an outage: 100,000
records are about 33 MB, and four times that as Python objects) is streamed, so that only a
slice of its records exists as Python objects at once.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from ijson.backends import yajl2_c as ijson  # type: ignore[import-untyped]
from ijson.common import JSONError  # type: ignore[import-untyped]
from ijson.utils import sendable_list  # type: ignore[import-untyped]

from relay.core.errors import MalformedResponse, RelayError
from relay.core.text import escape_controls
from relay.ingest.slices import array_span, sliced

_EXCERPT = 200  # characters of an error body worth putting in a log line
# An integer of 20+ digits may exceed 64 bits, which orjson would silently read as a float. A
# run of 20 digits is looked for with every digit made "0" and every other byte " ": ten times
# faster than a regex, which tries a match at every digit of every number.
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 20


def _long_number(body: bytes) -> bool:
    """Whether ``body`` holds a run of 20 or more ASCII digits."""
    return _LONG_RUN in body.translate(_DIGITS_ONLY)


_JSON_TYPES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}

# Bodies larger than this are streamed (see StreamedBody). Below it the whole-body parse costs a
# few MB at most and is twice as fast; a normal poll (a few records) is a few KB.
STREAM_ABOVE = 1 << 20
# Deeper nesting is left to the whole-body parser, which refuses past 1024 levels. ijson keeps a
# path string per open level, so its memory grows with the square of the depth: a 1 MB body of
# brackets would take terabytes. Call records are two or three levels deep.
_MAX_DEPTH = 64


def _all_but(keep: bytes) -> bytes:
    """The bytes for `bytes.translate` to delete so that only those in ``keep`` remain."""
    return bytes(b for b in range(256) if b not in keep)


# Brackets, and the quotes that tell which of them are inside strings...
_NOT_STRUCTURE = _all_but(b'"[]{}')
# ... plus backslashes and every character that can follow one in an escape.
_NOT_STRUCTURE_OR_ESCAPE = _all_but(b'"[]{}\\/bfnrtu')
_STRING = re.compile(rb'"[^"]*"')
# An escaped printable ASCII character, as in "succ\u0065ss": only such an escape can spell a
# member's name differently from its plain bytes.
_ESCAPED_ASCII = re.compile(rb"\\u00[2-7][0-9a-fA-F]")
# A UTF-16 surrogate escape without its partner: ijson turns a lone high one into "?" (and fails
# on a lone low one, so one this misses after an escaped backslash still falls back).
# (It starts with a plain "\\u" so that the search skips ahead to each escape.)
_LONE_SURROGATE = re.compile(
    rb"\\u[dD](?:[89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])"
    rb"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD])[c-fC-F][0-9a-fA-F]{2})"
)
# The parser is fed pieces of about this size (ijson's own default), each cut just after a quote
# that delimits a string (see _pieces).
_PIECE = 1 << 16
_LIST = object()  # a top-level member whose value is a list
_OBJECT = object()  # ... an object
_END = object()


class StreamAbandoned(RelayError):
    """A large body cannot be streamed exactly; it must be parsed whole instead.

    Raised by :meth:`StreamedBody.batches` (and the poller) before anything the whole-body
    parser would disagree with is stored; never leaves the poller.
    """


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A successful response: the raw records and what the body said about them."""

    records: list[Any]
    count: int | None
    nbytes: int
    # Records refused by the parser itself, each with why (see NON_FINITE): kept aside, not
    # delivered, and counted as received.
    rejected: list[tuple[Any, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Outline:
    """The top level of a body as parse events show it: members by key (later ones win, as in a
    whole parse; a container stands as ``_LIST`` or ``_OBJECT``) and how often ``records``
    occurred."""

    members: dict[str, Any] = field(default_factory=dict)
    records_seen: int = 0
    # Decided by the members before the records, each name spelled once and plainly: then the
    # records array can be found by its bytes (see relay.ingest.slices).
    from_head: bool = False

    def count(self) -> int | None:
        count = self.members.get("count")
        return count if isinstance(count, int) and not isinstance(count, bool) else None


class StreamedBody:
    """A large 200 JSON body, kept as bytes and parsed a batch of records at a time.

    :meth:`batches` yields the records in lists, each one complete before it is yielded; when it
    ends, the whole body has been checked and :attr:`result` holds the records after the last
    batch and the body's ``count``. Records come out exactly as :func:`parse_body` would give
    them, or not at all: whatever the streaming parser cannot match raises
    :class:`StreamAbandoned`, and :meth:`whole` then parses the body at once, with the
    same records and the same error messages as a small body.

    The JSON syntax is checked as the records stream, not before: a syntax error near the end is
    found after earlier batches were yielded (and stored). That is safe because the cursor moves
    only with the last batch, and what was stored early are records exactly as sent, found again
    and de-duplicated when the window is read again; checking first would cost a second parse of
    every large body. What decides *whether* records may be stored at all is known before the
    first batch, from cheap looks at the bytes:

    * ``success`` is true and ``records`` is a list. In the documented order (``success``,
      ``count``, ``records``) the members before the records tell, and plain byte counts prove
      no member of the same name follows (a later duplicate would win in a whole parse): each
      name occurs once in the body, and no escaped ASCII letter could spell one differently.
      Otherwise (another order, record fields with those names) one event pass over the whole
      body reads the top level first: a few times slower, memory still flat.
    * Nesting is at most ``_MAX_DEPTH`` levels (see there), by the bracket structure.
    * No lone surrogate escape (ijson would change it); integers past 64 bits (and -2**63,
      which yajl's own number reader overflows on), and numbers beyond float range make ijson
      fail, which abandons the stream.
    """

    def __init__(self, content_type: str, body: bytes) -> None:
        self.nbytes = len(body)
        self._content_type = content_type
        self._body = body
        self.result: FetchResult | None = None

    def batches(self, size: int) -> Iterator[list[Any]]:
        """Yield the records in lists of ``size``; then set :attr:`result`."""
        outline = _streamable(self._body)
        if isinstance(outline, str):
            raise StreamAbandoned(outline)
        records = self._records(outline, size)
        batch: list[Any] = []
        while True:
            try:
                record = next(records, _END)
            except (JSONError, ValueError) as exc:
                # The first line names the problem; the next ones quote the body around it.
                reason = re.split(r"\n|\\n", str(exc), maxsplit=1)[0][:100] or type(exc).__name__
                raise StreamAbandoned(f"the streaming parser stopped: {reason}") from exc
            if record is _END:
                break
            batch.append(record)
            if len(batch) >= size:
                yield batch
                batch = []
        self.result = FetchResult(records=batch, count=outline.count(), nbytes=self.nbytes)

    def _records(self, outline: _Outline, size: int) -> Iterator[Any]:
        """The records one by one: sliced for orjson where the body allows it (see
        :mod:`relay.ingest.slices`), else from the event parser."""
        body = self._body
        span = array_span(body) if outline.from_head else None
        # orjson would read a 20-digit integer as a float: such a body stays with ijson (which
        # refuses it, so the whole-body parser reads it exactly).
        if span is None or _long_number(body):
            return _pushed(ijson.items_coro, _pieces(body), "records.item", use_float=True)

        def rest(start: int) -> Iterator[Any]:
            # The elements from ``start`` on and the rest of the body, as the end of an object
            # whose records they are (the members before them were read by the outline).
            parts = itertools.chain([b'{"records":['], _pieces(body, start))
            return _pushed(ijson.items_coro, parts, "records.item", use_float=True)

        return sliced(body, span, size, rest)

    def whole(self) -> FetchResult:
        """Parse the body at once, as a small one is (MalformedResponse if it is malformed)."""
        return parse_body(self._content_type, self._body)


def _streamable(body: bytes) -> _Outline | str:
    """The body's top level if its records can be streamed exactly (see StreamedBody), else
    why not."""
    escapes = b"\\" in body
    if escapes and _LONE_SURROGATE.search(body):
        return "it has a lone surrogate escape"
    if not _shallow(body, escapes=escapes):
        return "its brackets nest too deep to stream, or do not balance"
    if not escapes or _ESCAPED_ASCII.search(body) is None:
        head = _outline(body, stop_at_records=True)
        if head is not None and _head_decides(body, head):
            head.from_head = True
            return head
    outline = _outline(body, stop_at_records=False)
    if (
        outline is None
        or outline.members.get("success") is not True
        or outline.members.get("records") is not _LIST
        or outline.records_seen != 1
        or "records.item" in outline.members  # ijson's name for the items too
    ):
        return "it is not valid JSON, or not one object with success true and one records list"
    return outline


def _head_decides(body: bytes, head: _Outline) -> bool:
    """Whether the members before the records settle the top level: ``success`` is true, and
    no ``success``, ``count`` or ``records`` member (nor ``records.item``, which ijson could not
    tell from an item) follows. Only for a body where no name is spelled with escapes: then
    each member's name is in its bytes as written, and a string cannot hide a quoted name."""
    return (
        head.members.get("success") is True
        and head.members.get("records") is _LIST
        and body.count(b'"success"') == 1
        and body.count(b'"records') == 1
        and body.count(b'"count"') == (1 if "count" in head.members else 0)
    )


def _shallow(body: bytes, *, escapes: bool) -> bool:
    """Whether the brackets outside strings nest at most ``_MAX_DEPTH`` deep (and balance).

    Only brackets and quotes are kept, in order. With escapes, backslashes and what follows
    them are kept too: every escape then starts with a backslash and its next character, so
    escaped backslashes, read left to right, are exactly the ``\\\\`` pairs, and the escaped
    quotes are the ``\\"`` left after those. With both gone, the quotes pair up as written;
    dropping adjacent ones keeps every bracket on its side of them, and the strings that
    remain hold brackets and go with a regex. Each round then removes the innermost pairs, at
    most two levels, so whatever is gone after ``_MAX_DEPTH // 2`` rounds was at most
    ``_MAX_DEPTH`` deep. Call records need two or three rounds.
    """
    if escapes:
        text = body.translate(None, _NOT_STRUCTURE_OR_ESCAPE)
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
        structure = text.translate(None, _NOT_STRUCTURE)
    else:
        structure = body.translate(None, _NOT_STRUCTURE)
    structure = structure.replace(b'""', b"")
    if b'"' in structure:
        structure = _STRING.sub(b"", structure)
    for _ in range(_MAX_DEPTH // 2):
        if not structure:
            return True
        structure = structure.replace(b"{}", b"").replace(b"[]", b"")
    return not structure


def _outline(body: bytes, *, stop_at_records: bool) -> _Outline | None:
    """The top level of ``body`` from ijson's basic events (which keep no per-level state).

    With ``stop_at_records``, reading ends where the first ``records`` list starts, which costs
    the first buffer of a body in the documented order. None: not an object, nested deeper than
    ``_MAX_DEPTH``, or not valid JSON (the whole-body parser says how).
    """
    outline = _Outline()
    depth = 0
    key = ""
    try:
        for event, value in _pushed(ijson.basic_parse_coro, _pieces(body), use_float=True):
            if event == "start_map" or event == "start_array":
                if depth == 0 and event == "start_array":
                    return None
                if depth == 1:
                    outline.members[key] = _LIST if event == "start_array" else _OBJECT
                    if key == "records":
                        outline.records_seen += 1
                        if stop_at_records and event == "start_array":
                            return outline
                depth += 1
                if depth > _MAX_DEPTH:
                    return None
            elif event == "end_map" or event == "end_array":
                depth -= 1
            elif event == "map_key":
                if depth == 1:
                    key = value
            elif depth == 1:
                outline.members[key] = value
                if key == "records":
                    outline.records_seen += 1
            elif depth == 0:
                return None
    except (JSONError, ValueError):
        return None
    return outline


def _pushed(coroutine: Any, parts: Iterable[bytes], *args: Any, **config: Any) -> Iterator[Any]:
    """What ijson's ``coroutine`` (``items_coro``, ``basic_parse_coro``) makes of a body fed one
    piece at a time (``parts``: :func:`_pieces`); only one piece's worth of results exists at
    once."""
    sink = sendable_list()
    parser = coroutine(sink, *args, **config)
    for part in parts:
        try:
            parser.send(part)
        except (JSONError, ValueError):
            yield from sink  # what came before the error, as ijson's own reader gives it
            raise
        yield from sink
        del sink[:]
    parser.close()  # raises if the body ended early
    yield from sink


def _pieces(body: bytes, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
    """``body[start:stop]`` in pieces of at least :data:`_PIECE` bytes, each ending just after a
    string's opening or closing quote, so no token spans more than two pieces (``start``: where
    no string is open).

    Why: yajl keeps a token that a piece leaves unfinished and lexes it again from its start
    with each further piece, so a token spread over k pieces costs k times its length. ijson's
    own reader cuts every 64 KiB, and one 50 MB string (or number) took about 20 s to parse
    twice. Cutting just after a delimiting quote, the only unfinished token can be a string
    that opened there, and it ends in the next piece, which reaches at least its closing quote.
    Where the cuts fall never changes what is parsed, only how fast.
    """
    size = len(body) if stop is None else stop
    while start < size:
        end = _cut_after(body, start + _PIECE, size)
        yield body[start:end]
        start = end


def _cut_after(body: bytes, at: int, size: int) -> int:
    """The position just after the first delimiting quote at or after ``at`` (else ``size``)."""
    while at < size:
        quote = body.find(b'"', at, size)
        if quote < 0:
            break
        # A quote after an odd run of backslashes is escaped, inside a string. A run longer
        # than this look-back is taken as even: a wrong guess costs only speed.
        before = body[max(0, quote - 64) : quote]
        if (len(before) - len(before.rstrip(b"\\"))) % 2 == 0:
            return quote + 1
        at = quote + 1
    return size


def excerpt(body: bytes) -> str:
    """The start of an error body for a log line or status: control characters escaped, so a
    ``\\r`` or an ANSI escape in it cannot forge a line or drive a terminal."""
    text = body[:_EXCERPT].decode("utf-8", "replace").strip()
    return escape_controls(text) or "(empty body)"


def parse_200(content_type: str, body: bytes) -> FetchResult | StreamedBody:
    """A 200 body: parsed at once, or (above :data:`STREAM_ABOVE` bytes of JSON) streamed."""
    if len(body) > STREAM_ABOVE and "json" in content_type.lower():
        return StreamedBody(content_type, body)
    return parse_body(content_type, body)


def parse_body(content_type: str, body: bytes) -> FetchResult:
    """Validate a 200 body against the documented shape; MalformedResponse if it is not."""
    if "json" not in content_type.lower():
        raise MalformedResponse(
            f"expected JSON, got content type {content_type or 'none'!r}: {excerpt(body)}",
            status=200,
        )
    guard = _FiniteFloats()
    doc = _loads(body, guard)
    if not isinstance(doc, dict):
        raise MalformedResponse("body is not a JSON object", status=200)
    if doc.get("success") is not True:
        raise MalformedResponse(
            f"success is {_json_repr(doc, 'success')}, not true: {excerpt(body)}",
            status=200,
        )
    records = doc.get("records")
    if not isinstance(records, list):
        raise MalformedResponse(f"records is {_json_repr(doc, 'records')}, not a list", status=200)
    count = doc.get("count")
    rejected: list[tuple[Any, str]] = []
    if guard.refused:
        kept = []
        for record in records:
            if _has_refused(record):
                rejected.append((record, NON_FINITE))
            else:
                kept.append(record)
        records = kept
    return FetchResult(
        records=records,
        count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        nbytes=len(body),
        rejected=rejected,
    )


NON_FINITE = "number out of range (not a finite double)"


class _FiniteFloats:
    """``parse_float`` for :func:`json.loads`: a number beyond double range (``1e999``) would
    become ``inf``, which no JSON can carry on (orjson writes it as ``null``, the standard
    library as ``Infinity``). It stays its literal text, as an :class:`orjson.Fragment`, so
    that its record can be found, refused and kept aside exactly as it was sent."""

    def __init__(self) -> None:
        self.refused = False

    def __call__(self, text: str) -> float | orjson.Fragment:
        value = float(text)
        if math.isfinite(value):
            return value
        self.refused = True
        return orjson.Fragment(text.encode("ascii"))


def _has_refused(value: Any) -> bool:
    """Whether a parsed value holds a number :class:`_FiniteFloats` refused."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, orjson.Fragment):
            return True
    return False


def _loads(body: bytes, parse_float: _FiniteFloats) -> Any:
    """Parse JSON exactly: orjson when it is exact, else the standard library.

    orjson reads an integer beyond 64 bits as a float (the record would change on its way) and
    rejects a lone UTF-16 surrogate escape such as ``"\ud83d"``, which JavaScript's
    ``JSON.stringify`` writes for a string cut in the middle of an emoji. One such record must
    not block the whole account, so those bodies go through :mod:`json`, which keeps both as they
    were. NaN and Infinity are not JSON and stay refused. orjson refuses a number beyond double
    range (``1e999``) too; the standard library reads it with ``parse_float``, which marks it.
    """
    first_error: str | None = None
    if not _long_number(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            first_error = str(exc)
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=parse_float)
    except (ValueError, RecursionError) as exc:
        # orjson's message, when there is one, is the more precise of the two.
        reason = first_error or str(exc) or type(exc).__name__
    raise MalformedResponse(f"body is not valid JSON ({len(body)} bytes): {reason}", status=200)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_repr(doc: dict[str, Any], key: str) -> str:
    """How a member looks in JSON terms: ``missing``, ``null``, ``false``, ``a string``…"""
    if key not in doc:
        return "missing"
    value = doc[key]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _JSON_TYPES.get(type(value), "a number")
