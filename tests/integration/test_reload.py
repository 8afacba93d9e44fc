"""Live configuration: SIGHUP, POST /reload and `relay run --watch` against `relay run`."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from relay.core.signing import webhook_id
from relay.sim.simulator import SimulatedWebFones, key_id
from tests.helpers import KEY_A, KEY_B, ago, rids, wait_until_async
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

    async def crm_count(state: str, n: int) -> bool:
        return (await relay.call("GET", "/status"))[1]["subscribers"]["crm"][state] == n

    # The receiver has r1; so does the store, once its result is written (on a loaded machine the
    # attempt may also have timed out and be retried): only then is crm's queue empty.
    await wait_until_async(lambda: crm_count("delivered", 1), timeout=60)

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

    await wait_until_async(lambda: crm_count("pending", 1), timeout=60)

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


KEY_ROTATED = "key-alpha-rotated-0123456789abcdef"


@pytest.fixture
async def sim3() -> AsyncIterator[SimulatedWebFones]:
    """The simulated API with a third key: alpha's replacement (its own records)."""
    server = SimulatedWebFones({KEY_A: "alpha", KEY_B: "bravo", KEY_ROTATED: "alpha"}, seed=11)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def keys_sent(sim: SimulatedWebFones, since: int) -> set[str | None]:
    """Key ids of the polls that arrived after the first ``since`` logged requests."""
    return {entry.key for entry in sim.request_log[since:]}


async def test_accounts_added_removed_and_changed_by_reload(sim3, receiver_factory, tmp_path):
    sim = sim3
    crm, crm_url = await receiver_factory()
    relay = ops_relay(tmp_path, sim.url, [subscriber("crm", crm_url)])
    relay.env["KEY_R"] = KEY_ROTATED
    accounts = relay.doc["upstream"]["accounts"]
    a1 = sim.add_record(KEY_A, started_at=ago(60))
    b1 = sim.add_record(KEY_B, started_at=ago(55))  # bravo is not configured yet
    await relay.start()
    await crm.wait_count(1, timeout=60)
    assert rids(crm.requests) == [a1["rid"]]

    # Added (SIGHUP): its poller starts and takes everything since start_from.
    accounts.append({"name": "bravo", "api_key": "${KEY_B}"})
    relay.write()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    await crm.wait_count(2, timeout=60)
    assert rids(crm.requests)[1] == b1["rid"]

    # Removed (POST /reload): its poller has stopped when the answer comes; its cursor stays.
    relay.doc["upstream"]["accounts"] = [a for a in accounts if a["name"] != "alpha"]
    relay.write()
    status, result = await relay.call("POST", "/reload", {})
    assert status == 200 and result["removed"] == ["account alpha"], result
    removed_at = len(sim.request_log)
    doc = (await relay.call("GET", "/status"))[1]
    assert (
        set(doc["pollers"]) == {"bravo"}
        and doc["accounts"]["alpha"]["cursor"] == a1["call_timestamp"]
    )
    a2 = sim.add_record(KEY_A, started_at=ago(50))  # waits for alpha to come back
    b2 = sim.add_record(KEY_B, started_at=ago(45))
    await crm.wait_count(3, timeout=60)
    assert rids(crm.requests)[2] == b2["rid"]
    assert key_id(KEY_A) not in keys_sent(sim, removed_at)

    # Re-added: it resumes from its kept cursor (a2 arrives, a1 is not sent again).
    relay.doc["upstream"]["accounts"] = [{"name": "alpha", "api_key": "${KEY_A}"}, *accounts[1:]]
    relay.write()
    readded_at = len(sim.request_log)
    status, result = await relay.call("POST", "/reload", {})
    assert status == 200 and result["added"] == ["account alpha"], result
    await crm.wait_count(4, timeout=60)
    assert rids(crm.requests)[3] == a2["rid"]
    first = next(e for e in sim.request_log[readded_at:] if e.key == key_id(KEY_A))
    assert first.timestamp is not None and first.timestamp >= "2024"  # not start_from (2000)

    # Changed API key: from the answer on, only the new key is sent, and its records arrive
    # as account alpha.
    relay.doc["upstream"]["accounts"][0]["api_key"] = "${KEY_R}"
    relay.write()
    status, result = await relay.call("POST", "/reload", {})
    assert status == 200 and result["changed"] == ["account alpha"], result
    changed_at = len(sim.request_log)
    sim.add_record(KEY_A, started_at=ago(40))  # under the old key: never fetched again
    c1 = sim.add_record(KEY_ROTATED, started_at=ago(35))
    await crm.wait_count(5, timeout=60)
    assert rids(crm.requests)[4] == c1["rid"]
    assert orjson.loads(crm.requests[4].body)["account"] == "alpha"
    b3 = sim.add_record(KEY_B, started_at=ago(30))  # a last record through the running relay
    await crm.wait_count(6, timeout=60)
    await relay.stop()
    assert keys_sent(sim, changed_at) <= {key_id(KEY_ROTATED), key_id(KEY_B)}
    assert key_id(KEY_ROTATED) in keys_sent(sim, changed_at)

    # Nothing lost, nothing repeated, each webhook-id the one of its (account, rid).
    expected = [("alpha", a1), ("bravo", b1), ("bravo", b2), ("alpha", a2), ("alpha", c1),
                ("bravo", b3)]  # fmt: skip
    assert rids(crm.requests) == [r["rid"] for _, r in expected]
    assert webhook_ids(crm) == [webhook_id(acct, r["rid"], "crm") for acct, r in expected]
