"""The WebFones call-log client: one GET, strict validation of what comes back.

The client never decides what to do about a failure; it raises a typed
:class:`~relay.core.errors.UpstreamError` whose subclass says what failed, and the poller
decides.
It is handed its HTTP client (:mod:`relay.http1`); it does not build one. A 200 body is parsed by
:mod:`relay.ingest.body`: at once, or, when it is large (a catch-up), as a stream of record slices.

Why the lean client and not aiohttp's: an idle instance with thousands of accounts spends most
of its CPU on empty polls, and aiohttp's request machinery was about half of each (BENCHMARKS
(12)). What aiohttp did that matters here is kept: at most :data:`MAX_CONNECTIONS` requests at
once, a total ``timeout`` from connect to the body's last byte, no redirects followed, no
request sent twice by the client, bodies capped as they arrive, ``gzip``/``deflate`` answers
decoded (and capped again after decoding), no proxy (aiohttp's session ignored the environment).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from relay import USER_AGENT
from relay.core.errors import (
    MalformedResponse,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from relay.core.retry import parse_retry_after
from relay.core.text import escape_controls
from relay.http1.client import TOO_LARGE, BadResponse, Disconnected, Http1Client, Response
from relay.ingest.body import FetchResult, StreamedBody, excerpt, parse_200

PATH = "/call_log/records_after_timestamp"
# Requests in flight at once (what aiohttp's connector allowed): a slot of many due accounts
# queues here instead of opening a connection each.
MAX_CONNECTIONS = 16
_CODINGS = {"gzip", "x-gzip", "deflate"}


@dataclass(frozen=True, slots=True)
class Credentials:
    """How one account authenticates. ``repr`` never shows the key."""

    api_key: str
    auth: str = "x-api-key"

    def headers(self) -> dict[str, str]:
        if self.auth == "bearer":
            return {"Authorization": f"Bearer {self.api_key}"}
        return {"x-api-key": self.api_key}

    def __repr__(self) -> str:
        return f"Credentials(auth={self.auth!r}, api_key=<redacted>)"


class WebFonesClient:
    """Fetches ``records_after_timestamp`` for one account at a time."""

    def __init__(
        self,
        http: Http1Client,
        base_url: str,
        *,
        timeout: float,
        max_response_bytes: int,
        instance: str | None = None,
    ) -> None:
        headers = {
            "Accept": "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": USER_AGENT,
        }
        if instance:
            # Sent as X-Relay-Instance (no secret): tells instances apart in the upstream's logs.
            headers["X-Relay-Instance"] = instance
        self._endpoint = http.endpoint(base_url.rstrip("/") + PATH, headers)
        self._timeout = timeout
        self._max_bytes = max_response_bytes
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def fetch(self, credentials: Credentials, since: str) -> FetchResult | StreamedBody:
        """Records after ``since`` (``YYYY-MM-DD HH:MM:SS``), or a typed UpstreamError.

        A body larger than :data:`STREAM_ABOVE` comes back unparsed, as a StreamedBody.
        """
        try:
            async with self._slots:
                resp = await self._endpoint.get(
                    f"timestamp={quote(since, safe=':')}",
                    credentials.headers(),
                    time_limit=self._timeout,
                    cap=self._max_bytes,
                )
            return _interpret(resp.status, resp.headers, self._body(resp))
        except UpstreamError as exc:
            # An error page may quote the key it rejected; the message goes to logs and status.
            _redact(exc, credentials.api_key)
            raise
        except TimeoutError as exc:
            raise UpstreamError(f"no complete answer within {self._timeout:g}s") from exc
        except (Disconnected, BadResponse, OSError) as exc:  # ssl.SSLError is an OSError
            raise UpstreamError(_describe(exc)) from exc

    def close(self) -> None:
        """Close the idle connections (after a reload built a new client)."""
        self._endpoint.close()

    def _body(self, resp: Response) -> bytes:
        """The whole body, decoded; an UpstreamError if it did not arrive whole or is too big."""
        if resp.error == TOO_LARGE:
            length = resp.headers.get("content-length", "")
            size = f" of {length} bytes" if length.isdigit() else ""
            raise MalformedResponse(
                f"response{size} exceeds max_response_bytes", status=resp.status
            )
        if resp.error is not None:
            if resp.error.startswith("timeout"):
                raise UpstreamError(f"no complete answer within {self._timeout:g}s")
            raise UpstreamError(
                f"connection broke while reading the response ({escape_controls(resp.error)})"
            )
        coding = resp.headers.get("content-encoding", "").strip().lower()
        if coding in ("", "identity"):
            return resp.body
        if coding not in _CODINGS:
            raise UpstreamError(f"unsupported Content-Encoding {escape_controls(coding)!r}")
        # Auto-detects a gzip or zlib header (deflate as servers send it); capped as the wire
        # bytes are, so a small bomb cannot become a huge body.
        inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)
        try:
            body = inflate.decompress(resp.body, self._max_bytes + 1)
        except zlib.error as exc:
            raise UpstreamError(f"cannot decode the {coding} body: {exc}") from exc
        if len(body) > self._max_bytes or inflate.unconsumed_tail:
            raise MalformedResponse(
                "response exceeds max_response_bytes once decoded", status=resp.status
            )
        if not inflate.eof:
            raise UpstreamError(
                f"connection broke while reading the response (the {coding} body ends early)"
            )
        return body


def _redact(exc: UpstreamError, secret: str) -> None:
    text = str(exc)
    if secret and secret in text:
        exc.args = (text.replace(secret, "[redacted]"),)


def _describe(exc: BaseException) -> str:
    """A one-line description of a client error that names no credentials."""
    if isinstance(exc, Disconnected):
        if exc.got_bytes:
            return "connection broke while reading the response"
        return "server closed the connection"
    if isinstance(exc, BadResponse):
        return escape_controls(str(exc))
    if isinstance(exc, ssl.SSLError):
        return escape_controls(f"TLS: {exc.reason or exc}")
    if isinstance(exc, OSError):
        return escape_controls(f"cannot connect: {exc.strerror or exc}")
    return escape_controls(f"{type(exc).__name__}: {exc}")


def _interpret(status: int, headers: Any, body: bytes) -> FetchResult | StreamedBody:
    """Map one HTTP answer onto a FetchResult, a StreamedBody or the right UpstreamError (pure).

    ``headers`` has lower-case names (:class:`~relay.http1.client.Response`)."""
    if status == 429:
        retry_after = parse_retry_after(headers.get("retry-after"), time.time())
        raise UpstreamRateLimited(
            f"429 rate limited: {excerpt(body)}",
            status=status,
            retry_after=retry_after,
        )
    if status in (401, 403):
        raise UpstreamAuthError(f"{status} authentication failed: {excerpt(body)}", status=status)
    if 300 <= status < 400:
        raise UpstreamError(
            f"{status} redirect to {headers.get('location', '?')!r} not followed",
            status=status,
        )
    if status >= 500:
        retry_after = parse_retry_after(headers.get("retry-after"), time.time())
        raise UpstreamError(
            f"{status} server error: {excerpt(body)}",
            status=status,
            retry_after=retry_after,
        )
    if status != 200:
        raise UpstreamError(f"{status} {excerpt(body)}", status=status)
    return parse_200(headers.get("content-type", ""), body)
