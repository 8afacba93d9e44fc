"""`relay run` as a real process: kill -9 mid-delivery, restart, and nothing is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest
import yaml

from relay.sim.receiver import Reply
from tests.helpers import (
    GENEROUS,
    KEY_A,
    ago,
    new_secret,
    rids,
    start_relay_process,
    stop_relay_process,
    verify_all,
)

pytestmark = pytest.mark.slow


def write_config(path: Path, upstream: str, subs: dict[str, str], state: Path) -> None:
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
                "name": name,
                "url": url,
                "secret": "${SECRET_" + name.upper() + "}",
                "timeout": "1s",
                "retry": ["50ms", "100ms", "200ms", "200ms", "200ms", "200ms", "200ms"],
            }
            for name, url in subs.items()
        ],
        "delivery": {"grace_period": "2s"},
    }
    path.write_text(yaml.safe_dump(doc))


async def test_kill_9_mid_delivery_then_restart_loses_nothing(sim, receiver_factory, tmp_path):
    healthy, url_h = await receiver_factory()
    flaky, url_f = await receiver_factory()
    # The flaky one hangs past the timeout now and then, so kills land mid-request.
    flaky.script(*[Reply.slow(0.3, then=Reply.status(200)) for _ in range(10)])
    secrets = {"healthy": new_secret(), "flaky": new_secret()}
    env = {
        **os.environ,
        "TEST_API_KEY": KEY_A,
        "SECRET_HEALTHY": secrets["healthy"],
        "SECRET_FLAKY": secrets["flaky"],
    }
    config = tmp_path / "relay.yaml"
    state = tmp_path / "state.db"
    log = tmp_path / "relay.log"
    write_config(config, sim.url, {"healthy": url_h, "flaky": url_f}, state)

    made: list[dict] = []
    for round_no in range(4):
        proc = await start_relay_process(config, env, log)
        for _ in range(8):
            made.append(sim.add_record(KEY_A, started_at=ago(30 - round_no)))
        target = len(made) - 4
        await flaky.wait_for(
            lambda reqs, t=target: len({r.body for r in reqs}) >= t, timeout=GENEROUS
        )
        proc.kill()  # SIGKILL: no cleanup of any kind
        assert await asyncio.wait_for(proc.wait(), GENEROUS) == -signal.SIGKILL

    proc = await start_relay_process(config, env, log)
    try:
        want = sorted(r["rid"] for r in made)
        for rx in (healthy, flaky):
            await rx.wait_for(
                lambda reqs: (
                    sorted({rid for rid in rids(r for r in reqs if r.status_sent == 200)}) == want
                ),
                timeout=GENEROUS,
            )
    finally:
        assert await stop_relay_process(proc) == 0

    by_rid = {r["rid"]: r for r in made}
    for name, rx in (("healthy", healthy), ("flaky", flaky)):
        docs = verify_all(rx.requests, secrets[name])
        assert {d["data"]["rid"] for d in docs} <= set(by_rid), "nothing invented"
        for d in docs:
            assert d["data"] == by_rid[d["data"]["rid"]]
        ids: dict[int, set[str]] = {}
        for r, d in zip(rx.requests, docs, strict=True):
            ids.setdefault(d["data"]["rid"], set()).add(r.headers["webhook-id"])
        assert all(len(v) == 1 for v in ids.values()), "one webhook-id per record and receiver"
    with sqlite3.connect(state) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    text = log.read_text()
    for secret in [KEY_A, *secrets.values()]:
        assert secret not in text


async def test_sigterm_exits_cleanly_without_redelivering(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    secret = new_secret()
    env = {**os.environ, "TEST_API_KEY": KEY_A, "SECRET_CRM": secret}
    config = tmp_path / "relay.yaml"
    write_config(config, sim.url, {"crm": url}, tmp_path / "state.db")
    made = [sim.add_record(KEY_A, started_at=ago(20)) for _ in range(5)]
    proc = await start_relay_process(config, env, tmp_path / "relay.log")
    await rx.wait_count(5, timeout=GENEROUS)
    assert await stop_relay_process(proc) == 0
    more = sim.add_record(KEY_A, started_at=ago(10))
    proc = await start_relay_process(config, env, tmp_path / "relay.log")
    await rx.wait_count(6, timeout=GENEROUS)
    assert await stop_relay_process(proc) == 0
    assert sorted(rids(rx.requests)) == sorted(r["rid"] for r in [*made, more])
