"""Receivers the stock ``python -m relay.sim.receiver --fast`` cannot play, in their own process.

``python -m bench.rx --mode MODE [--listeners N]`` listens on N loopback ports and prints one
JSON line ``{"urls": [...]}`` when ready; it serves until SIGTERM, or at most ``--max-seconds``.

* ``hang``: accept every request and never answer (a black-hole subscriber).
* ``gate``: like ``hang`` until ``GET /_open``, then answer every waiting and later request 200
  (a subscriber that was down and comes back). Per request it does what the stock fast receiver
  does (read the body, count, answer), so drain rates compare with throughput figures.
* ``record``: answer 200 and note ``time.monotonic()`` and the record's rid on arrival;
  ``GET /_dump`` returns ``[[listener, rid, t], ...]`` (for end-to-end latency).
* ``count``: what the stock fast receiver does (read the body, count, answer 200), plus the
  arrival time of the first and the last request, so that a rate is measured from outside the
  sender: ``count / (last - first)``. ``GET /_reset`` starts a new count.

``GET /_stats`` returns ``{"requests": N, "first": t, "last": t, "connections": C}`` in every
mode (``time.monotonic()``, one clock for every process on Linux; ``connections``: TCP
connections accepted since the last reset, and ``resumed``, how many of them resumed a TLS
session; ``gap``, the longest pause between two arrivals). ``--tls CERT KEY`` serves HTTPS
with that chain and key; ``--close`` answers every request with ``Connection: close`` (a new
connection per request). Loopback only; the process ends by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import ssl
import sys
import time

import orjson
from aiohttp import web

_OK = b'{"ok":true}'
_JSON = {"Content-Type": "application/json"}
_CLOSE = {**_JSON, "Connection": "close"}


class Counter:
    def __init__(self, mode: str, close: bool = False) -> None:
        self.mode = mode
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.gap = 0.0
        self.transports: set[object] = set()
        self.connections = 0
        self.resumed = 0  # TLS connections whose handshake resumed an earlier session
        self.headers = _CLOSE if close else _JSON
        self.opened = asyncio.Event()
        self.seen: list[tuple[int, int, float]] = []

    def handler(self, listener: int) -> object:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            now = time.monotonic()
            if not self.count:
                self.first = now
            elif now - self.last > self.gap:
                self.gap = now - self.last  # the longest pause between two arrivals
            self.last = now
            self.count += 1
            # One transport per TCP connection: counting distinct ones costs a set lookup.
            if request.transport not in self.transports:
                self.transports.add(request.transport)
                self.connections += 1
                tls = request.transport.get_extra_info("ssl_object") if request.transport else None
                self.resumed += bool(tls is not None and tls.session_reused)
            if self.mode == "record":
                rid = orjson.loads(body)["data"]["rid"]
                self.seen.append((listener, rid, time.monotonic()))
            elif self.mode == "hang" or (self.mode == "gate" and not self.opened.is_set()):
                # Cancelled when the client gives up (handler_cancellation) or at shutdown.
                await (asyncio.Event() if self.mode == "hang" else self.opened).wait()
            return web.Response(body=_OK, headers=self.headers)

        return handle

    async def open(self, request: web.Request) -> web.Response:
        self.opened.set()
        return web.Response(body=_OK, headers=_JSON)

    async def stats(self, request: web.Request) -> web.Response:
        doc = {
            "requests": self.count,
            "first": self.first,
            "last": self.last,
            "connections": self.connections,
            "resumed": self.resumed,
            "gap": self.gap,
        }
        return web.Response(body=orjson.dumps(doc), headers=_JSON)

    async def reset(self, request: web.Request) -> web.Response:
        self.count = self.connections = self.resumed = 0
        self.first = self.last = self.gap = 0.0
        self.transports.clear()
        return web.Response(body=_OK, headers=_JSON)

    async def dump(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.seen), headers=_JSON)


async def serve(
    mode: str,
    listeners: int,
    max_seconds: float,
    tls: ssl.SSLContext | None = None,
    close: bool = False,
) -> None:
    counter = Counter(mode, close)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runners: list[web.AppRunner] = []
    urls: list[str] = []
    try:
        for i in range(listeners):
            app = web.Application()
            app.router.add_get("/_open", counter.open)
            app.router.add_get("/_stats", counter.stats)
            app.router.add_get("/_dump", counter.dump)
            app.router.add_get("/_reset", counter.reset)
            app.router.add_post("/{tail:.*}", counter.handler(i))  # type: ignore[arg-type]
            runner = web.AppRunner(
                app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
            )
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
            scheme = "https" if tls else "http"
            urls.append(f"{scheme}://127.0.0.1:{runner.addresses[0][1]}")
        sys.stdout.write(orjson.dumps({"urls": urls}).decode() + "\n")
        sys.stdout.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)
    finally:
        counter.opened.set()
        for runner in runners:
            await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rx")
    parser.add_argument("--mode", choices=["hang", "gate", "record", "count"], required=True)
    parser.add_argument("--listeners", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS")
    parser.add_argument("--close", action="store_true", help="a new connection per request")
    args = parser.parse_args()
    tls = None
    if args.tls:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(*args.tls)
    # asyncio's own loop, as the stock ``relay.sim.receiver --fast`` (the receiver).
    asyncio.run(serve(args.mode, args.listeners, args.max_seconds, tls, args.close))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
