"""A local, scriptable webhook receiver for tests, ``relay demo`` and benchmarks.

``Receiver`` accepts ``POST`` on any path, records each request, and answers from a script of
:class:`Reply` values (then from a default, 200 ``{"ok":true}``). Tests wait on conditions rather
than sleeping: :meth:`Receiver.wait_for` wakes on every request.

Most replies are ordinary aiohttp responses. Two need the socket itself:

* ``reset`` aborts the transport without writing anything;
* ``trickle_headers`` writes a hand-built HTTP/1.1 response to ``request.transport`` one byte at
  a time (aiohttp's ``StreamResponse`` sends the status line and headers in one write, so it
  cannot trickle them), then closes the connection.

In both cases the handler then returns an unprepared response; aiohttp's attempt to send it
fails with a ``ConnectionError``, which aiohttp treats as a client disconnect and ignores.

For benchmarks run it in its own process: ``python -m relay.sim.receiver --port 0 --print-url
[--fast]`` prints the URL once listening, serves until SIGINT/SIGTERM, then prints
``{"requests": N, "ok": M}``. ``GET /_stats`` returns the same JSON while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import json
import logging
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from relay.sim.localserver import LocalServer
from relay.sim.replies import (
    HangReply,
    HugeReply,
    Reply,
    ResetReply,
    SlowReply,
    StatusReply,
    StreamForeverReply,
    TrickleReply,
    status_of,
)

__all__ = ["ReceivedRequest", "Receiver", "Reply", "serve_forever"]

logger = logging.getLogger(__name__)

_OK_BODY = b'{"ok":true}'
_JSON = {"Content-Type": "application/json"}
_CHUNK = 64 * 1024

Verifier = Callable[[Mapping[str, str], bytes], None]


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One request as received.

    ``at`` is ``time.monotonic()`` once the body was read; header names are lower-cased
    (repeated headers joined with ", "); ``status_sent`` is the status the receiver chose to
    answer, 0 when it sends no status line (hang, reset).
    """

    at: float
    path: str
    headers: dict[str, str]
    body: bytes
    status_sent: int

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


# --- receiver -------------------------------------------------------------------------------


class Receiver(LocalServer):
    """A webhook receiver recording every ``POST`` in ``requests``.

    With ``verify``, each request's (headers, body) is passed to it first; if it raises, the
    request is answered 401 (and recorded) without consuming the script.
    """

    def __init__(self, *, verify: Verifier | None = None) -> None:
        self.requests: list[ReceivedRequest] = []
        super().__init__()
        self._verify = verify
        self._script: deque[Reply] = deque()
        self._default: Reply = Reply.ok()
        self._changed = asyncio.Condition()

    def script(self, *replies: Reply) -> None:
        """Queue ``replies``, one per request, before the default applies again."""
        self._script.extend(replies)

    def set_default(self, reply: Reply) -> None:
        """Answer with ``reply`` whenever the script is empty.

        A default ``slow`` without ``then`` answers 200 late: "then the default" would be itself.
        """
        if isinstance(reply, SlowReply) and reply.then is None:
            reply = SlowReply(reply.seconds, Reply.ok())
        self._default = reply

    def ok_requests(self) -> list[ReceivedRequest]:
        """The requests answered with a 2xx status."""
        return [r for r in self.requests if 200 <= r.status_sent < 300]

    # A required timeout (rather than asyncio.timeout around the call) keeps a broken test from
    # hanging and lets the error say what did arrive.
    async def wait_for(
        self,
        predicate: Callable[[list[ReceivedRequest]], bool],
        timeout: float,  # noqa: ASYNC109
    ) -> None:
        """Wait until ``predicate(self.requests)`` holds (checked now and on each request).

        The predicate gets the live list: read it, do not change it. Raises ``TimeoutError``
        describing what did arrive if ``timeout`` seconds pass first.
        """
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: predicate(self.requests))
        except TimeoutError:
            statuses = [r.status_sent for r in self.requests[-20:]]
            name = getattr(predicate, "__name__", repr(predicate))
            raise TimeoutError(
                f"receiver: {name} still false after {timeout}s; "
                f"{len(self.requests)} requests received, last statuses {statuses}"
            ) from None

    async def wait_count(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until at least ``n`` requests have been received."""

        def at_least_n(requests: list[ReceivedRequest]) -> bool:
            return len(requests) >= n

        await self.wait_for(at_least_n, timeout)

    # --- lifecycle ---------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        # Webhook bodies are small, but a test may send a large record: allow up to 16 MiB.
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/_stats", self._stats)
        app.router.add_post("/{tail:.*}", self._handle)
        return app

    async def _stats(self, request: web.Request) -> web.Response:
        body = _stats_body(len(self.requests), len(self.ok_requests()))
        return web.Response(body=body, headers=_JSON)

    # --- serving -----------------------------------------------------------------------------

    def _choose(self, headers: Mapping[str, str], body: bytes) -> Reply:
        if self._verify is not None:
            try:
                self._verify(headers, body)
            except Exception:
                # A failed verification is an expected outcome here, not a receiver bug.
                logger.debug("receiver: verification failed", exc_info=True)
                return Reply.status(401, _JSON, b'{"error":"invalid signature"}')
        return self._script.popleft() if self._script else self._default

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            body = await request.read()
            headers: dict[str, str] = {}
            for name, value in request.headers.items():
                name = name.lower()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            reply = self._choose(headers, body)
            status = status_of(reply, self._default)
            self.requests.append(
                ReceivedRequest(time.monotonic(), request.path, headers, body, status)
            )
            async with self._changed:
                self._changed.notify_all()
            return await self._respond(request, reply)
        finally:
            self._inflight.discard(task)

    async def _respond(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        match reply:
            case StatusReply(code=code, headers=headers, body=body):
                return web.Response(status=code, headers=dict(headers), body=body)
            case SlowReply(seconds=seconds, then=then):
                await asyncio.sleep(seconds)
                return await self._respond(request, then or self._default)
            case HangReply():
                # Cancelled when the client disconnects (handler_cancellation) or on stop().
                await asyncio.Event().wait()
            case ResetReply():
                if request.transport is not None:
                    request.transport.abort()
            case HugeReply(nbytes=nbytes):
                return await _huge(request, nbytes)
            case StreamForeverReply(limit=limit):
                return await _stream_forever(request, limit)
            case TrickleReply(delay=delay, then=then):
                await _trickle(request, delay, then)
        return web.Response()  # never sent: the connection is already gone


async def _huge(request: web.Request, nbytes: int) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = nbytes
    await response.prepare(request)
    chunk = b"x" * _CHUNK
    sent = 0
    with contextlib.suppress(ConnectionError):  # the client may stop reading, as it should
        while sent < nbytes:
            part = chunk[: nbytes - sent]
            await response.write(part)
            sent += len(part)
    return response


async def _stream_forever(request: web.Request, limit: float) -> web.StreamResponse:
    response = web.StreamResponse(headers=_JSON)
    response.enable_chunked_encoding()
    await response.prepare(request)
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    with contextlib.suppress(ConnectionError):
        while loop.time() < end:
            await response.write(b" ")
            await asyncio.sleep(0.05)
        await response.write_eof()
    return response


async def _trickle(request: web.Request, delay: float, reply: StatusReply) -> None:
    """Write a complete HTTP/1.1 response by hand, its head one byte per ``delay`` seconds."""
    transport = request.transport
    if transport is None:
        return
    try:
        phrase = http.HTTPStatus(reply.code).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {reply.code} {phrase}"]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    lines += [f"Content-Length: {len(reply.body)}", "Connection: close", "", ""]
    for byte in "\r\n".join(lines).encode("latin-1"):
        if transport.is_closing():
            return
        transport.write(bytes((byte,)))
        await asyncio.sleep(delay)
    transport.write(reply.body)
    transport.close()


# --- process entry point ----------------------------------------------------------------------


def _stats_body(requests: int, ok: int) -> bytes:
    return json.dumps({"requests": requests, "ok": ok}).encode()


class _Counter(LocalServer):
    """The ``--fast`` receiver: read the body, count, answer 200. Nothing else per request."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        app.router.add_get("/_stats", self.stats)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.count += 1
        return web.Response(body=_OK_BODY, headers=_JSON)

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(body=_stats_body(self.count, self.count), headers=_JSON)


async def serve_forever(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    fast: bool = False,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[int, int]:
    """Serve until ``stop`` is set (default: until cancelled); return (requests, ok answers).

    ``on_ready`` is called with the URL once listening. With ``fast`` the receiver only counts.
    """
    stop = stop or asyncio.Event()
    server: _Counter | Receiver = _Counter() if fast else Receiver()
    await server.start(host, port)
    try:
        if on_ready is not None:
            on_ready(server.url)
        await stop.wait()
    finally:
        await server.stop()
    if isinstance(server, _Counter):
        return server.count, server.count
    return len(server.requests), len(server.ok_requests())


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m relay.sim.receiver``: a standalone receiver for benchmarks."""
    parser = argparse.ArgumentParser(
        prog="python -m relay.sim.receiver",
        description="A local webhook receiver for benchmarks. Prints the request count on exit.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--print-url", action="store_true", help="print the URL when listening")
    parser.add_argument("--fast", action="store_true", help="only count requests, answer 200")
    args = parser.parse_args(argv)

    def ready(url: str) -> None:
        if args.print_url:
            print(url, flush=True)

    async def run() -> tuple[int, int]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C still interrupts
                loop.add_signal_handler(sig, stop.set)
        return await serve_forever(args.host, args.port, fast=args.fast, on_ready=ready, stop=stop)

    requests, ok = asyncio.run(run())
    sys.stdout.write(_stats_body(requests, ok).decode() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
