"""The dashboard sign-in's brute-force limit over HTTP against `relay run`: per client address
(clients on 127.0.0.2… are other addresses) and from everyone, 429 with Retry-After, the
bearer-token API unaffected. Refills are set to an hour so that no wait depends on speed."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.opsrelay import TOKEN, OpsRelay, ops_relay, subscriber

pytestmark = pytest.mark.slow


async def sign_in(relay: OpsRelay, token: str, source: str = "127.0.0.1") -> tuple[int, Any, str]:
    connector = aiohttp.TCPConnector(local_addr=(source, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(relay.base + "/session", json={"token": token}) as resp,
    ):
        return resp.status, await resp.json(), resp.headers.get("Retry-After", "")


async def test_failed_sign_ins_are_limited_per_address_and_overall(sim, receiver_factory, tmp_path):
    _, url = await receiver_factory()
    relay = ops_relay(tmp_path, sim.url, [subscriber("crm", url)])
    relay.doc["admin"]["sign_in_limit"] = {"failures": 3, "every": "1h", "global_failures": 7,
                                           "global_every": "1h"}  # fmt: skip
    await relay.start()

    assert [(await sign_in(relay, "guess"))[0] for _ in range(3)] == [401] * 3
    status, doc, retry = await sign_in(relay, "guess")
    assert status == 429 and "too many failed sign-ins" in doc["error"]
    assert 3000 < int(retry) <= 3600  # the hour's refill, in whole seconds
    # While limited, even the right token is refused: the answer must not be an oracle.
    status, doc, _ = await sign_in(relay, TOKEN)
    assert status == 429 and TOKEN not in str(doc)
    # Another address is not held up, and the API with the bearer token keeps working.
    assert (await sign_in(relay, TOKEN, "127.0.0.2"))[0] == 200
    assert (await relay.call("GET", "/status"))[0] == 200

    # Everyone together: 3 + 4 more failures fill the global bucket; then a fresh address with
    # the right token waits too.
    assert [(await sign_in(relay, "x", "127.0.0.3"))[0] for _ in range(3)] == [401] * 3
    assert (await sign_in(relay, "x", "127.0.0.4"))[0] == 401
    status, _, retry = await sign_in(relay, TOKEN, "127.0.0.5")
    assert status == 429 and int(retry) > 0
    assert (await relay.call("GET", "/status"))[0] == 200
    assert b"dashboard sign-in limited" in relay.log.read_bytes()
    await relay.stop()
    assert TOKEN.encode() not in relay.log.read_bytes()
