"""What stands between the network and the admin handlers: host, origin and content-type checks
(DNS rebinding and cross-site requests), authentication, one JSON shape for every error, and a
listener that caps and times out connections so idle sockets cannot exhaust descriptors.

Every rejection is a JSON ``{"error": "..."}`` with a 4xx status and a message that says what
to change; none echoes a header value (the token, a cookie) back.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_BODY = 64 * 1024  # admin requests are tiny; anything larger is refused before parsing
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BadRequest(web.HTTPException):
    """A request the admin API cannot act on; ``status_code`` and a message for the caller."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status_code = status
        super().__init__(reason=None, text=message)
        self.message = message


def json_response(doc: Any, status: int = 200) -> web.Response:
    """``doc`` as a JSON response (numbers that JSON cannot carry become null)."""
    return web.Response(
        body=orjson.dumps(doc),
        status=status,
        content_type="application/json",
    )


def error(message: str, status: int) -> web.Response:
    """The one error shape."""
    return json_response({"error": message}, status=status)


def host_of(value: str) -> str | None:
    """The host part of a Host header (``[::1]:8080`` -> ``::1``); None if malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        return value[1:end].lower()
    host, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return host.lower() or None


def host_allowed(host: str | None, allowed: Iterable[str]) -> bool:
    """IP literals, ``localhost`` and configured names are fine: a DNS-rebinding page can only
    make a browser send the attacker's own host name."""
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host in {name.lower() for name in allowed}
    return True


def cross_site(request: web.Request) -> str | None:
    """Why an unsafe request looks cross-site (None: it does not)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site[:20]})"
    origin = request.headers.get("Origin")
    if origin is None:
        return None  # not a browser, or an old one; Host and the content type still apply
    parts = urlsplit(origin)
    if origin == "null" or parts.netloc.lower() != request.headers.get("Host", "").lower():
        return "cross-origin request refused (Origin does not match Host)"
    return None


def same_secret(sent: str, expected: str) -> bool:
    """Constant-time comparison; a value that is not valid UTF-8 simply does not match."""
    try:
        raw = sent.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(raw, expected.encode())


def token_matches(sent: str, token: str) -> bool:
    """Whether an ``Authorization`` value is ``Bearer <token>``."""
    return same_secret(sent, f"Bearer {token}")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object ({} when empty); BadRequest naming the problem otherwise."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BadRequest(f"request body larger than {MAX_BODY} bytes", status=413)
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise BadRequest(f"request body larger than {MAX_BODY} bytes", status=413)
    if not raw.strip():
        return {}
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON ({exc.msg})") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be a JSON object")
    return doc


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within ``[lo, hi]``; BadRequest otherwise."""
    value = request.query.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not lo <= number <= hi:
        raise BadRequest(f"{name} must be between {lo} and {hi}")
    return number


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error as JSON; a bug is logged with its traceback and answered without it."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return error(exc.message, exc.status_code)
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        return error(exc.reason, exc.status_code)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("admin request failed", extra={"path": request.path})
        return error("internal error (see the relay's log)", 500)


class CappedSite(web.TCPSite):
    """A TCP site that accepts at most ``max_connections`` at once: one more is closed as soon
    as it is accepted, so idle clients cannot take every file descriptor of the process. (Idle
    ones are closed after the runner's ``keepalive_timeout``, also before a first request.)"""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, cap: int) -> None:
        super().__init__(runner, host, port)
        self._cap = cap
        self.refused = 0

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.Protocol:
            if len(server.connections) >= self._cap:
                self.refused += 1
                if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                    log.warning(
                        "admin API: %d connections open, refusing more (%d refused so far)",
                        self._cap,
                        self.refused,
                    )
                return _Refuse()
            return server()

        self._server = await loop.create_server(factory, self._host, self._port, backlog=128)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]


class _Refuse(asyncio.Protocol):
    """Closes the connection at once (the peer sees EOF)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()
