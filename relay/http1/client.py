"""A small HTTP/1.1 client for webhook POSTs and the WebFones GET: keep-alive connections per
origin, httptools parsing.

Why not aiohttp here (it serves the admin surface and the simulator): a webhook POST is the hot
path, and so is an empty poll when one instance polls thousands of accounts; aiohttp's general
client machinery (request and response objects, multidicts, URL
handling, timers, traces, cookie and redirect logic) costs ~75 µs of CPU per request on this
class of machine, more than the rest of a delivery put together. On two cores that CPU is what
bounds throughput. Writing pre-built request bytes to a pooled connection and parsing the answer
with llhttp (through ``httptools``, the parser uvicorn uses) costs ~25 µs.

What it does, deliberately narrow:

* one request at a time per connection (no pipelining), bodies sent with ``Content-Length``;
* the answer's status, the few headers the relay reads (:data:`KEPT_HEADERS`) and at most
  ``cap`` bytes of its body; a longer or endless body is cut off and its connection closed
  rather than drained;
* a bounded head: more than :data:`MAX_HEAD_BYTES` of status line and headers (interim answers
  included), more than :data:`MAX_HEADERS` header fields, or more than :data:`MAX_HEAD_BYTES`
  of chunk framing and trailers fail the attempt and close the connection, so a hostile
  receiver costs a few KiB and microseconds of the event loop, never megabytes or seconds;
* a large body is written after the head in slices, as the socket takes them (transport flow
  control), never copied into one buffer with the head;
* TLS verified against the system's CAs with SNI (``ssl.create_default_context``'s settings),
  and a new connection to a host offers the TLS session of an earlier one
  (:class:`ResumingContext`): an abbreviated handshake instead of a full one, no certificate
  chain sent or verified again, whenever a receiver closes a kept-alive connection;
* redirects are never followed (the caller sees the 3xx), no cookies, no proxies, no
  decompression here (a caller that sends ``Accept-Encoding`` decodes), interim ``1xx``
  answers skipped;
* a POST on a kept-alive connection that the receiver closed while idle is replaced, and the
  request sent once more on a fresh connection, only when not a single byte of an answer came
  back (the same rule as Go's ``net/http`` for requests that carry an idempotency key: ours is
  ``webhook-id``). A GET is never sent twice (each upstream request is paid for in the key's
  budget first: the caller retries, and pays again).

Errors are the standard ones (``TimeoutError``, ``OSError``, ``ssl.SSLError``) plus
:class:`Disconnected` and :class:`BadResponse`; the sender turns them into attempt outcomes.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
import time
from urllib.parse import unquote, urlsplit

from relay.http1.wire import (
    KEPT_HEADERS,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    TOO_LARGE,
    WRITE_SLICE,
    BadResponse,
    Connection,
    Disconnected,
    Response,
)

__all__ = [
    "KEEPALIVE",
    "KEPT_HEADERS",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "TOO_LARGE",
    "WRITE_SLICE",
    "BadResponse",
    "Disconnected",
    "Endpoint",
    "Http1Client",
    "Response",
    "ResumingContext",
    "default_ssl_context",
]

KEEPALIVE = 15.0  # an idle connection older than this is closed, not reused (aiohttp's default)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Endpoint:
    """One URL (a webhook's, or the upstream's): its pre-encoded request head and its pool of
    kept-alive connections."""

    def __init__(
        self, url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None = None
    ) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError("an http(s) URL is required")
        host = _wire_host(parts.hostname)
        self._host = host  # as connect() wants it: no brackets around an IPv6 address
        self._port = parts.port or _DEFAULT_PORTS[scheme]
        self._ssl = (ssl_context or default_ssl_context()) if scheme == "https" else None
        authority = f"[{host}]" if ":" in host else host
        if parts.port is not None and parts.port != _DEFAULT_PORTS[scheme]:
            authority = f"{authority}:{parts.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fixed = f"Host: {authority}\r\n"
        if parts.username is not None or parts.password is not None:
            # Credentials in the URL become Basic authentication, as browsers and aiohttp do.
            userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            token = base64.b64encode(userinfo.encode("utf-8")).decode("ascii")
            fixed += f"Authorization: Basic {token}\r\n"
        fixed += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self._head = f"POST {target} HTTP/1.1\r\n{fixed}".encode()
        # A GET's target varies by its query: the start of the line and the fixed headers.
        self._get = (f"GET {target}{'&' if parts.query else '?'}".encode(), fixed.encode())
        self._idle: list[Connection] = []
        self._closed = False

    async def post(
        self, headers: dict[str, str], body: bytes, *, time_limit: float, cap: int
    ) -> Response:
        """POST ``body`` with the endpoint's headers plus ``headers`` (this attempt's own).

        Raises TimeoutError if no status arrived within ``time_limit`` (a status that did arrive
        is returned with ``error`` set instead), :class:`Disconnected`, :class:`BadResponse`,
        ``ssl.SSLError`` or ``OSError``.
        """
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = b"%s%sContent-Length: %d\r\n\r\n" % (self._head, extra.encode("utf-8"), len(body))
        return await self._exchange(head, body, cap, time_limit, strict=False, resend=True)

    async def get(
        self, query: str, headers: dict[str, str], *, time_limit: float, cap: int
    ) -> Response:
        """GET the endpoint's URL with ``query`` (already encoded) added, with the endpoint's
        headers plus ``headers``; sent once, never again on a fresh connection (see the module
        notes). A body longer than ``cap`` is not kept: the answer has ``error``
        :data:`TOO_LARGE`. Raises as :meth:`post` does."""
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        start, fixed = self._get
        head = b"%s%s HTTP/1.1\r\n%s%s\r\n" % (start, query.encode(), fixed, extra.encode())
        return await self._exchange(head, b"", cap, time_limit, strict=True, resend=False)

    async def _exchange(
        self, head: bytes, body: bytes, cap: int, time_limit: float, *, strict: bool, resend: bool
    ) -> Response:
        """One request and its answer on a pooled connection; with ``resend``, once more on a
        fresh one if a kept-alive connection turns out closed (see the module notes)."""
        deadline = asyncio.get_running_loop().time() + time_limit
        conn: Connection | None = None
        try:
            conn, reused = await self._acquire(False, deadline)
            try:
                answer = await conn.request(head, body, cap, deadline, time_limit, strict=strict)
            except Disconnected as exc:
                if not reused or exc.got_bytes or not resend:
                    raise
                # A kept-alive connection that the receiver had closed: once more, fresh.
                conn, _ = await self._acquire(True, deadline)
                answer = await conn.request(head, body, cap, deadline, time_limit, strict=strict)
        except BaseException:
            if conn is not None:
                conn.abort()
            raise
        if not reused and isinstance(self._ssl, ResumingContext):
            # Once per new connection: the session that the next new one will offer.
            self._ssl.remember(self._host, conn.tls_session())
        if conn.reusable and answer.error is None and not self._closed:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.abort()
        return answer

    async def _acquire(self, force_new: bool, deadline: float) -> tuple[Connection, bool]:
        """The most recently used live idle connection (least likely to have been closed by the
        receiver's own idle timeout), or a new one."""
        now = time.monotonic()
        while self._idle and not force_new:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < KEEPALIVE:
                return conn, True
            conn.abort()
        loop = asyncio.get_running_loop()
        async with asyncio.timeout_at(deadline):
            _, conn = await loop.create_connection(
                Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        return conn, False

    def close(self) -> None:
        """Close the idle connections (ones in use close when their request ends)."""
        self._closed = True
        while self._idle:
            self._idle.pop().abort()


def _wire_host(host: str) -> str:
    """A host as it goes on the wire: an IP address as it is, a DNS name in IDNA form
    (``münchen.de`` → ``xn--mnchen-3ya.de``)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            return host.encode("idna").decode("ascii")
        except UnicodeError:
            return host  # let the resolver say what is wrong with it
    return host


class Http1Client:
    """Hands out :class:`Endpoint` objects and closes their idle connections at the end."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context
        self._endpoints: list[Endpoint] = []

    def endpoint(self, url: str, headers: dict[str, str]) -> Endpoint:
        endpoint = Endpoint(url, headers, self._ssl)
        self._endpoints.append(endpoint)
        return endpoint

    def close(self) -> None:
        for endpoint in self._endpoints:
            endpoint.close()

    async def __aenter__(self) -> Http1Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class ResumingContext(ssl.SSLContext):
    """A client TLS context that offers, on a new connection, the session of an earlier
    connection to the same server name (TLS 1.2 session id or ticket, TLS 1.3 ticket).

    asyncio and uvloop take no ``session`` argument, but both build a connection's TLS object
    with ``wrap_bio``, which does; this class supplies it. The key is the server name alone
    (``wrap_bio`` is not told the port): a session offered to another server of the same name
    is refused by it and the handshake is a full one, as it would have been. There are no
    client certificates here, so a session carries nothing but the server's verified identity.
    Build it with ``ResumingContext(ssl.PROTOCOL_TLS_CLIENT)`` (hostname checking on, certificate
    required), then load trust (:func:`default_ssl_context` loads the system's CAs).
    """

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        # ssl.SSLContext takes its protocol in __new__; nothing to pass on here.
        super().__init__()
        self._sessions: dict[str, ssl.SSLSession] = {}

    def remember(self, server_hostname: str, session: ssl.SSLSession | None) -> None:
        """Offer ``session`` to the next new connections to ``server_hostname``."""
        if session is not None:
            self._sessions[server_hostname] = session

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side and server_hostname is not None:
            session = self._sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


_SSL_CONTEXT: ResumingContext | None = None


def default_ssl_context() -> ResumingContext:
    """The system's CAs, hostname checking on, as ``ssl.create_default_context()`` sets them
    up, resuming sessions; built once (loading CAs takes milliseconds)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        template = ssl.create_default_context()
        context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
        context.options = template.options
        context.verify_flags = template.verify_flags
        context.minimum_version = template.minimum_version
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        _SSL_CONTEXT = context
    return _SSL_CONTEXT
