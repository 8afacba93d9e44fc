"""The WebFones client over the lean HTTP/1.1 client (:mod:`relay.ingest.upstream` on
:mod:`relay.http1`): what it sends, what it makes of compressed, chunked, oversized and broken
answers, against the real simulator and a scripted aiohttp server on 127.0.0.1.

The fault cases the poller sees (malformed bodies, 429 with Retry-After, 5xx, timeouts, resets,
redirects, a 50 MB answer) run against the real relay in ``tests/faults/test_upstream_faults.py``.
"""

from __future__ import annotations

import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import trustme
from aiohttp import web

from relay import USER_AGENT
from relay.core.errors import MalformedResponse, UpstreamError
from relay.http1.client import Http1Client
from relay.ingest.body import FetchResult
from relay.ingest.upstream import PATH, Credentials, WebFonesClient
from relay.sim.localserver import LocalServer
from relay.sim.simulator import SimulatedWebFones
from tests.helpers import GENEROUS, KEY_A, ago

SINCE = "2000-01-01 00:00:00"
RECORDS = [{"rid": 1, "call_timestamp": "2026-12-01 10:00:00"}]
OK = orjson.dumps({"success": True, "count": 1, "records": RECORDS})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Scripted(LocalServer):
    """Answers the call-log path with ``handler``; keeps each request's headers and which
    connection (by its transport) it came on."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self.handler = handler
        self.requests: list[tuple[dict[str, str], str, int]] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PATH, self._serve)
        return app

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            (dict(request.headers), request.query.get("timestamp", ""), id(request.transport))
        )
        return await self.handler(request)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Scripted]]]:
    servers: list[Scripted] = []

    async def start(handler: Handler) -> Scripted:
        server = Scripted(handler)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[Http1Client]:
    async with Http1Client() as client:
        yield client


def answer(body: bytes, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json", headers=headers)

    return handler


def client(http: Http1Client, url: str, cap: int = 1 << 20, **kw: Any) -> WebFonesClient:
    return WebFonesClient(
        http, url, timeout=kw.pop("timeout", GENEROUS), max_response_bytes=cap, **kw
    )


async def test_polls_the_simulator_on_one_kept_alive_connection(http: Http1Client) -> None:
    async with SimulatedWebFones({KEY_A: "alpha"}) as sim:
        record = sim.add_record(KEY_A, started_at=ago(30))
        wf = client(http, sim.url)
        results = [await wf.fetch(Credentials(KEY_A), SINCE) for _ in range(3)]
    assert all(isinstance(r, FetchResult) for r in results)
    assert [[x["rid"] for x in r.records] for r in results if isinstance(r, FetchResult)] == [
        [record["rid"]]
    ] * 3
    assert [e.timestamp for e in sim.request_log] == [SINCE] * 3


async def test_sends_the_headers_and_keeps_the_connection(serve: Any, http: Http1Client) -> None:
    server = await serve(answer(OK))
    wf = client(http, server.url, instance="inst-1")
    for auth in ("x-api-key", "bearer"):
        await wf.fetch(Credentials("k-123", auth), "2026-12-01 10:00:05")
    (first, since, conn1), (second, _, conn2) = server.requests
    assert since == "2026-12-01 10:00:05"  # the space and colons survive the query encoding
    assert first["x-api-key"] == "k-123" and "Authorization" not in first
    assert second["Authorization"] == "Bearer k-123" and "x-api-key" not in second
    for headers in (first, second):
        assert headers["Accept"] == "application/json"
        assert headers["User-Agent"] == USER_AGENT
        assert headers["X-Relay-Instance"] == "inst-1"
        assert headers["Accept-Encoding"] == "gzip, deflate"
    assert conn1 == conn2, "the second poll reuses the kept-alive connection"


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
    ],
)
async def test_a_compressed_chunked_answer_is_decoded(
    serve: Any, http: Http1Client, coding: str, encode: Callable[[bytes], bytes]
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Encoding": coding})
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        data = encode(OK)
        for i in range(0, len(data), 7):  # many small chunks
            await resp.write(data[i : i + 7])
        await resp.write_eof()
        return resp

    server = await serve(handler)
    result = await client(http, server.url).fetch(Credentials(KEY_A), SINCE)
    assert isinstance(result, FetchResult) and result.records == RECORDS


async def test_aiohttp_compression_on_a_large_answer(serve: Any, http: Http1Client) -> None:
    records = [{**RECORDS[0], "rid": i, "note": "x" * 200} for i in range(2_000)]
    body = orjson.dumps({"success": True, "count": len(records), "records": records})

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.Response(body=body, content_type="application/json")
        resp.enable_compression()  # as the client asked: gzip or deflate
        return resp

    server = await serve(handler)
    result = await client(http, server.url).fetch(Credentials(KEY_A), SINCE)
    assert isinstance(result, FetchResult) and result.records == records


async def test_a_small_bomb_is_refused_by_its_decoded_size(serve: Any, http: Http1Client) -> None:
    bomb = gzip.compress(b" " * (8 << 20))  # 8 MiB of spaces in ~8 KiB
    server = await serve(answer(bomb, **{"Content-Encoding": "gzip"}))
    with pytest.raises(MalformedResponse, match="exceeds max_response_bytes once decoded"):
        await client(http, server.url, cap=1 << 20).fetch(Credentials(KEY_A), SINCE)


async def test_an_answer_over_the_cap_is_refused_by_its_length(
    serve: Any, http: Http1Client
) -> None:
    server = await serve(answer(b" " * 5000))
    wf = client(http, server.url, cap=4096)
    with pytest.raises(
        MalformedResponse, match="response of 5000 bytes exceeds max_response_bytes"
    ):
        await wf.fetch(Credentials(KEY_A), SINCE)
    # Not drained: that connection was closed, and the next poll works on a new one.
    server.handler = answer(OK)
    result = await wf.fetch(Credentials(KEY_A), SINCE)
    assert isinstance(result, FetchResult) and result.records == RECORDS
    assert server.requests[0][2] != server.requests[1][2]


async def test_a_chunked_answer_over_the_cap_is_refused(serve: Any, http: Http1Client) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b" " * 1000)
        await resp.write_eof()
        return resp

    server = await serve(handler)
    with pytest.raises(MalformedResponse, match=r"^response exceeds max_response_bytes"):
        await client(http, server.url, cap=4096).fetch(Credentials(KEY_A), SINCE)
    # Exactly at the cap is still whole.
    server.handler = answer(OK)
    result = await client(http, server.url, cap=len(OK)).fetch(Credentials(KEY_A), SINCE)
    assert isinstance(result, FetchResult)


@pytest.mark.parametrize(
    ("headers", "body", "problem"),
    [
        ({"Content-Encoding": "br"}, OK, "unsupported Content-Encoding 'br'"),
        ({"Content-Encoding": "gzip"}, gzip.compress(OK)[:-12], "the gzip body ends early"),
        ({"Content-Encoding": "gzip"}, b"not gzip at all", "cannot decode the gzip body"),
    ],
    ids=["unknown-coding", "truncated-gzip", "not-gzip"],
)
async def test_an_undecodable_body_is_an_upstream_error(
    serve: Any, http: Http1Client, headers: dict[str, str], body: bytes, problem: str
) -> None:
    server = await serve(answer(body, **headers))
    with pytest.raises(UpstreamError, match=problem):
        await client(http, server.url).fetch(Credentials(KEY_A), SINCE)


async def test_no_listener_is_an_upstream_error(http: Http1Client) -> None:
    server = Scripted(answer(OK))
    url = await server.start()
    await server.stop()  # the port is free again: nothing listens there
    with pytest.raises(UpstreamError, match="cannot connect"):
        await client(http, url).fetch(Credentials(KEY_A), SINCE)


async def test_https_upstream_with_a_trusted_certificate(serve: Any) -> None:
    ca = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    server = Scripted(answer(OK))
    url = await server.start(ssl_context=server_tls)
    try:
        async with Http1Client() as untrusting:
            with pytest.raises(UpstreamError, match="TLS"):
                await client(untrusting, url).fetch(Credentials(KEY_A), SINCE)
        async with Http1Client(ssl_context=trusting) as http:
            wf = client(http, url)
            results = [await wf.fetch(Credentials(KEY_A), SINCE) for _ in range(2)]
    finally:
        await server.stop()
    assert url.startswith("https://")
    assert all(isinstance(r, FetchResult) and r.records == RECORDS for r in results)
    assert len({conn for _, _, conn in server.requests}) == 1
