"""The scriptable webhook receiver, exercised over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

import aiohttp
import pytest
from standardwebhooks import Webhook

from relay.sim.receiver import ReceivedRequest, Receiver, Reply, serve_forever
from tests.helpers import GENEROUS

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"type":"call.completed","data":{"rid":211159}}'


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, **kwargs: object
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with http.post(url, data=BODY, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.read(), resp


async def test_records_requests_and_answers_ok(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await post(
        http, receiver.url + "/hooks/crm", headers={"Webhook-Id": "msg_1", "X-Two": "a"}
    )
    assert (status, json.loads(body)) == (200, {"ok": True})
    [got] = receiver.requests
    assert got.path == "/hooks/crm"
    assert got.body == BODY
    assert got.json()["data"]["rid"] == 211159
    assert got.headers["webhook-id"] == "msg_1"
    assert got.status_sent == 200
    assert receiver.ok_requests() == [got]
    async with http.get(receiver.url + "/_stats") as resp:
        assert await resp.json() == {"requests": 1, "ok": 1}


async def test_script_then_default(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.script(Reply.status(500), Reply.status(429, headers={"Retry-After": "3"}))
    assert (await post(http, receiver.url))[0] == 500
    status, _, resp = await post(http, receiver.url)
    assert (status, resp.headers["Retry-After"]) == (429, "3")
    assert (await post(http, receiver.url))[0] == 200
    receiver.set_default(Reply.status(410, body=b"gone"))
    assert (await post(http, receiver.url))[:2] == (410, b"gone")
    assert [r.status_sent for r in receiver.requests] == [500, 429, 200, 410]
    assert len(receiver.ok_requests()) == 1


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_redirects(receiver: Receiver, http: aiohttp.ClientSession, code: int) -> None:
    receiver.script(Reply.redirect("http://elsewhere.invalid/hook", code))
    status, _, resp = await post(http, receiver.url, allow_redirects=False)
    assert (status, resp.headers["Location"]) == (code, "http://elsewhere.invalid/hook")


async def test_slow_then(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.script(Reply.slow(0.1, then=Reply.status(503)), Reply.slow(5))
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert (await post(http, receiver.url))[0] == 503
    assert loop.time() - began >= 0.1
    with pytest.raises(TimeoutError):
        await post(http, receiver.url, timeout=aiohttp.ClientTimeout(total=0.1))
    assert [r.status_sent for r in receiver.requests] == [503, 200]


async def test_slow_default_answers_200_late(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    # "then the default" must not mean the slow default itself (that recursed forever).
    receiver.set_default(Reply.slow(0.05))
    assert (await post(http, receiver.url))[0] == 200
    assert [r.status_sent for r in receiver.requests] == [200]


async def test_hang_until_the_client_gives_up(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.script(Reply.hang())
    with pytest.raises(TimeoutError):
        await post(http, receiver.url, timeout=aiohttp.ClientTimeout(total=0.2))
    assert receiver.requests[0].status_sent == 0
    assert (await post(http, receiver.url))[0] == 200


async def test_stop_ends_a_hang_promptly(http: aiohttp.ClientSession) -> None:
    receiver = Receiver()
    # Were the hang not cancelled, stop() would wait this long for it: far past the bound below,
    # which is far past what a loaded machine needs.
    receiver.shutdown_timeout = 4 * GENEROUS
    await receiver.start()
    receiver.script(Reply.hang())
    pending = asyncio.create_task(post(http, receiver.url))
    await receiver.wait_count(1, timeout=GENEROUS)
    await asyncio.wait_for(receiver.stop(), GENEROUS)
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending
    await receiver.stop()  # idempotent


async def test_start_inside_async_with_returns_the_url() -> None:
    async with Receiver() as receiver:
        assert await receiver.start() == receiver.url


async def test_reset(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.script(Reply.reset())
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(http, receiver.url)
    assert receiver.requests[0].status_sent == 0
    assert (await post(http, receiver.url))[0] == 200


async def test_huge_body(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.script(Reply.huge(3_000_000))
    status, body, _ = await post(http, receiver.url)
    assert (status, len(body)) == (200, 3_000_000)


async def test_stream_forever_can_be_abandoned(
    receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    receiver.script(Reply.stream_forever())
    async with http.post(receiver.url, data=BODY) as resp:
        assert resp.status == 200
        assert await resp.content.readexactly(3) == b"   "
    # The client dropped the connection; the receiver carries on serving.
    assert (await post(http, receiver.url))[0] == 200


async def test_stream_forever_is_bounded(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.script(Reply.stream_forever(limit=0.2))
    status, body, resp = await post(http, receiver.url)
    assert status == 200
    assert resp.headers["Transfer-Encoding"] == "chunked"
    assert body.strip() == b""


async def test_trickle_headers(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    receiver.script(Reply.trickle_headers(0.002, then=Reply.status(202, body=b"accepted")))
    loop = asyncio.get_running_loop()
    began = loop.time()
    status, body, _ = await post(http, receiver.url)
    assert (status, body) == (202, b"accepted")
    assert loop.time() - began >= 0.002 * len("HTTP/1.1 202 Accepted\r\n")
    receiver.script(Reply.trickle_headers(1.0))
    with pytest.raises(TimeoutError):  # a client waiting for headers times out
        await post(http, receiver.url, timeout=aiohttp.ClientTimeout(sock_read=0.2))


def verifier(headers: Mapping[str, str], body: bytes) -> None:
    Webhook(SECRET).verify(body, dict(headers), json_parse=False)


def signed_headers(body: bytes, secret: str = SECRET) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": "msg_2a1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_2a1", now, body.decode()),
    }


async def test_verify_rejects_bad_signatures(http: aiohttp.ClientSession) -> None:
    other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    async with Receiver(verify=verifier) as receiver:
        receiver.script(Reply.status(500))
        assert (await post(http, receiver.url, headers=signed_headers(BODY, other)))[0] == 401
        assert (await post(http, receiver.url))[0] == 401
        assert (await post(http, receiver.url, headers=signed_headers(BODY)))[0] == 500
        assert (await post(http, receiver.url, headers=signed_headers(BODY)))[0] == 200
    assert [r.status_sent for r in receiver.requests] == [401, 401, 500, 200]


async def test_wait_for(receiver: Receiver, http: aiohttp.ClientSession) -> None:
    def two_ok(requests: list[ReceivedRequest]) -> bool:
        return sum(r.status_sent == 200 for r in requests) >= 2

    receiver.script(Reply.status(500))
    waiter = asyncio.create_task(receiver.wait_for(two_ok, timeout=GENEROUS))
    await asyncio.gather(*(post(http, receiver.url) for _ in range(3)))
    await waiter
    await receiver.wait_count(3, timeout=0)  # already true: no wait at all
    with pytest.raises(TimeoutError, match=r"at_least_n still false .* 3 requests received"):
        await receiver.wait_count(4, timeout=0.05)


async def test_serve_forever_fast(http: aiohttp.ClientSession) -> None:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(serve_forever(fast=True, on_ready=ready.set_result, stop=stop))
    url = await asyncio.wait_for(ready, GENEROUS)
    for _ in range(3):
        assert (await post(http, url + "/x"))[0] == 200
    async with http.get(url + "/_stats") as resp:
        assert await resp.json() == {"requests": 3, "ok": 3}
    stop.set()
    assert await server == (3, 3)


@pytest.mark.slow
async def test_runs_as_its_own_process(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.sim.receiver",
        "--port",
        "0",
        "--print-url",
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        url = (await asyncio.wait_for(proc.stdout.readline(), GENEROUS)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        assert (await post(http, url + "/hook"))[0] == 200
        proc.send_signal(signal.SIGTERM)
        final = await asyncio.wait_for(proc.stdout.read(), GENEROUS)
        assert json.loads(final) == {"requests": 1, "ok": 1}
        assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
