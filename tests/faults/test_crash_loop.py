"""The crash loop: `relay run` killed with SIGKILL at seeded random moments, again and again, while
the simulated WebFones produces records continuously and misbehaves, and three receivers (healthy,
flaky, slow) take deliveries. Then one last run drains, and the books must balance exactly.

A kill moment is "the Nth request arriving at receiver X" (N and X drawn from a seeded RNG), so
kills land mid-delivery, mid-poll or mid-commit without the test ever sleeping.

The SIGTERM variant stops and restarts the relay gracefully, under the same load, and shows that
no delivery that had completed (a 2xx the relay received) is ever sent again.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from relay.sim.receiver import ReceivedRequest, Receiver, Reply
from relay.sim.simulator import MALFORMED, Fault, SimulatedWebFones
from relay.store.sqlite.store import integrity_check
from tests.helpers import (
    GENEROUS,
    KEY_A,
    new_secret,
    start_relay_process,
    stop_relay_process,
    verify_all,
)

pytestmark = pytest.mark.slow

SEED = 20250701
KILLS = 12
SUBSCRIBERS = ("healthy", "flaky", "slow")

# Occasional upstream trouble: rate limiting (with a short Retry-After), server errors, an answer
# slower than the 1 s upstream timeout, malformed 200s and a connection reset mid-body.
UPSTREAM_FAULTS = (
    Fault.status(429, headers={"Retry-After": "0.3"}),
    Fault.status(500),
    Fault.status(503),
    Fault.slow(1.5),
    MALFORMED["html_200"],
    MALFORMED["truncated_json"],
    Fault.reset(),
)


def write_config(path: Path, upstream: str, urls: dict[str, str], state: Path) -> None:
    short = ["50ms", "100ms", "200ms", "300ms"]
    doc: dict[str, Any] = {
        "state": str(state),
        "upstream": {
            "base_url": upstream,
            "poll_interval": "100ms",
            "recent_window": "1m",
            "lookback": "2h",
            "sweep_interval": "1s",
            "timeout": "1s",
            "start_from": "2000-01-01 00:00:00",
            "rate_limit": {"requests": 100000, "per": "10s"},
            "accounts": [{"name": "alpha", "api_key": "${TEST_API_KEY}"}],
        },
        "subscribers": [
            {
                "name": "healthy",
                "url": urls["healthy"],
                "secret": "${SECRET_HEALTHY}",
                "timeout": "1s",
                "retry": short,
            },
            {
                "name": "flaky",
                "url": urls["flaky"],
                "secret": "${SECRET_FLAKY}",
                "timeout": "500ms",
                # Long enough that ~35% failures never exhaust it (0.35^13 per record).
                "retry": short + ["300ms"] * 8,
                "max_retry_after": "1s",
                "max_in_flight": 8,
            },
            {
                "name": "slow",
                "url": urls["slow"],
                "secret": "${SECRET_SLOW}",
                "timeout": "1s",
                "retry": short,
                "max_in_flight": 8,
            },
        ],
        "delivery": {"grace_period": "1s"},
    }
    path.write_text(yaml.safe_dump(doc))


def flaky_script(rng: random.Random, n: int) -> list[Reply]:
    """~35% failures: 500s, hangs past the 500 ms timeout, 429 with Retry-After, resets."""
    replies = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.15:
            replies.append(Reply.status(500))
        elif roll < 0.23:
            replies.append(Reply.hang())
        elif roll < 0.31:
            replies.append(Reply.status(429, headers={"Retry-After": "0.2"}))
        elif roll < 0.35:
            replies.append(Reply.reset())
        else:
            replies.append(Reply.ok())
    return replies


def ok_rids(requests: list[ReceivedRequest]) -> Counter[int]:
    """How many requests per rid the receiver answered (or began to answer) with a 2xx."""
    return Counter(
        orjson.loads(r.body)["data"]["rid"] for r in requests if 200 <= r.status_sent < 300
    )


def check_books(
    sim: SimulatedWebFones, receivers: dict[str, Receiver], secrets: dict[str, str]
) -> dict[str, int]:
    """Every produced record reached every receiver with a 2xx, byte-exact and verifiable, under
    one webhook-id; nothing was invented. Returns the counts for the report."""
    produced = {r["rid"]: r for r in sim.records(KEY_A)}
    figures = {"records": len(produced), "requests": 0, "duplicates": 0, "lost": 0}
    for name, rx in receivers.items():
        docs = verify_all(rx.requests, secrets[name])  # every request, failed ones too
        ids: dict[int, set[str]] = {}
        for request, doc in zip(rx.requests, docs, strict=True):
            rid = doc["data"]["rid"]
            assert rid in produced, f"{name}: rid {rid} was never produced"
            assert doc["data"] == produced[rid], f"{name}: rid {rid} changed on the way"
            assert doc["account"] == "alpha" and doc["type"] == "call.record"
            ids.setdefault(rid, set()).add(request.headers["webhook-id"])
        assert all(len(v) == 1 for v in ids.values()), f"{name}: one webhook-id per record"
        delivered = ok_rids(rx.requests)
        lost = set(produced) - set(delivered)
        assert not lost, f"{name}: {len(lost)} records never delivered: {sorted(lost)[:10]}"
        figures["requests"] += len(rx.requests)
        figures["duplicates"] += sum(n - 1 for n in delivered.values())
        figures["lost"] += len(lost)
    return figures


def all_delivered(want: set[int]) -> Callable[[list[ReceivedRequest]], bool]:
    def every_record_answered_2xx(requests: list[ReceivedRequest]) -> bool:
        return want <= set(ok_rids(requests))

    return every_record_answered_2xx


async def start_three(receiver_factory: Any, rng: random.Random) -> dict[str, Receiver]:
    healthy, _ = await receiver_factory()
    flaky, _ = await receiver_factory()
    slow, _ = await receiver_factory()
    flaky.script(*flaky_script(rng, 600))
    slow.set_default(Reply.slow(0.15))
    return {"healthy": healthy, "flaky": flaky, "slow": slow}


def relay_env(secrets: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, "TEST_API_KEY": KEY_A}
    env.update({f"SECRET_{name.upper()}": secret for name, secret in secrets.items()})
    return env


async def drain(proc: asyncio.subprocess.Process, receivers: dict[str, Receiver], want: set[int]):
    try:
        for rx in receivers.values():
            await rx.wait_for(all_delivered(want), timeout=GENEROUS)
    finally:
        assert await stop_relay_process(proc) == 0


async def test_kill_9_loop_under_load_loses_nothing(sim, receiver_factory, tmp_path, capsys):
    rng = random.Random(SEED)
    receivers = await start_three(receiver_factory, rng)
    secrets = {name: new_secret() for name in SUBSCRIBERS}
    env = relay_env(secrets)
    config, state, log = tmp_path / "relay.yaml", tmp_path / "state.db", tmp_path / "relay.log"
    write_config(config, sim.url, {n: rx.url for n, rx in receivers.items()}, state)
    sim.set_fault_rate(0.08, UPSTREAM_FAULTS)

    # Same-second bursts and records written up to 30 minutes late (inside the 2 h look-back).
    producer = asyncio.ensure_future(
        sim.produce(KEY_A, rate=25, count=600, burst_prob=0.2, late_prob=0.1, max_late=1800)
    )
    kills = 0
    try:
        for round_no in range(KILLS):
            if round_no % 3 == 0:
                # Besides the 8% drawn per request, a fault is queued for the first poll of
                # every third process: how many polls fit between kills depends on the
                # machine's speed, and a loaded one may poll too few times to draw any.
                sim.fail_next(rng.choice(UPSTREAM_FAULTS), key=KEY_A)
            proc = await start_relay_process(config, env, log)
            # The kill moment: the k-th next request at a randomly chosen receiver.
            rx = receivers[rng.choice(SUBSCRIBERS)]
            target = len(rx.requests) + rng.randint(1, 30)
            try:
                await rx.wait_count(target, timeout=GENEROUS)
            finally:
                proc.kill()  # SIGKILL: no cleanup of any kind
                assert await asyncio.wait_for(proc.wait(), GENEROUS) == -signal.SIGKILL
            kills += 1
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)

    sim.set_fault_rate(0.0, ())
    want = {r["rid"] for r in sim.records(KEY_A)}
    assert len(want) >= 100, "the kills must have landed while records kept coming"
    await drain(await start_relay_process(config, env, log), receivers, want)

    figures = check_books(sim, receivers, secrets)
    assert integrity_check(str(state)) == "ok"
    text = log.read_text()
    for secret in [KEY_A, *secrets.values()]:
        assert secret not in text
    assert sim.request_log and any(e.fault for e in sim.request_log), "faults were served"
    with capsys.disabled():
        print(
            f"\ncrash loop: kills={kills} records={figures['records']} receivers=3 "
            f"requests={figures['requests']} lost={figures['lost']} "
            f"duplicates={figures['duplicates']}"
        )
    assert kills == KILLS


async def test_sigterm_loop_never_redelivers_a_completed_delivery(
    sim, receiver_factory, tmp_path, capsys
):
    rng = random.Random(SEED + 1)
    receivers = await start_three(receiver_factory, rng)
    secrets = {name: new_secret() for name in SUBSCRIBERS}
    env = relay_env(secrets)
    config, state, log = tmp_path / "relay.yaml", tmp_path / "state.db", tmp_path / "relay.log"
    write_config(config, sim.url, {n: rx.url for n, rx in receivers.items()}, state)

    producer = asyncio.ensure_future(
        sim.produce(KEY_A, rate=25, count=400, burst_prob=0.2, late_prob=0.1, max_late=1800)
    )
    stops = 0
    try:
        for _ in range(5):
            proc = await start_relay_process(config, env, log)
            rx = receivers[rng.choice(SUBSCRIBERS)]
            target = len(rx.requests) + rng.randint(1, 30)
            try:
                await rx.wait_count(target, timeout=GENEROUS)
            finally:
                # Graceful: deliveries in flight (the slow receiver takes 150 ms, the 1 s grace
                # covers it) finish and their results are written before the process exits.
                assert await stop_relay_process(proc) == 0
            stops += 1
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)

    want = {r["rid"] for r in sim.records(KEY_A)}
    await drain(await start_relay_process(config, env, log), receivers, want)
    figures = check_books(sim, receivers, secrets)
    # The flaky receiver's hangs never answer, so every 2xx here was a delivery that completed.
    assert figures["duplicates"] == 0
    assert integrity_check(str(state)) == "ok"
    with capsys.disabled():
        print(f"\nsigterm loop: stops={stops} records={figures['records']} duplicates=0")
