"""The WebFones call-log client: one GET, strict validation of what comes back.

The client never decides what to do about a failure; it raises a typed
:class:`~relay.core.errors.UpstreamError` whose subclass says what failed, and the poller
decides.
It is handed its ``aiohttp.ClientSession``; it does not build one. A 200 body is parsed by
:mod:`relay.ingest.body`: at once, or, when it is large (a catch-up), as a stream of record slices.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from relay import USER_AGENT
from relay.core.errors import (
    MalformedResponse,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from relay.core.retry import parse_retry_after
from relay.core.text import escape_controls
from relay.ingest.body import FetchResult, StreamedBody, excerpt, parse_200

PATH = "/call_log/records_after_timestamp"


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
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        timeout: float,
        max_response_bytes: int,
        instance: str | None = None,
    ) -> None:
        self._session = session
        # Sent as X-Relay-Instance (no secret): tells instances apart in the upstream's logs.
        self._instance = {"X-Relay-Instance": instance} if instance else {}
        self._url = base_url.rstrip("/") + PATH
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_bytes = max_response_bytes

    async def fetch(self, credentials: Credentials, since: str) -> FetchResult | StreamedBody:
        """Records after ``since`` (``YYYY-MM-DD HH:MM:SS``), or a typed UpstreamError.

        A body larger than :data:`STREAM_ABOVE` comes back unparsed, as a StreamedBody.
        """
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT, **self._instance}
        headers.update(credentials.headers())
        try:
            async with self._session.get(
                self._url,
                params={"timestamp": since},
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                body = await self._read_capped(resp)
                return _interpret(resp.status, resp.headers, body)
        except UpstreamError as exc:
            # An error page may quote the key it rejected; the message goes to logs and status.
            _redact(exc, credentials.api_key)
            raise
        except TimeoutError as exc:
            raise UpstreamError(f"no complete answer within {self._timeout.total:g}s") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(_describe(exc)) from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        # Read in chunks so a huge (or endless) body costs at most the cap in memory.
        if resp.content_length is not None and resp.content_length > self._max_bytes:
            resp.close()
            raise MalformedResponse(
                f"response of {resp.content_length} bytes exceeds max_response_bytes",
                status=resp.status,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_bytes:
                resp.close()
                raise MalformedResponse("response exceeds max_response_bytes", status=resp.status)
            chunks.append(chunk)
        return b"".join(chunks)


def _redact(exc: UpstreamError, secret: str) -> None:
    text = str(exc)
    if secret and secret in text:
        exc.args = (text.replace(secret, "[redacted]"),)


def _describe(exc: BaseException) -> str:
    """A one-line description of a client error that names no credentials."""
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection broke while reading the response"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    return escape_controls(f"{type(exc).__name__}: {exc}")


def _interpret(status: int, headers: Any, body: bytes) -> FetchResult | StreamedBody:
    """Map one HTTP answer onto a FetchResult, a StreamedBody or the right UpstreamError (pure)."""
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"), time.time())
        raise UpstreamRateLimited(
            f"429 rate limited: {excerpt(body)}",
            status=status,
            retry_after=retry_after,
        )
    if status in (401, 403):
        raise UpstreamAuthError(f"{status} authentication failed: {excerpt(body)}", status=status)
    if 300 <= status < 400:
        raise UpstreamError(
            f"{status} redirect to {headers.get('Location', '?')!r} not followed",
            status=status,
        )
    if status >= 500:
        retry_after = parse_retry_after(headers.get("Retry-After"), time.time())
        raise UpstreamError(
            f"{status} server error: {excerpt(body)}",
            status=status,
            retry_after=retry_after,
        )
    if status != 200:
        raise UpstreamError(f"{status} {excerpt(body)}", status=status)
    return parse_200(headers.get("Content-Type", ""), body)
