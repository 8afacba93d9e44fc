"""The admin HTTP surface: health, status, dead letters, replay, re-enabling a subscriber.

Off unless ``admin.listen`` is set. Everything except ``/healthz`` needs the admin token as a
bearer token when one is configured. Responses never contain secrets.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from relay.config.schema import AdminSettings
from relay.ops.control import RelayControl
from relay.store.base import Store

log = logging.getLogger(__name__)


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(doc), status=status, content_type="application/json")


class AdminServer:
    """An aiohttp app on ``admin.listen``; ``start``/``stop`` are no-ops when it is off."""

    def __init__(self, settings: AdminSettings, store: Store, control: RelayControl) -> None:
        self._settings = settings
        self._store = store
        self._control = control
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/dead-letters", self._dead_letters)
        app.router.add_post("/dead-letters/replay", self._replay)
        app.router.add_post("/subscribers/{name}/enable", self._enable)
        return app

    async def start(self) -> None:
        if not self._settings.listen:
            return
        address = self._settings.address()
        assert address is not None
        host, port = address
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host or None, port)
        await site.start()
        bound = self._runner.addresses[0] if self._runner.addresses else (host, port)
        self.url = f"http://{bound[0]}:{bound[1]}"
        log.info("admin API listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        token = self._settings.token
        if token is not None and request.path != "/healthz":
            sent = request.headers.get("Authorization", "")
            expected = f"Bearer {token.get_secret_value()}"
            if not hmac.compare_digest(sent.encode(), expected.encode()):
                return _json({"error": "admin token required"}, status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        ok = self._control.ready
        return _json({"ok": ok}, status=200 if ok else 503)

    async def _status(self, request: web.Request) -> web.Response:
        status = await self._control.status()
        return _json(status.to_dict())

    async def _dead_letters(self, request: web.Request) -> web.Response:
        subscriber = request.query.get("subscriber")
        limit = int(request.query.get("limit", "100"))
        letters = await self._store.dead_letters(subscriber, min(max(limit, 1), 1000))
        return _json([dataclasses.asdict(letter) for letter in letters])

    async def _replay(self, request: web.Request) -> web.Response:
        doc = await request.json(loads=orjson.loads) if request.can_read_body else {}
        subscriber = doc.get("subscriber")
        ids = doc.get("ids")
        count = await self._store.replay(subscriber, ids, time.time())
        self._wake(subscriber)
        log.info("replayed %d dead letters", count, extra={"subscriber": subscriber})
        return _json({"replayed": count})

    async def _enable(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        await self._store.set_subscriber_disabled(name, None, time.time())
        self._wake(name)
        log.info("subscriber re-enabled", extra={"subscriber": name})
        return _json({"enabled": name})

    def _wake(self, subscriber: str | None) -> None:
        self._control.wake([subscriber] if subscriber else None)
