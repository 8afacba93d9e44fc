"""The WebFones call-log client: one GET, strict validation of what comes back.

The client never decides what to do about a failure; it raises a typed
:class:`~relay.errors.UpstreamError` that says whether retrying can help, and the poller decides.
It is handed its ``aiohttp.ClientSession``; it does not build one.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from relay import __version__
from relay.errors import MalformedResponse, UpstreamAuthError, UpstreamError, UpstreamRateLimited
from relay.retry import parse_retry_after

PATH = "/call_log/records_after_timestamp"
USER_AGENT = f"webfones-relay/{__version__} (+https://github.com/webfones-relay)"
_EXCERPT = 200  # characters of an error body worth putting in a log line
# An integer of 20+ digits may exceed 64 bits, which orjson would silently read as a float.
_LONG_NUMBER = re.compile(rb"[0-9]{20}")
_JSON_TYPES: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}


@dataclass(frozen=True, slots=True)
class FetchResult:
    """A successful response: the raw records and what the body said about them."""

    records: list[Any]
    count: int | None
    nbytes: int


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
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + PATH
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_bytes = max_response_bytes

    async def fetch(self, credentials: Credentials, since: str) -> FetchResult:
        """Records after ``since`` (``YYYY-MM-DD HH:MM:SS``), or a typed UpstreamError."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
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
            raise UpstreamError(
                f"no complete answer within {self._timeout.total:g}s", retryable=True
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(_describe(exc), retryable=True) from exc

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        # Read in chunks so a huge (or endless) body costs at most the cap in memory.
        if resp.content_length is not None and resp.content_length > self._max_bytes:
            resp.close()
            raise MalformedResponse(
                f"response of {resp.content_length} bytes exceeds max_response_bytes",
                retryable=True,
                status=resp.status,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_bytes:
                resp.close()
                raise MalformedResponse(
                    "response exceeds max_response_bytes", retryable=True, status=resp.status
                )
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
    return f"{type(exc).__name__}: {exc}"


def _excerpt(body: bytes) -> str:
    text = body[:_EXCERPT].decode("utf-8", "replace").replace("\n", " ").strip()
    return text or "(empty body)"


def _interpret(status: int, headers: Any, body: bytes) -> FetchResult:
    """Map one HTTP answer onto a FetchResult or the right UpstreamError (pure)."""
    if status == 429:
        retry_after = parse_retry_after(headers.get("Retry-After"), time.time())
        raise UpstreamRateLimited(
            f"429 rate limited: {_excerpt(body)}",
            retryable=True,
            status=status,
            retry_after=retry_after,
        )
    if status in (401, 403):
        raise UpstreamAuthError(
            f"{status} authentication failed: {_excerpt(body)}", retryable=False, status=status
        )
    if 300 <= status < 400:
        raise UpstreamError(
            f"{status} redirect to {headers.get('Location', '?')!r} not followed",
            retryable=True,
            status=status,
        )
    if status >= 500:
        retry_after = parse_retry_after(headers.get("Retry-After"), time.time())
        raise UpstreamError(
            f"{status} server error: {_excerpt(body)}",
            retryable=True,
            status=status,
            retry_after=retry_after,
        )
    if status != 200:
        raise UpstreamError(f"{status} {_excerpt(body)}", retryable=True, status=status)
    return parse_body(headers.get("Content-Type", ""), body)


def parse_body(content_type: str, body: bytes) -> FetchResult:
    """Validate a 200 body against the documented shape; MalformedResponse if it is not."""
    if "json" not in content_type.lower():
        raise MalformedResponse(
            f"expected JSON, got content type {content_type or 'none'!r}: {_excerpt(body)}",
            retryable=True,
            status=200,
        )
    doc = _loads(body)
    if not isinstance(doc, dict):
        raise MalformedResponse("body is not a JSON object", retryable=True, status=200)
    if doc.get("success") is not True:
        raise MalformedResponse(
            f"success is {_json_repr(doc, 'success')}, not true: {_excerpt(body)}",
            retryable=True,
            status=200,
        )
    records = doc.get("records")
    if not isinstance(records, list):
        raise MalformedResponse(
            f"records is {_json_repr(doc, 'records')}, not a list", retryable=True, status=200
        )
    count = doc.get("count")
    return FetchResult(
        records=records,
        count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        nbytes=len(body),
    )


def _loads(body: bytes) -> Any:
    """Parse JSON exactly: orjson when it is exact, else the standard library.

    orjson reads an integer beyond 64 bits as a float (the record would change on its way) and
    rejects a lone UTF-16 surrogate escape such as ``"\ud83d"``, which JavaScript's
    ``JSON.stringify`` writes for a string cut in the middle of an emoji. One such record must
    not block the whole account, so those bodies go through :mod:`json`, which keeps both as they
    were. NaN and Infinity are not JSON and stay refused.
    """
    first_error: str | None = None
    if _LONG_NUMBER.search(body) is None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            first_error = str(exc)
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        # orjson's message, when there is one, is the more precise of the two.
        reason = first_error or str(exc) or type(exc).__name__
    raise MalformedResponse(
        f"body is not valid JSON ({len(body)} bytes): {reason}", retryable=True, status=200
    )


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_repr(doc: dict[str, Any], key: str) -> str:
    """How a member looks in JSON terms: ``missing``, ``null``, ``false``, ``a string``…"""
    if key not in doc:
        return "missing"
    value = doc[key]
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _JSON_TYPES.get(type(value), "a number")
