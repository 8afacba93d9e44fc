"""Receivers the stock ``python -m relay.sim.receiver --fast`` cannot play, in their own process.

``python -m bench.rx --mode MODE [--listeners N]`` listens on N loopback ports and prints one
JSON line ``{"urls": [...]}`` when ready; it serves until SIGTERM, or at most ``--max-seconds``.

* ``hang``: accept every request and never answer (a black-hole subscriber).
* ``gate``: like ``hang`` until ``GET /_open``, then answer every waiting and later request 200
  (a subscriber that was down and comes back). Per request it does what the stock fast receiver
  does (read the body, count, answer), so drain rates compare with throughput figures.
* ``record``: answer 200 and note ``time.monotonic()`` and the record's rid on arrival;
  ``GET /_dump`` returns ``[[listener, rid, t], ...]`` (for end-to-end latency).

``GET /_stats`` returns ``{"requests": N}`` in every mode. Loopback only; the process ends by
itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

import orjson
from aiohttp import web

_OK = b'{"ok":true}'
_JSON = {"Content-Type": "application/json"}


class Counter:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.count = 0
        self.opened = asyncio.Event()
        self.seen: list[tuple[int, int, float]] = []

    def handler(self, listener: int) -> object:
        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.count += 1
            if self.mode == "record":
                rid = orjson.loads(body)["data"]["rid"]
                self.seen.append((listener, rid, time.monotonic()))
            elif self.mode == "hang" or not self.opened.is_set():
                # Cancelled when the client gives up (handler_cancellation) or at shutdown.
                await (asyncio.Event() if self.mode == "hang" else self.opened).wait()
            return web.Response(body=_OK, headers=_JSON)

        return handle

    async def open(self, request: web.Request) -> web.Response:
        self.opened.set()
        return web.Response(body=_OK, headers=_JSON)

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"requests": self.count}), headers=_JSON)

    async def dump(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.seen), headers=_JSON)


async def serve(mode: str, listeners: int, max_seconds: float) -> None:
    counter = Counter(mode)
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
            app.router.add_post("/{tail:.*}", counter.handler(i))  # type: ignore[arg-type]
            runner = web.AppRunner(
                app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5
            )
            await runner.setup()
            runners.append(runner)
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")
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
    parser.add_argument("--mode", choices=["hang", "gate", "record"], required=True)
    parser.add_argument("--listeners", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    args = parser.parse_args()
    asyncio.run(serve(args.mode, args.listeners, args.max_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
