"""The admin HTTP surface: probes, status, metrics, a call's journey, dead letters, replay,
redelivery, re-enabling a subscriber, reload.

Off unless ``admin.listen`` is set. Everything except the probes needs the admin token as a
bearer token when one is configured (config requires one on any non-loopback address). Requests
pass :mod:`relay.ops.guard` first: Host, Origin/Sec-Fetch-Site and content-type checks, bounded
connections. Responses never contain secrets.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from aiohttp import web

from relay.config.schema import AdminSettings
from relay.core.journey import RecordQuery
from relay.ops import guard, metrics
from relay.ops.control import RelayControl
from relay.ops.dashboard import Dashboard, is_public
from relay.ops.guard import BadRequest, json_response
from relay.ops.journey import explain, journey_doc
from relay.store.base import Store

log = logging.getLogger(__name__)

PROBES = frozenset({"/healthz", "/readyz"})
_CALL_TS = "YYYY-MM-DD HH:MM:SS"


class AdminServer:
    """An aiohttp app on ``admin.listen``; ``start``/``stop`` are no-ops when it is off."""

    def __init__(self, settings: AdminSettings, store: Store, control: RelayControl) -> None:
        self._settings = settings
        self._store = store
        self._control = control
        self._runner: web.AppRunner | None = None
        self.site: guard.CappedSite | None = None
        self.url: str | None = None
        self.dashboard = Dashboard(settings)

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[guard.json_errors, self._guard], client_max_size=guard.MAX_BODY
        )
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)
        r.add_get("/status", self._status)
        r.add_get("/metrics", self._metrics)
        r.add_get("/dead-letters", self._dead_letters)
        r.add_post("/dead-letters/replay", self._replay)
        r.add_post("/subscribers/{name}/enable", self._enable)
        r.add_post("/subscribers/{name}/resume", self._enable)
        r.add_post("/subscribers/{name}/pause", self._pause)
        r.add_get("/records", self._find)
        r.add_get("/records/{account}/{rid}", self._journey)
        r.add_post("/deliveries/{id}/redeliver", self._redeliver)
        r.add_post("/reload", self._reload)
        r.add_get("/deliveries/recent", self._recent)
        for method, path, handler in self.dashboard.routes():
            r.add_route(method, path, handler)
        return app

    async def start(self) -> None:
        if not self._settings.listen:
            return
        address = self._settings.address()
        assert address is not None
        host, port = address
        # keepalive_timeout also closes a connection that never sends a first request.
        self._runner = web.AppRunner(
            self.app(), access_log=None, keepalive_timeout=self._settings.idle_timeout
        )
        await self._runner.setup()
        self.site = guard.CappedSite(
            self._runner, host or None, port, self._settings.max_connections
        )
        await self.site.start()
        bound = self._runner.addresses[0] if self._runner.addresses else (host, port)
        self.url = f"http://{bound[0]}:{bound[1]}"
        log.info("admin API listening on %s", self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the gate -------------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: guard.Handler) -> web.StreamResponse:
        host = guard.host_of(request.headers.get("Host", ""))
        if not guard.host_allowed(host, self._settings.allowed_hosts):
            # DNS rebinding: a page on evil.example whose name now resolves to us.
            return guard.error("unknown Host; add it to admin.allowed_hosts", 421)
        unsafe = request.method not in guard.SAFE_METHODS
        if unsafe:
            why = guard.cross_site(request)
            if why is not None:
                return guard.error(why, 403)
        if request.method == "POST" and request.content_type != "application/json":
            return guard.error("POST requests must be Content-Type: application/json", 415)
        if request.path in PROBES or is_public(request.path) or self._bearer(request):
            return await handler(request)
        session = self.dashboard.session(request)
        if session is None:
            return guard.error("admin token required", 401)
        if unsafe and not self.dashboard.csrf_ok(request, session):
            return guard.error("CSRF token missing or wrong (sign in again)", 403)
        return await handler(request)

    def _bearer(self, request: web.Request) -> bool:
        token = self._settings.token
        if token is None:
            return True
        sent = request.headers.get("Authorization", "")
        return guard.token_matches(sent, token.get_secret_value())

    def authorized(self, request: web.Request) -> bool:
        """True when no token is configured, or the request carries it or a session."""
        return self._bearer(request) or self.dashboard.session(request) is not None

    # -- probes and status -----------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        # Liveness: the event loop answers. Readiness is /readyz.
        return json_response({"ok": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        status = await self._control.status()
        doc = status.to_dict()
        body: dict[str, Any] = {"ready": doc["ready"]}
        if self.authorized(request):
            body["problems"] = doc["problems"]  # names and reasons: for operators only
        return json_response(body, status=200 if doc["ready"] else 503)

    async def _status(self, request: web.Request) -> web.Response:
        return json_response((await self._control.status()).to_dict())

    async def _metrics(self, request: web.Request) -> web.Response:
        body = metrics.render(await self._control.status())
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    # -- dead letters, replay, enable ------------------------------------------------------------

    async def _dead_letters(self, request: web.Request) -> web.Response:
        subscriber = request.query.get("subscriber")
        limit = guard.query_int(request, "limit", 100, 1, 1000)
        letters = await self._store.dead_letters(subscriber, limit)
        return json_response([dataclasses.asdict(letter) for letter in letters])

    async def _replay(self, request: web.Request) -> web.Response:
        doc = await guard.read_json_object(request)
        subscriber = doc.get("subscriber")
        if subscriber is not None:
            self._configured(subscriber, "subscriber")
        ids = doc.get("ids")
        if ids is not None and (
            not isinstance(ids, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            raise BadRequest("ids must be a list of delivery ids (whole numbers)")
        if ids is not None and len(ids) > 10_000:
            raise BadRequest("at most 10000 ids at once")
        count = await self._store.replay(subscriber, ids, time.time())
        self._wake(subscriber)
        log.info("replayed %d dead letters", count, extra={"subscriber": subscriber})
        return json_response({"replayed": count})

    async def _enable(self, request: web.Request) -> web.Response:
        name = self._configured(request.match_info["name"], "name")
        await self._store.set_subscriber_disabled(name, None, time.time())
        self._wake(name)
        log.info("subscriber re-enabled", extra={"subscriber": name})
        return json_response({"enabled": name})

    async def _pause(self, request: web.Request) -> web.Response:
        name = self._configured(request.match_info["name"], "name")
        # A pause is a disable with an operator's reason: deliveries wait, nothing is dropped.
        await self._store.set_subscriber_disabled(
            name, metrics.PAUSED_PREFIX + " by operator", time.time()
        )
        log.info("subscriber paused", extra={"subscriber": name})
        return json_response({"paused": name})

    def _configured(self, name: object, what: str) -> str:
        if not isinstance(name, str):
            raise BadRequest(f"{what} must be a subscriber name (a string)")
        if name not in self._control.subscriber_names:
            raise BadRequest(f"no subscriber named {name[:100]!r} in the configuration", 404)
        return name

    def _wake(self, subscriber: str | None) -> None:
        self._control.wake([subscriber] if subscriber else None)

    # -- a call's journey, search, redelivery ----------------------------------------------------

    async def _journey(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        try:
            rid = int(request.match_info["rid"])
        except ValueError:
            raise BadRequest("rid must be a whole number") from None
        journey = explain(await self._store.journey(account, rid), self._control.settings)
        doc = journey_doc(journey)
        found = journey.record is not None or journey.quarantined or journey.seen
        return json_response(doc, status=200 if found else 404)

    async def _find(self, request: web.Request) -> web.Response:
        query = RecordQuery(
            account=request.query.get("account") or None,
            caller=request.query.get("caller") or None,
            since=_call_ts(request, "since"),
            until=_call_ts(request, "until"),
            limit=guard.query_int(request, "limit", 50, 1, 1000),
        )
        hits = await self._store.find_records(query)
        return json_response([dataclasses.asdict(hit) for hit in hits])

    async def _redeliver(self, request: web.Request) -> web.Response:
        try:
            delivery_id = int(request.match_info["id"])
        except ValueError:
            raise BadRequest("delivery id must be a whole number") from None
        subscriber = await self._store.delivery_subscriber(delivery_id)
        if subscriber is None:
            raise BadRequest(f"no delivery {delivery_id}", 404)
        if subscriber not in self._control.subscriber_names:
            raise BadRequest(f"subscriber {subscriber!r} is not in the configuration", 409)
        if not await self._store.redeliver(delivery_id, time.time()):
            raise BadRequest(f"delivery {delivery_id} is already queued or in flight", 409)
        self._wake(subscriber)
        log.info("redelivery queued", extra={"subscriber": subscriber, "delivery": delivery_id})
        return json_response({"redelivering": delivery_id, "subscriber": subscriber})

    async def _recent(self, request: web.Request) -> web.Response:
        limit = guard.query_int(request, "limit", 20, 1, 500)
        attempts = await self._store.recent_attempts(limit)
        return json_response([dataclasses.asdict(a) for a in attempts])

    async def _reload(self, request: web.Request) -> web.Response:
        result = await self._control.reload()
        return json_response(dataclasses.asdict(result), status=200 if result.ok else 400)


def _call_ts(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if not value:
        return None
    if len(value) != len(_CALL_TS) or value[4] != "-" or value[10] != " ":
        raise BadRequest(f"{name} must be a call time like 2025-07-01 14:53:43")
    return value
