"""End to end: the real relay between a real local simulated WebFones and real receivers."""

from __future__ import annotations

import time

import orjson

from relay.core.status import QueueCounts
from relay.runtime.stores import open_store
from relay.sim.receiver import Reply
from relay.sim.simulator import Fault, SimulatedWebFones
from tests.helpers import (
    GENEROUS,
    KEY_A,
    KEY_B,
    Sub,
    ago,
    make_settings,
    new_secret,
    rids,
    running,
    verify_all,
    wait_until_async,
)


async def test_same_second_burst_reaches_every_subscriber_once(sim, receiver_factory, tmp_path):
    rx1, url1 = await receiver_factory()
    rx2, url2 = await receiver_factory()
    s1, s2 = new_secret(), new_secret()
    stamp = ago(30)
    made = [sim.add_record(KEY_A, started_at=stamp) for _ in range(7)]
    settings = make_settings(tmp_path, sim_url(sim), [Sub("one", url1, s1), Sub("two", url2, s2)])
    async with running(settings):
        await rx1.wait_count(7, timeout=GENEROUS)
        await rx2.wait_count(7, timeout=GENEROUS)
        more = [sim.add_record(KEY_A, started_at=stamp) for _ in range(3)]  # same second again
        await rx1.wait_count(10, timeout=GENEROUS)
        await rx2.wait_count(10, timeout=GENEROUS)
    expected = sorted(r["rid"] for r in made + more)
    for rx, secret in ((rx1, s1), (rx2, s2)):
        docs = verify_all(rx.requests, secret)
        assert sorted(d["data"]["rid"] for d in docs) == expected
        by_rid = {r["rid"]: r for r in made + more}
        for d in docs:
            assert d["type"] == "call.record"
            assert d["account"] == "alpha"
            assert d["data"] == by_rid[d["data"]["rid"]]
        assert all(r.headers["content-type"] == "application/json" for r in rx.requests)
        assert all("webfones-relay" in r.headers["user-agent"] for r in rx.requests)


async def test_late_written_record_inside_lookback_is_delivered(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    secret = new_secret()
    first = sim.add_record(KEY_A, started_at=ago(5))
    settings = make_settings(tmp_path, sim_url(sim), [Sub("crm", url, secret)])
    async with running(settings):
        await rx.wait_count(1, timeout=GENEROUS)
        # A 90-minute call, written now, stamped when it began: far behind the cursor.
        late = sim.add_record(KEY_A, started_at=ago(90 * 60))
        await rx.wait_count(2, timeout=GENEROUS)
    assert rids(rx.requests) == [first["rid"], late["rid"]]
    verify_all(rx.requests, secret)


async def test_records_arriving_while_stopped_are_delivered_after_restart(
    sim, receiver_factory, tmp_path
):
    rx, url = await receiver_factory()
    secret = new_secret()
    settings = make_settings(tmp_path, sim_url(sim), [Sub("crm", url, secret)])
    before = [sim.add_record(KEY_A, started_at=ago(60)) for _ in range(3)]
    async with running(settings):
        await rx.wait_count(3, timeout=GENEROUS)
    during = [sim.add_record(KEY_A, started_at=ago(20)) for _ in range(4)]
    during.append(sim.add_record(KEY_A, started_at=ago(50 * 60)))  # late, written while down
    async with running(settings):
        await rx.wait_count(8, timeout=GENEROUS)
    assert sorted(rids(rx.requests)) == sorted(r["rid"] for r in before + during)
    assert len({r.headers["webhook-id"] for r in rx.requests}) == 8


async def test_upstream_faults_move_no_cursor_and_lose_nothing(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    secret = new_secret()
    sim.fail_next(
        Fault.status(500),
        Fault.status(429, headers={"Retry-After": "0"}),
        Fault.raw(200, "text/html", b"<html>Service unavailable</html>"),
        Fault.raw(200, "application/json", b'{"success": true, "count": 2, "records": [{"ri'),
        Fault.raw(200, "application/json", b'{"success": false}'),
        Fault.reset(),
        Fault.slow(3.0),  # longer than the 2 s upstream timeout
        key=KEY_A,
    )
    made = [sim.add_record(KEY_A, started_at=ago(10)) for _ in range(5)]
    settings = make_settings(
        tmp_path, sim_url(sim), [Sub("crm", url, secret)], upstream={"poll_interval": "20ms"}
    )
    async with running(settings) as relay:
        await rx.wait_count(5, timeout=GENEROUS)
        assert relay.supervisor is not None
    assert sorted(rids(rx.requests)) == sorted(r["rid"] for r in made)


async def test_rejected_key_stops_one_account_only(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    secret = new_secret()
    made = [sim.add_record(KEY_A, started_at=ago(10)) for _ in range(3)]
    settings = make_settings(
        tmp_path,
        sim_url(sim),
        [Sub("crm", url, secret)],
        accounts={"alpha": KEY_A, "broken": "not-a-valid-key-123456"},
    )
    async with running(settings) as relay:
        await rx.wait_count(3, timeout=GENEROUS)
        assert relay.supervisor is not None
        stats = await relay.supervisor.store.stats()
    assert stats.accounts["broken"].status == "auth_failed"
    assert "403" in stats.accounts["broken"].error
    assert sorted(rids(rx.requests)) == sorted(r["rid"] for r in made)


async def test_two_accounts_and_account_filter(sim, receiver_factory, tmp_path):
    rx_all, url_all = await receiver_factory()
    rx_b, url_b = await receiver_factory()
    a = sim.add_record(KEY_A, started_at=ago(10))
    b = sim.add_record(KEY_B, started_at=ago(10))
    settings = make_settings(
        tmp_path,
        sim_url(sim),
        [
            Sub("all", url_all, new_secret()),
            Sub("only-b", url_b, new_secret(), {"accounts": ["bravo"]}),
        ],
        accounts={"alpha": KEY_A, "bravo": KEY_B},
    )
    async with running(settings):
        await rx_all.wait_count(2, timeout=GENEROUS)
        await rx_b.wait_count(1, timeout=GENEROUS)
    assert sorted(rids(rx_all.requests)) == sorted([a["rid"], b["rid"]])
    assert rids(rx_b.requests) == [b["rid"]]
    assert orjson.loads(rx_b.requests[0].body)["account"] == "bravo"


async def test_subscriber_failures_are_retried_with_the_same_webhook_id(
    sim, receiver_factory, tmp_path
):
    rx, url = await receiver_factory()
    secret = new_secret()
    rx.script(
        Reply.status(500),
        Reply.reset(),
        Reply.slow(3.0, then=Reply.status(200)),  # past the 1 s subscriber timeout
        Reply.status(429, headers={"Retry-After": "1"}),
    )
    record = sim.add_record(KEY_A, started_at=ago(10))
    settings = make_settings(tmp_path, sim_url(sim), [Sub("crm", url, secret)])
    async with running(settings):
        await rx.wait_for(
            lambda reqs: len(reqs) >= 5 and reqs[4].status_sent == 200, timeout=GENEROUS
        )
    assert len(rx.requests) == 5
    assert {r.headers["webhook-id"] for r in rx.requests} == {rx.requests[0].headers["webhook-id"]}
    bodies = {r.body for r in rx.requests}
    assert len(bodies) == 1, "the body must be byte-identical on every attempt"
    verify_all(rx.requests, secret)
    assert rids(rx.requests)[-1] == record["rid"]
    # Retry-After: 1 was honoured although the schedule said 100 ms.
    assert rx.requests[4].at - rx.requests[3].at >= 0.9


async def test_gone_disables_subscriber_and_keeps_deliveries(sim, receiver_factory, tmp_path):
    rx_gone, url_gone = await receiver_factory()
    rx_ok, url_ok = await receiver_factory()
    rx_gone.set_default(Reply.status(410))
    made = [sim.add_record(KEY_A, started_at=ago(10)) for _ in range(3)]
    settings = make_settings(
        tmp_path,
        sim_url(sim),
        [Sub("gone", url_gone, new_secret()), Sub("ok", url_ok, new_secret())],
    )
    async with running(settings) as relay:
        await rx_ok.wait_count(3, timeout=GENEROUS)
        await rx_gone.wait_count(1, timeout=GENEROUS)
        assert relay.supervisor is not None
        store = relay.supervisor.store
        more = sim.add_record(KEY_A, started_at=ago(5))
        await rx_ok.wait_count(4, timeout=GENEROUS)
        stats = await store.stats()
    assert stats.subscribers["gone"].disabled
    gone = stats.subscribers["gone"]
    assert gone.pending + gone.inflight == len(made) + 1
    assert gone.delivered == 0 and gone.dead == 0
    assert sorted(rids(rx_ok.requests)) == sorted(r["rid"] for r in [*made, more])
    # Re-enabled, the kept deliveries go out.
    rx_gone.set_default(Reply.status(200))
    store2 = open_store(settings.state)
    await store2.open()
    await store2.set_subscriber_disabled("gone", None, time.time())
    await store2.close()
    async with running(settings):
        await rx_gone.wait_for(
            lambda reqs: len({r.body for r in reqs if r.status_sent == 200}) == 4, timeout=GENEROUS
        )


async def test_dead_subscriber_does_not_delay_the_healthy_one(sim, receiver_factory, tmp_path):
    rx_ok, url_ok = await receiver_factory()
    rx_dead, url_dead = await receiver_factory()
    await rx_dead.stop()  # nothing listens there any more: connection refused
    made = [sim.add_record(KEY_A, started_at=ago(10)) for _ in range(20)]
    settings = make_settings(
        tmp_path,
        sim_url(sim),
        [
            # A circuit that never opens: this test is about the retry schedule running out
            # (the breaker's own tests are in test_pace.py).
            Sub(
                "dead",
                url_dead,
                new_secret(),
                {"retry": ["20ms", "20ms"], "circuit": {"open_after": 1000}},
            ),
            Sub("ok", url_ok, new_secret()),
        ],
    )
    async with running(settings) as relay:
        await rx_ok.wait_count(20, timeout=GENEROUS)
        assert relay.supervisor is not None
        store = relay.supervisor.store

        letters: list = []

        async def all_dead() -> bool:
            letters[:] = await store.dead_letters("dead", 100)
            return len(letters) == 20

        await wait_until_async(all_dead)
        letters = await store.dead_letters("dead", 100)
    assert sorted(rids(rx_ok.requests)) == sorted(r["rid"] for r in made)
    assert len(letters) == 20
    assert all(letter.attempts == 3 for letter in letters)
    assert all("connect" in (letter.last_error or "") for letter in letters)


def sim_url(sim: SimulatedWebFones) -> str:
    return sim.url


async def test_start_from_now_skips_history_but_delivers_the_first_new_call(
    sim, receiver_factory, tmp_path
):
    rx, url = await receiver_factory()
    settings = make_settings(
        tmp_path, sim.url, [Sub("crm", url, new_secret())], upstream={"start_from": "now"}
    )
    quiet = make_settings(
        tmp_path,
        sim.url,
        [Sub("crm", url, new_secret())],
        upstream={"start_from": "now"},
        accounts={"bravo": KEY_B},
    )
    old = sim.add_record(KEY_A, started_at=ago(600))
    async with running(settings) as relay:
        assert relay.supervisor is not None
        poller = relay.supervisor.pollers[0]
        await wait_until_async(_polled(poller, 2))
        new = sim.add_record(KEY_A, started_at=ago(1))
        await rx.wait_count(1, timeout=GENEROUS)
    assert rids(rx.requests) == [new["rid"]]
    assert old["rid"] != new["rid"]
    # An account with no calls at all at start: its first call must not be swallowed.
    rx2, url2 = await receiver_factory()
    quiet = quiet.model_copy(
        update={"subscribers": [quiet.subscribers[0].model_copy(update={"url": url2})]}
    )
    async with running(quiet) as relay:
        assert relay.supervisor is not None
        await wait_until_async(_polled(relay.supervisor.pollers[0], 3))
        first = sim.add_record(KEY_B, started_at=ago(1))
        await rx2.wait_count(1, timeout=GENEROUS)
    assert rids(rx2.requests) == [first["rid"]]


def _polled(poller, n):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return poller.polls >= n

    return check


async def test_stop_in_the_middle_of_a_batch_releases_and_redelivers(
    sim, receiver_factory, tmp_path
):
    rx, url = await receiver_factory()
    secret = new_secret()
    rx.set_default(Reply.slow(5.0, then=Reply.status(200)))  # outlives the grace period
    made = [sim.add_record(KEY_A, started_at=ago(10)) for _ in range(12)]
    settings = make_settings(
        tmp_path,
        sim.url,
        [Sub("crm", url, secret, {"timeout": "10s", "max_in_flight": 3})],
        delivery={"grace_period": "200ms"},
    )
    async with running(settings):
        await rx.wait_count(3, timeout=GENEROUS)  # three in flight, the rest claimed or queued
    store = open_store(settings.state)
    await store.open()
    try:
        stats = await store.stats()
    finally:
        await store.close()
    crm = stats.subscribers["crm"]
    assert crm.pending == 12 and crm.inflight == 0 and crm.delivered == 0
    rx.set_default(Reply.status(200))
    async with running(settings):
        await rx.wait_for(
            # The first three requests were cut off by the shutdown; the rest are the restart.
            lambda reqs: set(rids(reqs[3:])) == {m["rid"] for m in made},
            timeout=GENEROUS,
        )
    verify_all(rx.requests, secret)


async def test_gone_stops_sending_the_claimed_buffer(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    rx.set_default(Reply.status(410))
    for _ in range(20):
        sim.add_record(KEY_A, started_at=ago(10))
    settings = make_settings(
        tmp_path, sim.url, [Sub("gone", url, new_secret(), {"max_in_flight": 1})]
    )
    async with running(settings) as relay:
        assert relay.supervisor is not None
        store = relay.supervisor.store

        async def disabled_with_all_kept() -> bool:
            stats = (await store.stats()).subscribers.get("gone", QueueCounts())
            return bool(stats.disabled) and stats.pending == 20

        await wait_until_async(disabled_with_all_kept)
    assert len(rx.requests) == 1, "one 410 is enough: the rest of the buffer is handed back"
