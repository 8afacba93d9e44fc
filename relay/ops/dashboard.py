"""The operator dashboard at ``/``: one page and its assets, shipped in the package (no build
step, no CDN), plus the sign-in that turns the admin token into a session.

Signing in posts the token once; the answer sets an ``HttpOnly; SameSite=Strict`` session cookie
(scripts cannot read it, other sites cannot send it) and returns a CSRF token the page sends as
``X-CSRF-Token`` on every state-changing request. Sessions live in memory: a restart signs
everyone out, which is fine for an operator tool. Failed sign-ins are limited per client address
and overall (:mod:`relay.ops.signin`): 429 with ``Retry-After``.
"""

from __future__ import annotations

import importlib.resources
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass

from aiohttp import web

from relay.config.schema import AdminSettings
from relay.ops import guard
from relay.ops.signin import SignInLimiter

log = logging.getLogger(__name__)

COOKIE = "relay_session"
SESSION_TTL = 12 * 3600.0
MAX_SESSIONS = 256  # the oldest session is dropped beyond this
ASSETS = {
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
PUBLIC_PATHS = frozenset({"/", "/session"})
# The page loads only its own files; nothing inline, nothing from elsewhere.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@dataclass(slots=True)
class Session:
    """One signed-in browser."""

    csrf: str
    expires: float


def is_public(path: str) -> bool:
    """Paths served without the token: the page, its assets and the sign-in itself."""
    return path in PUBLIC_PATHS or path.startswith("/assets/")


def _asset(name: str) -> bytes:
    return importlib.resources.files("relay.ops").joinpath("assets", name).read_bytes()


class Dashboard:
    """Serves the page and manages sessions for :class:`~relay.ops.admin.AdminServer`."""

    def __init__(self, settings: AdminSettings) -> None:
        self._settings = settings
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        limit = settings.sign_in_limit
        self.limiter = SignInLimiter(
            per_address=(limit.failures, limit.every),
            overall=(limit.global_failures, limit.global_every),
        )

    def routes(self) -> list[tuple[str, str, guard.Handler]]:
        """(method, path, handler) for the admin app."""
        return [
            ("GET", "/", self._index),
            ("GET", "/assets/{name}", self._assets),
            ("GET", "/session", self._whoami),
            ("POST", "/session", self._sign_in),
            ("DELETE", "/session", self._sign_out),
        ]

    def session(self, request: web.Request) -> Session | None:
        """The request's live session, if its cookie names one."""
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        found = self._sessions.get(sid)
        if found is None or found.expires < time.time():
            self._sessions.pop(sid, None)
            return None
        return found

    def csrf_ok(self, request: web.Request, session: Session) -> bool:
        """True when a state-changing request carries the session's CSRF token."""
        return guard.same_secret(request.headers.get("X-CSRF-Token", ""), session.csrf)

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            body=_asset("index.html"),
            content_type="text/html",
            charset="utf-8",
            headers=_page_headers(),
        )

    async def _assets(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = ASSETS.get(name)  # only the files we ship: no path ever reaches the filesystem
        if kind is None:
            raise guard.BadRequest("no such asset", 404)
        return web.Response(body=_asset(name), content_type=kind, headers=_page_headers())

    async def _whoami(self, request: web.Request) -> web.Response:
        session = self.session(request)
        if session is None:
            return guard.json_response({"signed_in": False, "token_required": self._required})
        return guard.json_response({"signed_in": True, "csrf": session.csrf})

    @property
    def _required(self) -> bool:
        return self._settings.token is not None

    async def _sign_in(self, request: web.Request) -> web.Response:
        token = self._settings.token
        address = request.remote or "unknown"
        if token is not None:
            # Before the body is read or the token compared: a limited client learns nothing.
            wait = self.limiter.retry_after(address)
            if wait > 0:
                response = guard.error(f"too many failed sign-ins; try again in {wait} s", 429)
                response.headers["Retry-After"] = str(wait)
                return response
        doc = await guard.read_json_object(request)
        sent = doc.get("token")
        if token is not None and not (
            isinstance(sent, str) and guard.same_secret(sent, token.get_secret_value())
        ):
            if self.limiter.failed(address):
                log.warning("dashboard sign-in limited after failed attempts",
                            extra={"client": address})  # fmt: skip
            return guard.error("wrong admin token", 401)
        sid, session = secrets.token_urlsafe(32), Session(secrets.token_urlsafe(32), 0.0)
        session.expires = time.time() + SESSION_TTL
        self._sessions[sid] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        response = guard.json_response({"signed_in": True, "csrf": session.csrf})
        response.set_cookie(
            COOKIE,
            sid,
            max_age=int(SESSION_TTL),
            path="/",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )
        return response

    async def _sign_out(self, request: web.Request) -> web.Response:
        sid = request.cookies.get(COOKIE)
        if sid:
            self._sessions.pop(sid, None)
        response = guard.json_response({"signed_in": False})
        response.del_cookie(COOKIE, path="/")
        return response


def _page_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }
