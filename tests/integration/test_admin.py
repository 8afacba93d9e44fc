"""The admin HTTP surface against a running relay: auth, status, dead letters, replay."""

from __future__ import annotations

import datetime as dt

import aiohttp
from pydantic import SecretStr

from relay.sim.receiver import Reply
from tests.helpers import GENEROUS, KEY_A, Sub, make_settings, new_secret, running, wait_until_async

TOKEN = "admin-token-0123456789abcdef"


async def test_admin_status_dead_letters_and_replay(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    rx.set_default(Reply.status(500))
    stamp = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(seconds=20)
    made = [sim.add_record(KEY_A, started_at=stamp) for _ in range(3)]
    settings = make_settings(
        tmp_path,
        sim.url,
        [Sub("crm", url, new_secret(), {"retry": ["20ms"], "circuit": {"open_after": 1000}})],
    )
    settings = settings.model_copy(
        update={
            "admin": settings.admin.model_copy(
                update={"listen": "127.0.0.1:0", "token": SecretStr(TOKEN)}
            )
        }
    )
    async with running(settings) as relay, aiohttp.ClientSession() as http:
        assert relay.supervisor is not None and relay.supervisor.admin_url
        base = relay.supervisor.admin_url
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(base + "/status") as resp:
            assert resp.status == 401
            assert TOKEN not in await resp.text()

        async def dead() -> bool:
            async with http.get(base + "/dead-letters", headers=auth) as resp:
                return len(await resp.json()) == 3

        await wait_until_async(dead)
        async with http.get(base + "/status", headers=auth) as resp:
            status = await resp.json()
        assert status["subscribers"]["crm"]["dead"] == 3
        assert status["accounts"]["alpha"]["status"] == "ok"

        rx.set_default(Reply.status(200))
        async with http.post(
            base + "/dead-letters/replay", json={"subscriber": "crm"}, headers=auth
        ) as resp:
            assert (await resp.json()) == {"replayed": 3}
        await rx.wait_for(
            lambda reqs: len({r.body for r in reqs if r.status_sent == 200}) == len(made),
            timeout=GENEROUS,
        )
