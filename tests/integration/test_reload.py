"""Live configuration: SIGHUP, POST /reload and `relay run --watch` against `relay run`."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from tests.helpers import KEY_A, ago, rids, wait_until_async
from tests.opsrelay import OpsRelay, ops_relay, subscriber

pytestmark = pytest.mark.slow


async def dispatchers(relay: OpsRelay) -> set[str]:
    return set((await relay.call("GET", "/status"))[1]["dispatchers"])


async def until_dispatchers(relay: OpsRelay, names: set[str]) -> None:
    async def match() -> bool:
        return await dispatchers(relay) == names

    await wait_until_async(match, timeout=60, interval=0.1)


def webhook_ids(rx: Any) -> list[str]:
    return [r.headers["webhook-id"] for r in rx.requests]


async def test_add_remove_readd_subscribers_without_losing_or_repeating(
    sim, receiver_factory, tmp_path
):
    crm, crm_url = await receiver_factory()
    late, late_url = await receiver_factory()
    relay = await ops_relay(tmp_path, sim.url, [subscriber("crm", crm_url)]).start()
    r1 = sim.add_record(KEY_A, started_at=ago(40))
    await crm.wait_count(1, timeout=60)

    # Added by SIGHUP: receives what arrives from now on, not the past.
    relay.doc["subscribers"].append(subscriber("late", late_url))
    relay.write()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    await until_dispatchers(relay, {"crm", "late"})
    assert (await relay.call("POST", "/subscribers/crm/pause", {}))[0] == 200
    r2 = sim.add_record(KEY_A, started_at=ago(30))
    await late.wait_count(1, timeout=60)
    assert rids(late.requests) == [r2["rid"]]

    async def crm_pending(n: int) -> bool:
        return (await relay.call("GET", "/status"))[1]["subscribers"]["crm"]["pending"] == n

    await wait_until_async(lambda: crm_pending(1), timeout=60)

    # Removed by POST /reload: its queue is kept and reported.
    relay.doc["subscribers"] = [subscriber("late", late_url)]
    relay.write()
    status, result = await relay.call("POST", "/reload", {})
    assert status == 200, result
    assert result["removed"] == ["subscriber crm"] and result["kept_pending"] == {"crm": 1}
    assert result["problems"] == [] and result["restart_required"] == []
    assert await dispatchers(relay) == {"late"}
    r3 = sim.add_record(KEY_A, started_at=ago(20))
    await late.wait_count(2, timeout=60)

    # An invalid file is refused with one line per problem; the running config stays.
    relay.config.write_text(relay.config.read_text().replace("poll_interval", "pol_interval"))
    status, result = await relay.call("POST", "/reload", {})
    assert status == 400
    assert result["problems"] == ["upstream.pol_interval: unknown key"]
    relay.proc.send_signal(signal.SIGHUP)  # the same through the signal: logged, nothing changes

    async def rejected() -> bool:
        return b"reload rejected" in relay.log.read_bytes()

    await wait_until_async(rejected, timeout=60)
    assert await dispatchers(relay) == {"late"}

    # Re-added: it resumes its kept queue (r2), and gets nothing twice.
    relay.doc["subscribers"] = [subscriber("crm", crm_url), subscriber("late", late_url)]
    relay.write()
    status, result = await relay.call("POST", "/reload", {})
    assert status == 200 and result["added"] == ["subscriber crm"]
    assert (await relay.call("POST", "/subscribers/crm/resume", {}))[0] == 200
    await crm.wait_count(2, timeout=60)
    r4 = sim.add_record(KEY_A, started_at=ago(10))
    await crm.wait_count(3, timeout=60)
    await late.wait_count(3, timeout=60)
    await relay.stop()
    assert rids(crm.requests) == [r1["rid"], r2["rid"], r4["rid"]]  # r3 came while removed
    assert rids(late.requests) == [r2["rid"], r3["rid"], r4["rid"]]
    for rx in (crm, late):
        assert len(set(webhook_ids(rx))) == len(rx.requests)


async def test_watch_reloads_when_the_file_changes(sim, receiver_factory, tmp_path):
    crm, crm_url = await receiver_factory()
    extra, extra_url = await receiver_factory()
    relay = ops_relay(tmp_path, sim.url, [subscriber("crm", crm_url)])
    relay.extra_args = ("--watch",)
    await relay.start()
    relay.doc["subscribers"].append(subscriber("extra", extra_url))
    relay.write()
    await until_dispatchers(relay, {"crm", "extra"})
    made = sim.add_record(KEY_A, started_at=ago(10))
    await extra.wait_count(1, timeout=60)
    await crm.wait_count(1, timeout=60)
    assert rids(extra.requests) == [made["rid"]]
    await relay.stop()
