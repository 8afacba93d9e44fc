"""The webhook HTTP/1.1 client (:mod:`relay.http1.client`) against real servers on 127.0.0.1.

Two kinds of server. ``Recorder`` is an aiohttp app: a real HTTP server must accept what the
client sends. ``RawServer`` (:mod:`tests.rawserver`) is a bare asyncio server scripted per
connection, for receivers that misbehave byte by byte. Both see every connection, so keep-alive
is observed from the far end. Nothing sleeps to synchronise: tests wait on the servers'
conditions, with a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trustme
from aiohttp import web

from relay.http1 import client as http1
from relay.http1.client import BadResponse, Disconnected, Http1Client, Response
from relay.sim.localserver import LocalServer
from tests.helpers import GENEROUS
from tests.rawserver import Peer, RawServer, Script, answer, close, serve_ok, until_eof

LIMIT = 2.0  # seconds: time_limit of posts that must not time out
SHORT = 0.2  # seconds: time_limit of posts that must
WAIT = GENEROUS  # seconds: the longest a test waits for a server to see something
CAP = 64  # bytes of an answer's body kept

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# --- an aiohttp server that records what arrives ------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as an aiohttp server parsed it."""

    connection: object  # the server's transport: one object per TCP connection
    method: str
    target: str  # path and query exactly as sent
    headers: list[tuple[str, str]]  # names in the case sent, in the order sent
    body: bytes
    secure: bool


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Recorder(LocalServer):
    """Records every request and answers with ``answer`` (default: 200 ``ok``)."""

    def __init__(self, answer: Answer | None = None) -> None:
        super().__init__()
        self.seen: list[Seen] = []
        self._answer = answer
        self._changed = asyncio.Condition()

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    def connections(self) -> int:
        # ``seen`` keeps every transport referenced, so no two share an id.
        return len({id(s.connection) for s in self.seen})

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT), self._changed:
            await self._changed.wait_for(predicate)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            body = await request.read()
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers]
            self.seen.append(
                Seen(
                    request.transport,
                    request.method,
                    request.raw_path,
                    headers,
                    body,
                    request.secure,
                )
            )
            async with self._changed:
                self._changed.notify_all()
            if self._answer is None:
                return web.Response(body=b"ok")
            return await self._answer(request)
        finally:
            self._inflight.discard(task)


# --- fixtures and small helpers ------------------------------------------------------------


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    http = Http1Client()
    try:
        yield http
    finally:
        http.close()


async def post(endpoint: http1.Endpoint, body: bytes = b"{}", **kwargs: Any) -> Response:
    kwargs.setdefault("time_limit", LIMIT)
    kwargs.setdefault("cap", CAP)
    return await endpoint.post({}, body, **kwargs)


def ok_conn(n: int) -> Response:
    """What ``serve_ok`` answers on connection ``n``."""
    body = b"conn%d" % n
    return Response(200, {"content-length": str(len(body))}, body)


# --- 1. the request -----------------------------------------------------------------------


async def test_request_on_the_wire_is_exactly_line_host_headers_length_body(
    client: Http1Client,
) -> None:
    async with RawServer() as server:
        endpoint = client.endpoint(f"{server.url}/in/a%2Fb?x=%20y&z", {"X-Fixed": "f"})
        answer = await endpoint.post(
            {"webhook-id": "msg_1"}, b"\x00body\xff", time_limit=LIMIT, cap=CAP
        )
    assert answer == ok_conn(0)
    [peer] = server.peers
    assert peer.requests == [
        b"POST /in/a%%2Fb?x=%%20y&z HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nX-Fixed: f\r\n"
        b"webhook-id: msg_1\r\nContent-Length: 6\r\n\r\n\x00body\xff" % server.port
    ]


async def _reply(status: int, body: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=body, headers=headers)


async def test_aiohttp_server_receives_body_headers_host_and_length(
    client: Http1Client,
) -> None:
    body = '{"caller":"Zoë"}'.encode()
    async with Recorder(lambda _: _reply(201, b"created", {"X-Reply": "1"})) as rx:
        endpoint = client.endpoint(
            f"{rx.url}/hooks/calls", {"Content-Type": "application/json", "User-Agent": "t/1"}
        )
        answer = await endpoint.post(
            {"webhook-id": "msg_1", "webhook-timestamp": "1700000000"},
            body,
            time_limit=LIMIT,
            cap=CAP,
        )
    [seen] = rx.seen
    host = rx.url.removeprefix("http://")
    assert (seen.method, seen.target, seen.body) == ("POST", "/hooks/calls", body)
    assert seen.headers == [
        ("Host", host),
        ("Content-Type", "application/json"),
        ("User-Agent", "t/1"),
        ("webhook-id", "msg_1"),
        ("webhook-timestamp", "1700000000"),
        ("Content-Length", str(len(body))),
    ]
    assert (answer.status, answer.body, answer.error) == (201, b"created", None)
    # Only the headers the relay reads are kept (the date and server are not).
    assert answer.headers == {"content-length": "7", "content-type": "application/octet-stream"}


@pytest.mark.parametrize(
    ("suffix", "target"),
    [
        ("/a%2Fb/%7Euser?x=%2F&y=a%20b&flag", "/a%2Fb/%7Euser?x=%2F&y=a%20b&flag"),
        ("", "/"),
        ("?q=1", "/?q=1"),
        ("/p?", "/p"),
        ("/p#fragment", "/p"),
        ("/p?q=1#fragment", "/p?q=1"),
    ],
)
async def test_request_target_keeps_path_and_query_as_written(
    client: Http1Client, suffix: str, target: str
) -> None:
    async with Recorder() as rx:
        await post(client.endpoint(rx.url + suffix, {}))
    assert [s.target for s in rx.seen] == [target]


async def test_ipv6_host_header_is_bracketed_with_port(client: Http1Client) -> None:
    rx = Recorder()
    try:
        url = await rx.start("::1")
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        await post(client.endpoint(f"{url}/v6", {}))
    finally:
        await rx.stop()
    [seen] = rx.seen
    assert url.startswith("http://[::1]:")
    assert dict(seen.headers)["Host"] == url.removeprefix("http://")


async def test_url_credentials_become_basic_authorization(client: Http1Client) -> None:
    async with Recorder() as rx:
        port = rx.url.rsplit(":", 1)[1]
        await post(client.endpoint(f"http://user:p%40ss@127.0.0.1:{port}/x", {}))
    [seen] = rx.seen
    headers = dict(seen.headers)
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert headers["Host"] == f"127.0.0.1:{port}"
    assert seen.target == "/x"


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "http:///no-host", "127.0.0.1:8080/x", "mailto:a@b.c"]
)
def test_endpoint_requires_an_http_url(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        Http1Client().endpoint(url, {})


# --- 2. keep-alive ------------------------------------------------------------------------


async def test_sequential_posts_share_one_connection(client: Http1Client) -> None:
    async with Recorder() as rx:
        endpoint = client.endpoint(rx.url, {})
        for i in range(5):
            assert (await post(endpoint, b"%d" % i)).body == b"ok"
    assert [s.body for s in rx.seen] == [b"0", b"1", b"2", b"3", b"4"]
    assert rx.connections() == 1


async def test_large_bodies_arrive_whole_in_slices_and_keep_the_connection(
    client: Http1Client,
) -> None:
    """Above WRITE_SLICE the body is written after the head a slice at a time (never joined
    with it): what arrives is the same request, byte for byte."""
    # Under aiohttp's 1 MiB request limit, over three slices and not a whole number of them.
    bodies = [bytes(range(256)) * (3 * http1.WRITE_SLICE // 256) + b"end", b"small", b"x" * 3]
    async with Recorder() as rx:
        endpoint = client.endpoint(rx.url, {})
        concurrent = await asyncio.gather(*(post(endpoint, bodies[0]) for _ in range(3)))
        for body in bodies:
            assert (await post(endpoint, body)).body == b"ok"
    assert [a.body for a in concurrent] == [b"ok"] * 3
    assert [s.body for s in rx.seen] == [bodies[0]] * 3 + bodies
    assert all(("Content-Length", str(len(s.body))) in s.headers for s in rx.seen)
    assert rx.connections() == 3


async def test_an_idle_connection_keeps_no_copy_of_the_last_answer(client: Http1Client) -> None:
    """The answer's buffer goes with the answer: a kept-alive connection that held on to it
    kept a catch-up's whole body in memory twice while its records were stored."""
    big = b"r" * 4_000

    async def large(request: web.Request) -> web.StreamResponse:
        return web.Response(body=big)

    async with Recorder(large) as rx:
        endpoint = client.endpoint(rx.url, {})
        answer = await post(endpoint, b"poll", cap=8_000)
        assert answer.body == big
        [idle] = endpoint._idle
        assert len(idle._body) == 0


async def test_concurrent_posts_use_one_connection_each_then_reuse_them(
    client: Http1Client,
) -> None:
    n = 4
    all_in = asyncio.Event()

    async def hold_until_all_arrived(_: web.Request) -> web.Response:
        # The first n answers wait for each other: the n posts are in flight at once.
        if len(rx.seen) >= n:
            all_in.set()
        await all_in.wait()
        return web.Response(body=b"ok")

    async with Recorder(hold_until_all_arrived) as rx:
        endpoint = client.endpoint(rx.url, {})
        first = await asyncio.gather(*(post(endpoint, b"a%d" % i) for i in range(n)))
        assert rx.connections() == n
        second = await asyncio.gather(*(post(endpoint, b"b%d" % i) for i in range(n)))
    assert [r.body for r in first + second] == [b"ok"] * 2 * n
    assert len(rx.seen) == 2 * n
    assert rx.connections() == n


async def test_connection_close_from_server_means_a_new_connection_next_time(
    client: Http1Client,
) -> None:
    async def close_first(_: web.Request) -> web.Response:
        response = web.Response(body=b"bye" if len(rx.seen) == 1 else b"ok")
        if len(rx.seen) == 1:
            response.force_close()
        return response

    async with Recorder(close_first) as rx:
        endpoint = client.endpoint(rx.url, {})
        first = await post(endpoint)
        second = await post(endpoint)
        third = await post(endpoint)
    assert (first.body, first.headers["connection"]) == (b"bye", "close")
    assert (second.body, third.body) == (b"ok", b"ok")
    assert rx.connections() == 2
    assert rx.seen[1].connection is rx.seen[2].connection


class FakeClock:
    """Stands in for the ``time`` module in relay.http1.client (only ``monotonic`` is used)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


async def test_idle_connection_is_reused_until_keepalive_then_closed_and_replaced(
    client: Http1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(http1, "time", clock)
    async with RawServer() as server:
        endpoint = client.endpoint(server.url, {})
        assert await post(endpoint) == ok_conn(0)
        clock.now += http1.KEEPALIVE - 0.25  # idle for just under the limit: reused
        assert await post(endpoint) == ok_conn(0)
        clock.now += http1.KEEPALIVE  # idle for exactly the limit: too old
        assert await post(endpoint) == ok_conn(1)
        await server.wait_for(lambda: server.peers[0].hung_up)
    assert [len(p.requests) for p in server.peers] == [2, 1]


async def test_keepalive_limit_is_read_at_each_post(
    client: Http1Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http1, "KEEPALIVE", 0.0)  # every idle connection is already too old
    async with RawServer() as server:
        endpoint = client.endpoint(server.url, {})
        answers = [await post(endpoint) for _ in range(3)]
        await server.wait_for(lambda: server.peers[0].hung_up and server.peers[1].hung_up)
    assert answers == [ok_conn(0), ok_conn(1), ok_conn(2)]


async def test_most_recently_used_idle_connection_is_taken_first(client: Http1Client) -> None:
    released = [asyncio.Event(), asyncio.Event()]

    async def answer_when_released(peer: Peer) -> None:
        assert await peer.read_request() is not None
        await released[peer.index].wait()
        peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nconn%d" % peer.index)
        await serve_ok(peer)

    async with RawServer(answer_when_released, answer_when_released) as server:
        endpoint = client.endpoint(server.url, {})
        posts = {asyncio.create_task(post(endpoint)) for _ in range(2)}
        await server.wait_for(
            lambda: len(server.peers) == 2 and all(p.requests for p in server.peers)
        )
        released[1].set()  # connection 1 goes back to the pool first...
        [first], rest = await asyncio.wait(posts, return_when=asyncio.FIRST_COMPLETED)
        released[0].set()  # ...then connection 0, the most recently used
        [second] = await asyncio.gather(*rest)
        assert (first.result().body, second.body) == (b"conn1", b"conn0")
        assert await post(endpoint) == ok_conn(0)
    assert [len(p.requests) for p in server.peers] == [2, 1]


# --- 3. connections the server closed -----------------------------------------------------


async def test_idle_connection_closed_by_server_is_replaced_transparently(
    client: Http1Client,
) -> None:
    async with RawServer(answer(OK, then=close)) as server:
        endpoint = client.endpoint(server.url, {})
        assert (await post(endpoint, b"first")).body == b"ok"
        await server.wait_for(lambda: server.peers[0].done)
        assert await post(endpoint, b"second") == ok_conn(1)
    first, second = server.peers
    assert [r[-5:] for r in first.requests] == [b"first"]
    assert [r[-6:] for r in second.requests] == [b"second"]


async def test_reused_connection_dropped_without_answer_is_retried_once_on_a_fresh_one(
    client: Http1Client,
) -> None:
    # The receiver's idle timer fires just as the request arrives: it reads and hangs up.
    async with RawServer(answer(OK, then=answer(b"", then=close))) as server:
        endpoint = client.endpoint(server.url, {})
        assert (await post(endpoint, b"first")).body == b"ok"
        assert await post(endpoint, b"second") == ok_conn(1)
    first, second = server.peers
    assert len(first.requests) == 2
    assert second.requests == [first.requests[1]]  # the same bytes, sent once more


async def test_retry_on_a_fresh_connection_is_not_retried_again(client: Http1Client) -> None:
    dropped = answer(b"", then=close)
    async with RawServer(answer(OK, then=dropped), dropped) as server:
        endpoint = client.endpoint(server.url, {})
        await post(endpoint)
        with pytest.raises(Disconnected) as caught:
            await post(endpoint)
    assert caught.value.got_bytes is False
    assert [len(p.requests) for p in server.peers] == [2, 1]


async def test_reused_connection_that_began_an_answer_is_not_retried(
    client: Http1Client,
) -> None:
    async with RawServer(answer(OK, then=answer(b"HTTP/1.1 200", then=close))) as server:
        endpoint = client.endpoint(server.url, {})
        await post(endpoint)
        with pytest.raises(Disconnected) as caught:
            await post(endpoint)
    assert caught.value.got_bytes is True
    assert [len(p.requests) for p in server.peers] == [2]


async def test_fresh_connection_closed_without_answer_is_disconnected_not_retried(
    client: Http1Client,
) -> None:
    async with RawServer(answer(b"", then=close)) as server:
        endpoint = client.endpoint(server.url, {})
        with pytest.raises(Disconnected, match="without a response") as caught:
            await post(endpoint)
    assert caught.value.got_bytes is False
    assert [len(p.requests) for p in server.peers] == [1]


async def test_bytes_on_an_idle_connection_retire_it(client: Http1Client) -> None:
    got_answer = asyncio.Event()

    async def then_stray_bytes(peer: Peer) -> None:
        await got_answer.wait()
        peer.writer.write(b"HTTP/1.1 200 OK\r\n")
        await until_eof(peer)

    async with RawServer(answer(OK, then=then_stray_bytes)) as server:
        endpoint = client.endpoint(server.url, {})
        assert (await post(endpoint)).body == b"ok"
        got_answer.set()
        await server.wait_for(lambda: server.peers[0].hung_up)
        assert await post(endpoint) == ok_conn(1)
    assert [len(p.requests) for p in server.peers] == [1, 1]


# --- 4. parsing answers -------------------------------------------------------------------

HUNDRED = bytes(range(100))


@pytest.mark.parametrize(
    ("data", "then", "expected", "reused"),
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Id: a\r\n\r\nhello",
            serve_ok,
            Response(200, {"content-length": "5"}, b"hello"),
            True,
            id="content-length",
        ),
        pytest.param(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            serve_ok,
            Response(201, {"transfer-encoding": "chunked"}, b"hello world"),
            True,
            id="chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil the end",
            close,
            Response(200, {}, b"until the end"),
            False,
            id="delimited-by-close",
        ),
        pytest.param(
            b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n"
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok",
            serve_ok,
            Response(202, {"content-length": "2"}, b"ok"),
            True,
            id="100-continue",
        ),
        pytest.param(
            b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
            serve_ok,
            Response(204, {}, b""),
            True,
            id="204",
        ),
        pytest.param(
            b"HTTP/1.1 429 Too Many\r\nLocation: a\r\nlocation: b\r\nX-Many: c\r\n"
            b"LOCATION: c\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
            serve_ok,
            Response(429, {"location": "a, b, c", "retry-after": "3", "content-length": "0"}, b""),
            True,
            id="repeated-headers-lower-cased",
        ),
        pytest.param(
            b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy",
            serve_ok,  # the server would carry on: the client must close by itself
            Response(503, {"connection": "close", "content-length": "4"}, b"busy"),
            False,
            id="connection-close",
        ),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
            serve_ok,
            Response(200, {"content-length": "2"}, b"ok"),
            False,
            id="http-1.0",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + HUNDRED,
            until_eof,  # the rest never comes: the client must not wait for it
            Response(200, {"content-length": "1000"}, HUNDRED[:CAP]),
            False,
            id="over-cap-content-length",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n" + HUNDRED + b"\r\n",
            until_eof,
            Response(200, {"transfer-encoding": "chunked"}, HUNDRED[:CAP]),
            False,
            id="over-cap-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\n\r\n" + HUNDRED,
            until_eof,
            Response(200, {}, HUNDRED[:CAP]),
            False,
            id="over-cap-delimited-by-close",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (CAP, HUNDRED[:CAP]),
            serve_ok,
            Response(200, {"content-length": str(CAP)}, HUNDRED[:CAP]),
            True,
            id="exactly-cap",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
            close,
            Response(
                200,
                {"content-length": "10"},
                b"abc",
                "connection closed before the response body ended",
            ),
            False,
            id="short-content-length",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            close,
            Response(
                200,
                {"transfer-encoding": "chunked"},
                b"hello",
                "connection closed before the response body ended",
            ),
            False,
            id="short-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
            close,
            Response(
                200,
                {"transfer-encoding": "chunked"},
                b"",
                "invalid HTTP response body: Invalid character in chunk size",
            ),
            False,
            id="broken-chunked-keeps-status",
        ),
        pytest.param(
            OK + b"junk",
            serve_ok,
            Response(200, {"content-length": "2"}, b"ok"),
            False,
            id="junk-after",
        ),
    ],
)
async def test_answer_is_parsed_and_connection_kept_only_when_clean(
    client: Http1Client, data: bytes, then: Script, expected: Response, reused: bool
) -> None:
    async with RawServer(answer(data, then=then)) as server:
        endpoint = client.endpoint(server.url, {})
        assert await post(endpoint) == expected
        assert await post(endpoint) == ok_conn(0 if reused else 1)
        if not reused:
            await server.wait_for(lambda: server.peers[0].done)
    assert [len(p.requests) for p in server.peers] == ([2] if reused else [1, 1])


async def test_switching_protocols_is_returned_and_the_connection_retired(
    client: Http1Client,
) -> None:
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    async with RawServer(answer(data + b"\x81\x00", then=until_eof)) as server:
        endpoint = client.endpoint(server.url, {})
        got = await post(endpoint)
        await server.wait_for(lambda: server.peers[0].hung_up)
        assert await post(endpoint) == ok_conn(1)
    assert (got.status, got.headers, got.body) == (
        101,
        {"connection": "Upgrade"},
        b"",
    )


async def test_second_answer_in_the_same_read_leaves_the_first_intact(
    client: Http1Client,
) -> None:
    second = b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\nX-Second: 1\r\n\r\noops"
    async with RawServer(answer(OK + second)) as server:
        endpoint = client.endpoint(server.url, {})
        first = await post(endpoint)
        assert await post(endpoint) == ok_conn(1)  # out of step: not reused
    assert first == Response(200, {"content-length": "2"}, b"ok")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n", id="not-http"),
        pytest.param(b"<html><body>hello</body></html>\r\n", id="html"),
        pytest.param(b"HTTP/1.1 OK\r\n\r\n", id="no-status-code"),
        pytest.param(b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n", id="bad-header"),
    ],
)
async def test_garbage_instead_of_an_answer_is_bad_response(
    client: Http1Client, data: bytes
) -> None:
    async with RawServer(answer(data, then=until_eof)) as server:
        endpoint = client.endpoint(server.url, {})
        with pytest.raises(BadResponse, match="invalid HTTP response"):
            await post(endpoint)  # at once: a wait for more would end in TimeoutError
        await server.wait_for(lambda: server.peers[0].hung_up)
        assert await post(endpoint) == ok_conn(1)


# --- 5. timeouts --------------------------------------------------------------------------


async def test_no_answer_within_the_limit_is_timeout_and_closes_the_connection(
    client: Http1Client,
) -> None:
    loop = asyncio.get_running_loop()
    async with RawServer(answer(b"", then=until_eof)) as server:
        endpoint = client.endpoint(server.url, {})
        started = loop.time()
        with pytest.raises(TimeoutError):
            # The outer bound only catches a limit that is never applied (the server never answers).
            await asyncio.wait_for(post(endpoint, time_limit=SHORT), WAIT / 2)
        elapsed = loop.time() - started
        await server.wait_for(lambda: server.peers[0].hung_up)
        assert await post(endpoint) == ok_conn(1)
    assert SHORT - 0.01 <= elapsed < WAIT / 2
    assert [len(p.requests) for p in server.peers] == [1, 1]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="headers-unfinished"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\n", id="only-interim"),
    ],
)
async def test_no_complete_status_within_the_limit_is_timeout(
    client: Http1Client, data: bytes
) -> None:
    async with RawServer(answer(data, then=until_eof)) as server:
        with pytest.raises(TimeoutError):
            await post(client.endpoint(server.url, {}), time_limit=SHORT)
        await server.wait_for(lambda: server.peers[0].hung_up)


async def test_status_without_the_end_of_its_body_is_returned_with_timeout_error(
    client: Http1Client,
) -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: 1\r\n\r\nabc"
    async with RawServer(answer(data, then=until_eof)) as server:
        endpoint = client.endpoint(server.url, {})
        got = await post(endpoint, time_limit=SHORT)
        await server.wait_for(lambda: server.peers[0].hung_up)
    assert got == Response(200, {"content-length": "10"}, b"abc", "timeout after 0.2s")


async def test_a_finished_post_leaves_no_deadline_behind(client: Http1Client) -> None:
    loop = asyncio.get_running_loop()
    async with RawServer() as server:
        endpoint = client.endpoint(server.url, {})
        deadline = loop.time() + SHORT
        assert await post(endpoint, time_limit=SHORT) == ok_conn(0)
        # Past the first post's deadline (the condition under test, not a synchronisation).
        passed = asyncio.Event()
        loop.call_at(deadline + 0.05, passed.set)
        await asyncio.wait_for(passed.wait(), WAIT)
        assert await post(endpoint) == ok_conn(0)
    assert [len(p.requests) for p in server.peers] == [2]


# --- 6. connect failures and TLS ----------------------------------------------------------


async def test_closed_port_is_connection_refused(client: Http1Client) -> None:
    # A bound socket that does not listen: the port is refused, and no one else can take it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        with pytest.raises(ConnectionRefusedError):
            await post(client.endpoint(f"http://127.0.0.1:{port}/", {}))


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def test_untrusted_certificate_fails_verification(
    client: Http1Client, server_tls: ssl.SSLContext
) -> None:
    rx = Recorder()
    url = await rx.start(ssl_context=server_tls)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await post(client.endpoint(url, {}))
    finally:
        await rx.stop()
    assert rx.seen == []


async def test_trusted_certificate_works_and_keeps_the_connection(
    ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    tls_client = Http1Client(ssl_context=trusting)
    rx = Recorder()
    url = await rx.start(ssl_context=server_tls)
    try:
        endpoint = tls_client.endpoint(f"{url}/secure?x=1", {})
        answers = [await post(endpoint, b"%d" % i) for i in range(3)]
    finally:
        tls_client.close()
        await rx.stop()
    assert url.startswith("https://")
    assert [a.body for a in answers] == [b"ok"] * 3
    assert [(s.target, s.body, s.secure) for s in rx.seen] == [
        ("/secure?x=1", b"0", True),
        ("/secure?x=1", b"1", True),
        ("/secure?x=1", b"2", True),
    ]
    assert rx.connections() == 1


def _loops() -> list[Any]:
    """The event loops the relay runs on: asyncio's, and uvloop's when installed."""
    loops: list[Any] = [pytest.param(asyncio.new_event_loop, id="asyncio")]
    try:
        import uvloop
    except ImportError:
        return loops
    return [*loops, pytest.param(uvloop.new_event_loop, id="uvloop")]


def closing_each(reused: list[bool]) -> Answer:
    """Answers ``ok`` with ``Connection: close``, noting whether the TLS session was resumed
    (read while the connection is open: a closed asyncio transport forgets its TLS object)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        reused.append(request.transport.get_extra_info("ssl_object").session_reused)
        return web.Response(body=b"ok", headers={"Connection": "close"})

    return answer


@pytest.mark.parametrize("loop_factory", _loops())
@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"]
)
def test_new_connections_to_a_host_resume_the_tls_session_of_an_earlier_one(
    ca: trustme.CA, loop_factory: Callable[[], asyncio.AbstractEventLoop], version: ssl.TLSVersion
) -> None:
    """A receiver that closes every connection: each POST is a new TLS connection, and all but
    the first resume the session (seen by the server: ``ssl_object.session_reused``)."""
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.maximum_version = version
    ca.issue_cert("127.0.0.1").configure_cert(server_tls)
    reused: list[bool] = []

    async def scenario() -> list[str]:
        trusting = http1.ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
        ca.configure_trust(trusting)
        tls_client = Http1Client(ssl_context=trusting)
        rx = Recorder(closing_each(reused))
        url = await rx.start(ssl_context=server_tls)
        try:
            endpoint = tls_client.endpoint(f"{url}/x", {})
            bodies = [(await post(endpoint)).body.decode() for _ in range(4)]
        finally:
            tls_client.close()
            await rx.stop()
        assert rx.connections() == 4
        return bodies

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        bodies = runner.run(scenario())
    assert bodies == ["ok"] * 4
    assert reused == [False, True, True, True]


async def test_a_plain_context_still_works_without_resuming(
    ca: trustme.CA, server_tls: ssl.SSLContext
) -> None:
    """A caller's own ``ssl.SSLContext`` is used as it is: every new connection handshakes."""
    reused: list[bool] = []
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    tls_client = Http1Client(ssl_context=trusting)
    rx = Recorder(closing_each(reused))
    url = await rx.start(ssl_context=server_tls)
    try:
        endpoint = tls_client.endpoint(f"{url}/x", {})
        assert [(await post(endpoint)).status for _ in range(2)] == [200, 200]
    finally:
        tls_client.close()
        await rx.stop()
    assert reused == [False, False]


def test_default_context_verifies_like_create_default_context() -> None:
    context, reference = http1.default_ssl_context(), ssl.create_default_context()
    assert isinstance(context, http1.ResumingContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert (context.options, context.verify_flags) == (reference.options, reference.verify_flags)
    assert context.minimum_version == reference.minimum_version
    assert len(context.get_ca_certs()) == len(reference.get_ca_certs())


# --- 7. closing the client ----------------------------------------------------------------


async def test_close_closes_idle_connections() -> None:
    http = Http1Client()
    async with RawServer() as server:
        endpoints = [http.endpoint(f"{server.url}/{i}", {}) for i in range(2)]
        for endpoint in endpoints:
            await post(endpoint)
        http.close()
        await server.wait_for(lambda: all(p.hung_up for p in server.peers))
    assert [len(p.requests) for p in server.peers] == [1, 1]


async def test_connection_in_use_at_close_is_closed_when_its_post_ends() -> None:
    release = asyncio.Event()

    async def answer_when_released(peer: Peer) -> None:
        assert await peer.read_request() is not None
        await release.wait()
        peer.writer.write(OK)
        await until_eof(peer)

    http = Http1Client()
    try:
        async with RawServer(answer_when_released) as server:
            endpoint = http.endpoint(server.url, {})
            in_flight = asyncio.create_task(post(endpoint))
            await server.wait_for(lambda: len(server.peers) == 1 and server.peers[0].requests)
            http.close()
            release.set()
            assert (await in_flight).body == b"ok"
            await server.wait_for(lambda: server.peers[0].hung_up)
    finally:
        http.close()


# --- 8. cancellation ----------------------------------------------------------------------


async def test_cancelled_post_closes_its_connection_and_the_endpoint_stays_usable(
    client: Http1Client,
) -> None:
    async with RawServer(answer(b"", then=until_eof)) as server:
        endpoint = client.endpoint(server.url, {})
        # A time limit far beyond WAIT: the connection must close on cancel, not at its deadline.
        in_flight = asyncio.create_task(post(endpoint, time_limit=10 * WAIT))
        await server.wait_for(lambda: len(server.peers) == 1 and server.peers[0].requests)
        in_flight.cancel()
        with pytest.raises(asyncio.CancelledError):
            await in_flight
        await server.wait_for(lambda: server.peers[0].hung_up)
        assert await post(endpoint) == ok_conn(1)
    assert [len(p.requests) for p in server.peers] == [1, 1]


@pytest.mark.parametrize(
    ("host", "wire"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("hooks.example.com", "hooks.example.com"),
        ("münchen.de", "xn--mnchen-3ya.de"),
    ],
)
def test_hosts_go_on_the_wire_as_ip_addresses_or_idna(host: str, wire: str) -> None:
    assert http1._wire_host(host) == wire
