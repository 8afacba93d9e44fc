"""Faults the simulated WebFones can be scripted with: error statuses, raw bodies, slow answers,
connection resets mid-body, redirects and huge bodies, plus a table of malformed 200 bodies a
robust client must refuse without storing anything."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web

_JSON = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Fault:
    """A scripted misbehaviour for one request. Build one with the constructors below."""

    @staticmethod
    def status(
        code: int, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> StatusFault:
        """Answer ``code`` with ``body`` (default: the spec's JSON error body for that code).

        E.g. ``Fault.status(429, headers={"Retry-After": "2"})``.
        """
        return StatusFault(code, body, tuple((headers or {}).items()))

    @staticmethod
    def raw(code: int, content_type: str, body: bytes) -> RawFault:
        """Answer exactly these bytes (HTML error pages, broken JSON...); see ``MALFORMED``."""
        return RawFault(code, content_type, body)

    @staticmethod
    def slow(seconds: float) -> SlowFault:
        """Compute the normal answer on arrival, send it ``seconds`` later."""
        return SlowFault(seconds)

    @staticmethod
    def reset() -> ResetFault:
        """Send the headers and half of the normal body, then abort the connection."""
        return ResetFault()

    @staticmethod
    def redirect(location: str, code: int = 302) -> RedirectFault:
        """Answer a redirect to ``location``."""
        return RedirectFault(location, code)

    @staticmethod
    def huge(nbytes: int, *, chunked: bool = True) -> HugeFault:
        """Answer the normal, valid JSON padded to about ``nbytes`` with an extra ``padding``
        member, streamed in chunks so the server's memory stays small. ``chunked=False`` sends
        a Content-Length up front instead."""
        return HugeFault(nbytes, chunked)


@dataclass(frozen=True, slots=True)
class StatusFault(Fault):
    code: int
    body: bytes | None
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RawFault(Fault):
    code: int
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class SlowFault(Fault):
    seconds: float


@dataclass(frozen=True, slots=True)
class ResetFault(Fault):
    pass


@dataclass(frozen=True, slots=True)
class RedirectFault(Fault):
    location: str
    code: int


@dataclass(frozen=True, slots=True)
class HugeFault(Fault):
    nbytes: int
    chunked: bool


def _raw_json(body: bytes) -> RawFault:
    return Fault.raw(200, "application/json", body)


# Bodies a robust client must refuse without storing anything; handy for parametrised tests.
MALFORMED: Mapping[str, Fault] = {
    "html_200": Fault.raw(
        200, "text/html", b"<html><head><title>502 Bad Gateway</title></head><body></body></html>"
    ),
    "truncated_json": _raw_json(b'{"success": true, "count": 1, "records": [{"rid": 211'),
    "not_json": _raw_json(b"OK"),
    "empty_body": _raw_json(b""),
    "success_false": _raw_json(b'{"success": false, "error": "Database unavailable"}'),
    "records_missing": _raw_json(b'{"success": true, "count": 0}'),
    "records_null": _raw_json(b'{"success": true, "count": 0, "records": null}'),
    "records_not_list": _raw_json(b'{"success": true, "count": 1, "records": {"rid": 1}}'),
    "count_mismatch": _raw_json(b'{"success": true, "count": 3, "records": []}'),
}


async def reset_answer(request: web.Request, status: int, body: bytes) -> web.StreamResponse:
    """Send the headers and half the body, then abort: the client sees a truncated payload."""
    response = web.StreamResponse(status=status, headers={"Content-Type": _JSON})
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.abort()
    # aiohttp's final write_eof now fails with a ConnectionError, which it treats as a client
    # disconnect and ignores quietly.
    return response


async def huge_answer(request: web.Request, body: bytes, fault: HugeFault) -> web.StreamResponse:
    """``body`` (a JSON object) with a ``padding`` member inserted, about ``fault.nbytes`` long."""
    head = b'{"padding":"'
    tail = b'",' + body[1:]
    pad = max(0, fault.nbytes - len(head) - len(tail))
    response = web.StreamResponse(status=200, headers={"Content-Type": _JSON})
    if not fault.chunked:
        response.content_length = len(head) + pad + len(tail)
    await response.prepare(request)
    chunk = b"x" * (1 << 16)
    with contextlib.suppress(ConnectionError):  # a client past its cap stops reading, as it should
        await response.write(head)
        while pad > 0:
            part = chunk[: min(pad, len(chunk))]
            await response.write(part)  # drains: at most one chunk is buffered at a time
            pad -= len(part)
        await response.write(tail)
        await response.write_eof()
    return response
