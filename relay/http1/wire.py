"""One webhook connection: write a pre-built request, parse its answer with llhttp
(``httptools``), within a bounded head and a capped body. The pools and the client that use it
are in :mod:`relay.http1.client`, which also explains why this path exists."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import cast

import httptools

from relay.core.errors import RelayError

# A receiver's answer is untrusted input. 64 KiB of head and 100 fields are what common servers
# accept for requests (nginx: 8 KiB lines, 32 KiB in all; Go: 1 MiB; Node: 16 KiB); a webhook
# answer needs a few hundred bytes.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100
# The only headers anyone reads (the sender: retry-after, location; the upstream GET: also the
# content type and coding; this module: how the body is framed and whether the connection
# stays). The rest are counted and dropped.
KEPT_HEADERS = frozenset(
    {
        "retry-after",
        "location",
        "content-type",
        "content-encoding",
        "content-length",
        "transfer-encoding",
        "connection",
    }
)
# Response.error of a strict request (see Connection.request) whose body is longer than its cap.
TOO_LARGE = "response body larger than the cap"
# Bodies up to this size go out in one write with the head (one syscall, the hot path); larger
# ones are written after it in slices of this size, each when the transport has room for it.
WRITE_SLICE = 256 * 1024


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing an answer that broke a limit."""


class Disconnected(RelayError):
    """The connection closed before the status line of an answer arrived."""

    def __init__(self, message: str, *, got_bytes: bool) -> None:
        super().__init__(message)
        self.got_bytes = got_bytes


class BadResponse(RelayError):
    """The receiver answered with something that is not HTTP/1.x."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Response:
    """An answer. ``body`` holds at most the cap; ``error`` says why it is incomplete, if it is
    (the status still counts: the receiver did answer)."""

    status: int
    headers: dict[str, str]  # KEPT_HEADERS only; lower-case names; repeats joined with ", "
    body: bytes
    error: str | None = None


class Connection(asyncio.Protocol):
    """One TCP (or TLS) connection and the parser for the answers that arrive on it."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Response] | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._cap = 0
        self._status: int | None = None
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._interim = False
        self._got_bytes = False
        self._timer: asyncio.TimerHandle | None = None
        self._time_limit = 0.0
        self._head_room = 0  # wire bytes the heads of this answer may still take
        self._in_head = False  # the parser is inside a status line or headers
        self._fields = 0  # header fields of this answer (interim ones included)
        self._framing_room = 0  # wire bytes after the head that are not body, still allowed
        self._refused: str | None = None  # why a callback gave up on the answer
        self._body_seen = 0  # body bytes of this answer, kept or not
        self._strict = False  # a body over the cap fails the answer (else it is cut off)
        self._over = False  # ... and this one's is
        self._out: memoryview | None = None  # the body still to write, for large bodies
        self._paused = False  # the transport's buffer is full (flow control)

    # -- used by the pool -------------------------------------------------------------------

    def request(
        self,
        head: bytes,
        body: bytes,
        cap: int,
        deadline: float,
        time_limit: float,
        *,
        strict: bool = False,
    ) -> asyncio.Future[Response]:
        """Send one request; the future resolves with its answer (or the reason there is none).

        At ``deadline`` (loop time) the connection is closed, and the future resolves with what
        arrived (if the status did) or fails with TimeoutError. One timer handle per request
        costs a fraction of an ``asyncio.timeout`` block on this hot path.

        A body longer than ``cap`` is cut off at the cap (a receiver's answer: its start is
        what is worth keeping); with ``strict`` it is not kept at all: the answer resolves with
        ``error`` :data:`TOO_LARGE` and an empty body as soon as the ``Content-Length`` or the
        bytes so far exceed the cap (the upstream's answer: only the whole of it is of use).
        """
        assert self._transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._timer = loop.call_at(deadline, self._expire)
        self._time_limit = time_limit
        self._cap = cap
        self._status = None
        self._headers = {}
        self._body = bytearray()
        self._got_bytes = False
        self._head_room = MAX_HEAD_BYTES
        self._in_head = True
        self._fields = 0
        self._framing_room = MAX_HEAD_BYTES
        self._refused = None
        self._body_seen = 0
        self._strict = strict
        self._over = False
        if len(body) <= WRITE_SLICE:
            self._transport.write(head + body)
        else:
            # A large body is not copied: not joined to the head, and handed to the transport
            # a slice at a time, so it never holds more than a slice beyond its high-water mark.
            self._transport.write(head)
            self._out = memoryview(body)
            self._write_more()
        return waiter

    def abort(self) -> None:
        self.reusable = False
        self.closed = True
        self._out = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()

    def tls_session(self) -> ssl.SSLSession | None:
        """This connection's TLS session (None over plain TCP). Read after an answer: TLS 1.3
        servers send their session tickets after the handshake, before the first answer."""
        if self._transport is None:
            return None
        tls = self._transport.get_extra_info("ssl_object")
        return tls.session if isinstance(tls, ssl.SSLObject) else None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._write_more()

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            # Bytes nobody asked for (after a complete answer, or on an idle connection): the
            # stream is out of step, so it must not carry another request.
            self.abort()
            return
        self._got_bytes = True
        if self._in_head and len(data) > self._head_room:
            # Only what the head may still take goes to the parser first: it buffers a header
            # until it ends, so an endless one must never reach it whole.
            room = self._head_room
            if not self._feed(data[:room]):
                if self._waiter is None:
                    self.reusable = False  # bytes after a complete answer: out of step
                return
            if self._in_head:
                self._refuse(f"response head exceeds {MAX_HEAD_BYTES // 1024} KiB")
                return
            data = data[room:]
        self._feed(data)

    def _feed(self, data: bytes) -> bool:
        """Parse ``data``; False when the answer ended with it (the connection is closed)."""
        in_head, before = self._in_head, self._body_seen
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._status is None:
                self._fail(BadResponse("invalid HTTP response: an upgrade without a status"))
            else:
                self._finish("the receiver switched protocols")
            self.abort()
            return False
        except httptools.HttpParserCallbackError:
            self._refuse(self._refused or "invalid HTTP response")
            return False
        except httptools.HttpParserError as exc:
            if self._waiter is not None and self._status is not None and not self._interim:
                # The status arrived, so the receiver did answer; only the body is broken.
                self._finish(f"invalid HTTP response body: {exc}")
            else:
                self._fail(BadResponse(f"invalid HTTP response: {exc}"))
            self.abort()
            return False
        if (
            self._waiter is not None
            and self._status is not None
            and not self._interim
            and (self._over if self._strict else len(self._body) >= self._cap)
        ):
            # Enough kept (or, strict, too much to keep any); the rest is not drained: this
            # connection is closed instead.
            self._finish(None)
            self.abort()
            return False
        if in_head:
            self._head_room -= len(data)
        elif self._waiter is not None:
            # Chunk sizes, extensions and trailers: bounded like a head (the parser buffers
            # trailers as it does headers), whatever the body cap.
            self._framing_room -= len(data) - (self._body_seen - before)
            if self._framing_room < 0:
                self._finish(f"response framing exceeds {MAX_HEAD_BYTES // 1024} KiB")
                self.abort()
                return False
        return self._waiter is not None

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        self._out = None
        if self._waiter is None or self._waiter.done():
            return
        if self._status is None or self._interim:
            self._fail(
                Disconnected("connection closed without a response", got_bytes=self._got_bytes)
            )
        elif "content-length" in self._headers or "transfer-encoding" in self._headers:
            self._finish("connection closed before the response body ended")
        else:
            self._finish(None)  # a body delimited by the end of the connection

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None:
            self.reusable = False  # a second answer to one request: the stream is out of step
        # A fresh dict per answer: the Response built for the previous one keeps its own.
        self._headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > MAX_HEADERS:
            self._refused = f"response has more than {MAX_HEADERS} header fields"
            raise _Refused  # stops the parser; feed_data raises HttpParserCallbackError
        if self._status is not None and not self._interim:
            return  # a trailer (after a chunked body): counted, never kept
        key = name.decode("latin-1").lower()
        if key not in KEPT_HEADERS:
            return
        text = value.decode("latin-1")
        old = self._headers.get(key)
        # Joining is bounded: at most MAX_HEADERS fields of at most MAX_HEAD_BYTES in all.
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        self._interim = 100 <= status < 200 and status != 101
        self._status = status
        if self._strict and not self._interim:
            length = self._headers.get("content-length", "")
            # Refused before a byte of the body is read (a repeated or odd value: the bytes
            # decide, as they arrive).
            self._over = length.isdigit() and int(length) > self._cap

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        if self._strict:
            if self._over or self._body_seen > self._cap:
                self._over = True
                self._body = bytearray()  # nothing of it is of use: let it go now
            else:
                self._body += body
            return
        room = self._cap - len(self._body)
        if room > 0:
            self._body += body[:room]

    def on_message_complete(self) -> None:
        if self._interim:
            # "100 Continue" and friends come before the real answer: wait for that.
            self._interim = False
            self._in_head = True
            self._status = None
            self._headers = {}
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._finish(None)

    # -- internals --------------------------------------------------------------------------

    def _expire(self) -> None:
        self._timer = None
        if self._waiter is not None and not self._waiter.done():
            if self._status is None or self._interim:
                self._fail(TimeoutError())
            else:
                # The status arrived, so the receiver did answer; only the body is missing.
                self._finish(f"timeout after {self._time_limit:g}s")
        self.abort()

    def _write_more(self) -> None:
        """Hand the transport body slices until it is full (it calls pause_writing) or done."""
        assert self._transport is not None
        while self._out is not None and not self._paused:
            piece, rest = self._out[:WRITE_SLICE], self._out[WRITE_SLICE:]
            self._out = rest if len(rest) else None
            self._transport.write(piece)

    def _refuse(self, reason: str) -> None:
        """Give up on an answer that broke a limit: no status counts, the connection goes."""
        self._fail(BadResponse(reason))
        self.abort()

    def _finish(self, error: str | None) -> None:
        assert self._status is not None
        if self._over:
            error = TOO_LARGE  # however the answer ended, its body was not kept
        if self._out is not None:
            # Answered before the whole request was written (e.g. an early 413): the rest of
            # the body would arrive as the start of the next request.
            self.reusable = False
            self._out = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # The buffer goes with the answer: an idle connection kept holding the last body, and a
        # catch-up's 33 MB answer stayed in memory twice while its records were stored.
        body, self._body = bytes(self._body), bytearray()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self._status, self._headers, body, error))

    def _fail(self, exc: Exception) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
