"""Issue 8's admin findings against a running relay: cross-site requests and DNS rebinding (#2),
malformed input (#10), and idle connections exhausting descriptors (#3)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from relay.config.schema import Settings
from relay.sim.receiver import Reply
from tests.helpers import (
    KEY_A,
    Sub,
    make_settings,
    new_secret,
    running,
    sqlite_rows,
    wait_until_async,
)

TOKEN = "admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def with_admin(settings: Settings, **admin: Any) -> Settings:
    update = {"listen": "127.0.0.1:0", **admin}
    return settings.model_copy(update={"admin": settings.admin.model_copy(update=update)})


async def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send exactly these bytes (a client library would refuse some of them); the status and
    body of the answer."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"Connection: close\r\n\r\n" + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 60)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


async def dead_relay(sim, receiver_factory, tmp_path, **admin: Any):
    """A relay with three dead letters for subscriber crm (receiver answers 500)."""
    rx, url = await receiver_factory()
    rx.set_default(Reply.status(500))
    stamp = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=20)
    for _ in range(3):
        sim.add_record(KEY_A, started_at=stamp)
    settings = make_settings(
        tmp_path,
        sim.url,
        # The circuit stays closed: six failures in a row would open it and hold the third
        # record back for the breaker's probe interval.
        [Sub("crm", url, new_secret(), {"retry": ["20ms"], "circuit": {"open_after": 1000}})],
    )
    return rx, with_admin(settings, **admin)


async def wait_dead(http: aiohttp.ClientSession, base: str, n: int, headers=None) -> None:
    async def dead() -> bool:
        async with http.get(base + "/dead-letters", headers=headers) as resp:
            return len(await resp.json()) == n

    await wait_until_async(dead, timeout=60)


async def test_cross_site_and_rebinding_requests_are_refused(sim, receiver_factory, tmp_path):
    _, settings = await dead_relay(sim, receiver_factory, tmp_path)  # loopback, no token
    async with running(settings) as relay, aiohttp.ClientSession() as http:
        assert relay.supervisor is not None and relay.supervisor.admin_url
        base = relay.supervisor.admin_url
        await wait_dead(http, base, 3)
        host = base.removeprefix("http://")
        replay = f"POST /dead-letters/replay HTTP/1.1\r\nHost: {host}\r\n".encode()
        body = b'{"subscriber": "crm"}'
        length = f"Content-Length: {len(body)}\r\n".encode()

        # The finding: a form post from any web page (text/plain, foreign Origin).
        evil = b"Origin: http://evil.example\r\nContent-Type: text/plain\r\n"
        status, text = await raw_request(base, replay + evil + length, body)
        assert status == 403, text
        # A same-looking JSON post, but the browser says it is cross-site.
        fetch = b"Sec-Fetch-Site: cross-site\r\nContent-Type: application/json\r\n"
        status, _ = await raw_request(base, replay + fetch + length, body)
        assert status == 403
        # No Origin (curl), but not JSON: refused, a form cannot send application/json.
        status, text = await raw_request(
            base, replay + b"Content-Type: text/plain\r\n" + length, body
        )
        assert status == 415 and b"application/json" in text
        # DNS rebinding: evil.example now resolves to 127.0.0.1; the Host header tells.
        status, text = await raw_request(base, b"GET /status HTTP/1.1\r\nHost: evil.example\r\n")
        assert status == 421, text
        rebind = replay.replace(host.encode(), b"evil.example:80")
        status, _ = await raw_request(
            base, rebind + b"Content-Type: application/json\r\n" + length, body
        )
        assert status == 421
        # Nothing of that was obeyed.
        async with http.get(base + "/dead-letters") as resp:
            assert len(await resp.json()) == 3

        # The relay's own origin, and localhost by name, still work.
        same = f"Origin: http://{host}\r\nContent-Type: application/json\r\n".encode()
        status, text = await raw_request(base, replay + same + length, body)
        assert status == 200 and orjson.loads(text) == {"replayed": 3}
        port = host.rsplit(":", 1)[1]
        status, _ = await raw_request(
            base, f"GET /status HTTP/1.1\r\nHost: localhost:{port}\r\n".encode()
        )
        assert status == 200


async def test_malformed_requests_get_400_not_500(sim, receiver_factory, tmp_path):
    _, settings = await dead_relay(sim, receiver_factory, tmp_path, token=SecretStr(TOKEN))
    async with running(settings) as relay, aiohttp.ClientSession() as http:
        assert relay.supervisor is not None and relay.supervisor.admin_url
        base = relay.supervisor.admin_url
        await wait_dead(http, base, 3, headers=AUTH)
        json_head = {**AUTH, "Content-Type": "application/json"}
        for body, message in [
            (b"[1,2]", "must be a JSON object"),
            (b"{not json", "not valid JSON"),
            (b'{"ids": 5}', "ids must be a list"),
            (b'{"ids": ["7"]}', "ids must be a list"),
            (b'{"subscriber": 3}', "must be a subscriber name"),
        ]:
            async with http.post(base + "/dead-letters/replay", data=body, headers=json_head) as r:
                assert r.status == 400, (body, await r.text())
                assert message in (await r.json())["error"]
        for query in ("limit=abc", "limit=0", "limit=99999999999999999999"):
            async with http.get(base + f"/dead-letters?{query}", headers=AUTH) as resp:
                assert resp.status == 400, query
                assert "limit" in (await resp.json())["error"]
        # A non-UTF-8 Authorization header: 401, not a traceback.
        host = base.removeprefix("http://")
        head = (
            f"GET /status HTTP/1.1\r\nHost: {host}\r\n".encode()
            + b"Authorization: Bearer \xff\xfe\r\n"
        )
        status, text = await raw_request(base, head)
        assert status == 401 and b"token" in text
        # Everything is still where it was.
        async with http.get(base + "/dead-letters", headers=AUTH) as resp:
            assert len(await resp.json()) == 3


async def test_enabling_an_unknown_subscriber_is_404_and_writes_nothing(
    sim, receiver_factory, tmp_path
):
    _, settings = await dead_relay(sim, receiver_factory, tmp_path)
    async with running(settings) as relay, aiohttp.ClientSession() as http:
        assert relay.supervisor is not None and relay.supervisor.admin_url
        base = relay.supervisor.admin_url
        async with http.post(base + "/subscribers/nobody/enable", json={}) as resp:
            assert resp.status == 404
            assert "nobody" in (await resp.json())["error"]
        async with http.post(base + "/dead-letters/replay", json={"subscriber": "nobody"}) as r:
            assert r.status == 404
        async with http.post(base + "/subscribers/crm/enable", json={}) as resp:
            assert resp.status == 200
    rows = sqlite_rows(settings.state, "SELECT subscriber FROM subscriber_state")
    assert rows == [("crm",)]
