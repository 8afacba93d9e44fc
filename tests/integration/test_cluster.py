"""Several relay instances in one event loop on one PostgreSQL schema: they share the work
(each account polled by one of them, each delivery sent by one of them), hand accounts over
when one stops, and wake each other across instances. Skipped without PostgreSQL (failed under
CI=true)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import orjson

from relay.config.cluster import ClusterSettings
from relay.ingest.lease import LeaseShare
from relay.runtime.cluster import Cluster
from relay.sim.simulator import SimulatedWebFones, key_id
from relay.store.postgres import PostgresStore
from tests.helpers import (
    GENEROUS,
    KEY_A,
    KEY_B,
    RunningRelay,
    Sub,
    ago,
    make_settings,
    new_secret,
    verify_all,
    wait_until_async,
)

TTL = 1.5  # cluster.lease_ttl: failover within about this (plus a third of it)
BUDGET = {"requests": 40, "per": "2s"}


def _settings(tmp_path, sim: SimulatedWebFones, subs: list[Sub], url: str):
    return make_settings(
        tmp_path,
        sim.url,
        subs,
        accounts={"alpha": KEY_A, "bravo": KEY_B},
        upstream={"rate_limit": BUDGET, "sweep_interval": "1s"},
        state=url,
        cluster={"lease_ttl": f"{TTL}s"},
    )


@contextlib.asynccontextmanager
async def relays(settings, n: int) -> AsyncIterator[list[RunningRelay]]:
    started: list[RunningRelay] = []
    try:
        for _ in range(n):
            started.append(await RunningRelay(settings).start())
        yield started
    finally:
        for relay in started:
            await relay.stop()


def _instance(relay: RunningRelay) -> str:
    assert relay.supervisor is not None and relay.supervisor.cluster is not None
    return relay.supervisor.cluster.instance_id


def _check_turns(sim: SimulatedWebFones, running: list[RunningRelay]) -> dict[str, set[str]]:
    """No account polled by two instances at once: in the upstream's request log, an instance's
    turns at an account (runs of consecutive requests) never outnumber the times it took the
    account's lease. Returns who polled each account."""
    names = {key_id(KEY_A): "alpha", key_id(KEY_B): "bravo"}
    taken: dict[tuple[str, str], int] = {}
    for relay in running:
        assert relay.supervisor is not None
        for poller in relay.supervisor.pollers:
            assert poller.lease is not None
            taken[(_instance(relay), poller.name)] = poller.lease.taken
    who: dict[str, set[str]] = {}
    for kid, account in names.items():
        turns: dict[str, int] = {}
        last = None
        for e in sorted((e for e in sim.request_log if e.key == kid), key=lambda e: e.at):
            assert e.instance is not None
            if e.instance != last:
                turns[e.instance] = turns.get(e.instance, 0) + 1
                last = e.instance
        for inst, n in turns.items():
            assert n <= taken.get((inst, account), 0), (account, inst, n, taken)
        who[account] = set(turns)
    return who


async def test_three_instances_share_the_work_once(sim, receiver_factory, tmp_path, pg_url):
    rx_a, url_a = await receiver_factory()
    rx_b, url_b = await receiver_factory()
    subs = [Sub("crm", url_a, new_secret()), Sub("chat", url_b, new_secret())]
    settings = _settings(tmp_path, sim, subs, pg_url)
    made = [sim.add_record(key, started_at=ago(30)) for key in (KEY_A, KEY_B) for _ in range(20)]
    async with relays(settings, 3) as running:
        instances = {_instance(r) for r in running}
        assert len(instances) == 3
        for rx in (rx_a, rx_b):
            await rx.wait_count(len(made), timeout=GENEROUS)
        # More while all three run, including records written late.
        more = [sim.add_record(KEY_A, started_at=ago(600)) for _ in range(5)]
        more += [sim.add_record(KEY_B, started_at=ago(1)) for _ in range(5)]
        for rx in (rx_a, rx_b):
            await rx.wait_count(len(made) + len(more), timeout=GENEROUS)
        # The two accounts end up polled by two different instances: each takes its share.
        store = running[0].supervisor.store  # type: ignore[union-attr]

        async def split() -> bool:
            holders = await store.account_lease_holders(time.time())
            return set(holders) == {"alpha", "bravo"} and len(set(holders.values())) == 2

        await wait_until_async(split)
        holders = await store.account_lease_holders(time.time())
        assert set(holders.values()) <= instances
        pollers = _check_turns(sim, running)
    want = sorted(r["rid"] for r in made + more)
    for sub, rx in ((subs[0], rx_a), (subs[1], rx_b)):
        docs = verify_all(rx.requests, sub.secret)
        # Claims are exclusive (SKIP LOCKED): without failures each record goes out once.
        assert sorted(d["data"]["rid"] for d in docs) == want
    for account, ids in pollers.items():
        assert ids <= instances, (account, ids)
    for key in (KEY_A, KEY_B):
        assert sim.max_window_count(2.0, key=key) <= BUDGET["requests"]


async def test_a_stopped_instance_hands_its_accounts_to_another(
    sim, receiver_factory, tmp_path, pg_url
):
    rx, url = await receiver_factory()
    sub = Sub("crm", url, new_secret())
    settings = _settings(tmp_path, sim, [sub], pg_url)
    first = await RunningRelay(settings).start()
    second = await RunningRelay(settings).start()
    try:
        sim.add_record(KEY_A, started_at=ago(20))
        await rx.wait_count(1, timeout=GENEROUS)
        by = {_instance(first): first, _instance(second): second}
        [holder] = {e.instance for e in sim.request_log if e.key == key_id(KEY_A)}
        stopping, staying = by[holder], next(r for i, r in by.items() if i != holder)
        await stopping.stop()  # releases its leases on the way out
        sim.add_record(KEY_A, started_at=ago(10))
        await rx.wait_count(2, timeout=GENEROUS)
        last = [e.instance for e in sim.request_log if e.key == key_id(KEY_A)][-1]
        assert last == _instance(staying)
    finally:
        await first.stop()
        await second.stop()
    assert [orjson.loads(r.body)["data"]["rid"] for r in rx.requests] == [
        r["rid"] for r in sim.records(KEY_A)
    ]


async def test_wakeups_from_another_instance_reach_the_named_claimers(pg_url):
    woken: list[list[str] | None] = []
    got = asyncio.Event()

    def wake(names: list[str] | None) -> None:
        woken.append(names)
        got.set()

    listener, writer = PostgresStore(pg_url), PostgresStore(pg_url)
    await listener.open()
    await writer.open()
    cluster = Cluster(listener, ClusterSettings(), "me", {}, list, LeaseShare(0), wake)
    stop = asyncio.Event()
    task = asyncio.ensure_future(cluster.listen_loop(stop))
    try:
        await asyncio.wait_for(got.wait(), GENEROUS)
        assert woken == [None]  # listening: look at everything
        got.clear()
        await writer.notify("due", "crm")
        await asyncio.wait_for(got.wait(), GENEROUS)
        assert woken[-1] == ["crm"]
        got.clear()
        await writer.notify("config", "x")  # not for claimers
        await writer.set_subscriber_disabled("chat", None, 1.0)
        await asyncio.wait_for(got.wait(), GENEROUS)
        assert woken[-1] == ["chat"]
    finally:
        stop.set()
        await asyncio.wait_for(task, GENEROUS)
        await listener.close()
        await writer.close()


async def test_sqlite_runs_no_cluster_loops(sim, receiver_factory, tmp_path):
    _rx, url = await receiver_factory()
    settings = make_settings(tmp_path, sim.url, [Sub("crm", url, new_secret())])
    relay = await RunningRelay(settings).start()
    try:
        assert relay.supervisor is not None and relay.supervisor.cluster is not None
        assert relay.supervisor.cluster.early_loops() == []
        assert relay.supervisor.cluster.late_loops() == []
        names = {t.get_name() for t in asyncio.all_tasks()}
        assert not any(name.startswith("cluster:") for name in names)
        assert all(p.lease is None for p in relay.supervisor.pollers)
    finally:
        await relay.stop()
