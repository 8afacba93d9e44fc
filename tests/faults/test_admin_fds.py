"""Issue 8 #3 against `relay run` under `ulimit -n 256`: idle admin connections cannot starve
deliveries of descriptors, and running out of descriptors never spends a delivery attempt."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from relay.sim.receiver import Reply
from tests.helpers import (
    KEY_A,
    ago,
    new_secret,
    rids,
    sqlite_rows,
    start_relay_process,
    wait_until_async,
)

pytestmark = pytest.mark.slow

LIMIT = 256
IDLE = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, upstream: str, url: str, state: Path, admin: dict[str, Any]) -> None:
    doc = {
        "state": str(state),
        "upstream": {
            "base_url": upstream,
            "poll_interval": "100ms",
            "recent_window": "1m",
            "sweep_interval": "1s",
            "start_from": "2000-01-01 00:00:00",
            "rate_limit": {"requests": 100000, "per": "10s"},
            "accounts": [{"name": "alpha", "api_key": "${TEST_API_KEY}"}],
        },
        "subscribers": [
            {
                "name": "crm",
                "url": url,
                "secret": "${SECRET}",
                "timeout": "2s",
                "retry": ["50ms", "100ms", "100ms", "100ms", "100ms"],
            }
        ],
        "delivery": {"grace_period": "2s"},
        "admin": admin,
    }
    path.write_text(yaml.safe_dump(doc))


async def start(tmp_path: Path, sim, url: str, admin: dict[str, Any]):
    port = free_port()
    config = tmp_path / "relay.yaml"
    write_config(
        config, sim.url, url, tmp_path / "state.db", {"listen": f"127.0.0.1:{port}", **admin}
    )
    env = {**os.environ, "TEST_API_KEY": KEY_A, "SECRET": new_secret()}
    proc = await start_relay_process(config, env, tmp_path / "relay.log", nofile=LIMIT)
    base = f"http://127.0.0.1:{port}"

    async def up() -> bool:
        with contextlib.suppress(aiohttp.ClientError):
            async with aiohttp.ClientSession() as http, http.get(base + "/healthz") as resp:
                return resp.status == 200
        return False

    await wait_until_async(up, timeout=60, interval=0.1)
    return proc, base


async def open_idle(
    port_url: str, n: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = port_url.removeprefix("http://").rsplit(":", 1)
    return [await asyncio.open_connection(host, int(port)) for _ in range(n)]


async def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 60) == 0


async def test_idle_admin_connections_do_not_starve_deliveries(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    proc, base = await start(tmp_path, sim, url, {})  # defaults: a cap, 15 s idle timeout
    idle = await open_idle(base, IDLE)  # no request is ever sent on these
    made = [sim.add_record(KEY_A, started_at=ago(20)) for _ in range(5)]
    await rx.wait_count(5, timeout=60)
    assert sorted(rids(rx.requests)) == sorted(r["rid"] for r in made)
    # The relay closes every idle connection itself (refused beyond the cap, or timed out).
    for reader, writer in idle:
        assert await asyncio.wait_for(reader.read(), 120) == b""
        writer.close()
    async with aiohttp.ClientSession() as http, http.get(base + "/status") as resp:
        assert resp.status == 200
    await stop(proc)
    attempts = sqlite_rows(tmp_path / "state.db", "SELECT status, error FROM attempts")
    assert attempts == [(200, None)] * 5


async def test_running_out_of_descriptors_spends_no_attempt(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    # The first delivery is told 410 (and the connection closed): the subscriber is disabled
    # while more records queue up, so nothing is in flight when the descriptors run out.
    rx.script(Reply.status(410, headers={"Connection": "close"}))
    # No cap worth the name: this test is about the delivery side running out.
    proc, base = await start(tmp_path, sim, url, {"max_connections": 5000, "idle_timeout": "1h"})
    first = sim.add_record(KEY_A, started_at=ago(30))
    await rx.wait_count(1, timeout=60)
    made = [sim.add_record(KEY_A, started_at=ago(20)) for _ in range(4)]
    async with aiohttp.ClientSession() as http:  # one kept-alive connection, opened now

        async def status() -> dict[str, Any]:
            async with http.get(base + "/status") as resp:
                return await resp.json()

        async def queued() -> bool:
            return (await status())["subscribers"]["crm"]["pending"] == 5

        await wait_until_async(queued, timeout=60)
        idle = await open_idle(base, IDLE)

        def exhausted() -> bool:
            return len(os.listdir(f"/proc/{proc.pid}/fd")) >= LIMIT - 1

        await wait_until_async(_async(exhausted), timeout=60)
        async with http.post(base + "/subscribers/crm/enable", json={}) as resp:
            assert resp.status == 200

        async def local_errors() -> bool:
            return (await status())["dispatchers"]["crm"]["outcomes"]["local_error"] > 0

        await wait_until_async(local_errors, timeout=60)
        for _, writer in idle:
            writer.close()
        await rx.wait_for(
            lambda reqs: (
                {r for r in rids(reqs[1:]) if r != first["rid"]} == {m["rid"] for m in made}
            ),
            timeout=60,
        )
    await stop(proc)
    rows = sqlite_rows(
        tmp_path / "state.db",
        "SELECT r.rid, d.state, d.attempts FROM deliveries d JOIN records r ON r.id = d.record_id",
    )
    by_rid = {rid: (state, n) for rid, state, n in rows}
    for m in made:
        assert by_rid[m["rid"]] == ("delivered", 1), "no attempt spent on EMFILE"
    errors = sqlite_rows(tmp_path / "state.db", "SELECT error FROM attempts WHERE error NOTNULL")
    assert errors == [("HTTP 410",)]


def _async(predicate):
    async def check() -> bool:
        return predicate()

    return check
