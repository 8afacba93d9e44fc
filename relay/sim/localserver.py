"""A small base for the aiohttp servers the relay ships for its demo, tests and benchmarks
(the simulated WebFones API and the scriptable receiver): start on a free local port, stop
without waiting on handlers that hang, and use as an async context manager."""

from __future__ import annotations

import asyncio
import ssl
from types import TracebackType
from typing import Any, Self

from aiohttp import web


class LocalServer:
    """Serves the app from :meth:`build_app`; handlers register their task in ``_inflight``."""

    # How long aiohttp's cleanup waits for handlers still running (ours are cancelled first).
    shutdown_timeout = 1.0

    def __init__(self) -> None:
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._inflight: set[asyncio.Task[Any]] = set()

    def build_app(self) -> web.Application:
        """The aiohttp application to serve (subclasses add their routes)."""
        raise NotImplementedError

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on ``host:port`` (0 = any free port) and return the base URL (``https://``
        with ``ssl_context``). Already running (e.g. inside ``async with``): just the URL."""
        if self._runner is not None:
            return self.url
        # handler_cancellation: a client disconnect cancels its handler, so a slow or hanging
        # handler does not outlive the connection it was answering.
        runner = web.AppRunner(
            self.build_app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=self.shutdown_timeout,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=ssl_context).start()
        except BaseException:
            await runner.cleanup()
            raise
        shown = f"[{host}]" if ":" in host else host
        scheme = "http" if ssl_context is None else "https"
        self._runner, self.url = runner, f"{scheme}://{shown}:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        """Stop serving; requests still in progress are cancelled. Safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        # Cancel handlers first so that cleanup does not wait its grace period on a hang.
        for task in list(self._inflight):
            task.cancel()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
