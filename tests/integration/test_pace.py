"""A subscriber's pace against real local receivers: the circuit breaker, the 429 pause, the
rate limit and fifo ordering.

Every check here is an ordering or a lower bound measured at the receiver (arrival times,
webhook-ids, sliding windows), never a speed: a loaded machine only spreads requests further.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Awaitable, Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from relay.core.status import QueueCounts
from relay.sim.receiver import ReceivedRequest, Receiver, Reply
from relay.sim.simulator import SimulatedWebFones
from tests.helpers import KEY_A, Sub, ago, make_settings, new_secret, rids, running
from tests.helpers import wait_until_async as wait_until

ReceiverFactory = Callable[..., Awaitable[tuple[Receiver, str]]]
RETRY = ["50ms", "100ms", "100ms", "100ms", "100ms"]  # 450 ms in all: the tests outlast it
SLOWEST_RETRY = 0.09  # the 100 ms step, jittered by at most -10 %


def one_sub(tmp_path: Path, sim: SimulatedWebFones, url: str, **extra: Any) -> Any:
    return make_settings(tmp_path, sim.url, [Sub("hook", url, new_secret(), extra)])


async def counts(relay: Any) -> QueueCounts:
    stats = await relay.supervisor.store.stats()
    return stats.subscribers.get("hook", QueueCounts())


def most_in_any_window(times: list[float], per: float) -> int:
    """The largest number of arrivals inside any closed window ``[t, t + per]``."""
    ordered = sorted(times)
    return max((bisect_right(ordered, t + per) - i for i, t in enumerate(ordered)), default=0)


def webhook_id(r: ReceivedRequest) -> str:
    return r.headers["webhook-id"]


async def test_receiver_down_longer_than_the_schedule_is_probed_then_drained_oldest_first(
    sim, receiver_factory: ReceiverFactory, tmp_path: Path
) -> None:
    rx, url = await receiver_factory()
    rx.set_default(Reply.status(503))
    made = [sim.add_record(KEY_A, started_at=ago(30 - i)) for i in range(12)]
    settings = one_sub(tmp_path, sim, url, max_in_flight=4, circuit={"open_after": 3})
    async with running(settings) as relay:
        # Far more requests than one delivery's schedule allows (6 attempts).
        await rx.wait_count(4 + 15, timeout=120)
        down = await counts(relay)
        assert down.circuit == "open" and down.dead == 0 and down.failures >= 3
        rx.set_default(Reply.ok())

        async def all_delivered() -> bool:
            return (await counts(relay)).delivered == len(made)

        await wait_until(all_delivered, timeout=120)
        final = await counts(relay)
    assert (final.dead, final.circuit, final.failures) == (0, "closed", 0)

    failed = [r for r in rx.requests if r.status_sent == 503]
    # Until the third failure opened the circuit, four workers sent freely: at most 3 failed
    # and 3 more were in flight. From then on every request was a probe of the oldest delivery,
    # one at a time, spaced by its schedule.
    probes = failed[3 + 3 :]
    assert len(probes) >= 10
    head_id = webhook_id(probes[0])
    assert {webhook_id(r) for r in probes} == {head_id}
    assert set(rids(probes)) == {made[0]["rid"]}  # the oldest delivery
    gaps = [b.at - a.at for a, b in pairwise(probes[1:])]
    assert min(gaps) >= SLOWEST_RETRY, gaps

    # Back up: the successful probe first, then the backlog oldest first (up to the overlap
    # of max_in_flight concurrent requests).
    ok = rx.ok_requests()
    assert webhook_id(ok[0]) == head_id
    order = rids(ok)
    assert sorted(order) == sorted(r["rid"] for r in made)
    created = {r["rid"]: i for i, r in enumerate(made)}
    positions = [created[rid] for rid in order]
    for i, pos in enumerate(positions):
        assert all(pos < later for later in positions[i + 4 :]), positions


async def test_circuit_that_stays_open_disables_the_subscriber_and_keeps_its_deliveries(
    sim, receiver_factory: ReceiverFactory, tmp_path: Path
) -> None:
    rx, url = await receiver_factory()
    rx.set_default(Reply.status(500))
    for i in range(5):
        sim.add_record(KEY_A, started_at=ago(20 - i))
    settings = one_sub(
        tmp_path, sim, url, circuit={"open_after": 2, "disable_after": "300ms"}, max_in_flight=1
    )
    async with running(settings) as relay:

        async def disabled() -> bool:
            return (await counts(relay)).disabled is not None

        await wait_until(disabled, timeout=120)
        seen = len(rx.requests)
        state = await counts(relay)
        # Nothing more goes out to a disabled subscriber, even when its retries come due.
        for i in range(3):
            sim.add_record(KEY_A, started_at=ago(5 - i))

        async def all_queued() -> bool:
            c = await counts(relay)
            return c.pending + c.inflight == 8

        await wait_until(all_queued, timeout=60)
    assert state.disabled is not None and state.disabled.startswith("failing since ")
    assert "HTTP 500" in state.disabled
    assert (state.dead, state.delivered) == (0, 0)
    assert len(rx.requests) == seen


async def test_429_pauses_the_whole_subscriber_for_its_retry_after(
    sim, receiver_factory: ReceiverFactory, tmp_path: Path
) -> None:
    rx, url = await receiver_factory()
    pause = 1.5
    rx.script(Reply.ok(), Reply.status(429, {"Retry-After": f"{pause:g}"}))
    made = [sim.add_record(KEY_A, started_at=ago(20 - i)) for i in range(6)]
    settings = one_sub(tmp_path, sim, url, max_in_flight=1)
    async with running(settings) as relay:
        await rx.wait_for(lambda reqs: len([r for r in reqs if r.status_sent == 200]) >= 6, 120)
        assert (await counts(relay)).dead == 0
    limited = next(i for i, r in enumerate(rx.requests) if r.status_sent == 429)
    answered = rx.requests[limited].at
    later = rx.requests[limited + 1 :]
    assert later, "nothing was sent after the pause"
    # The receiver asked for quiet at `answered`: no request of any delivery before it ends.
    assert min(r.at for r in later) >= answered + pause
    assert sorted(rids(rx.ok_requests())) == sorted(r["rid"] for r in made)


async def test_rate_limit_is_never_exceeded_in_any_sliding_window(
    sim, receiver_factory: ReceiverFactory, tmp_path: Path
) -> None:
    rx, url = await receiver_factory()
    rx.script(Reply.status(500), Reply.status(503))  # retries are paced like the rest
    made = [sim.add_record(KEY_A, started_at=ago(40 - i)) for i in range(24)]
    settings = one_sub(
        tmp_path, sim, url, max_in_flight=4, rate_limit={"requests": 4, "per": "500ms"}
    )
    async with running(settings):
        await rx.wait_for(
            lambda reqs: len({*rids(r for r in reqs if r.status_sent == 200)}) == 24, 120
        )
    times = [r.at for r in rx.requests]
    assert len(times) >= 26
    assert most_in_any_window(times, 0.5) <= 4
    assert sorted({*rids(rx.ok_requests())}) == sorted(r["rid"] for r in made)


async def test_fifo_keeps_order_under_failures_one_request_at_a_time(
    sim, receiver_factory: ReceiverFactory, tmp_path: Path
) -> None:
    rx, url = await receiver_factory()
    hold = 0.05  # each answer takes this long: overlapping requests would arrive closer
    rx.set_default(Reply.slow(hold))
    failing = Reply.slow(hold, Reply.status(500))
    rx.script(Reply.slow(hold), failing, failing, Reply.slow(hold), failing)
    made = [sim.add_record(KEY_A, started_at=ago(30 - i)) for i in range(8)]
    settings = one_sub(tmp_path, sim, url, max_in_flight=4, ordering="fifo")
    async with running(settings) as relay:
        await rx.wait_for(lambda reqs: len([r for r in reqs if r.status_sent == 200]) >= 8, 120)
        assert (await counts(relay)).dead == 0
    sent = rids(rx.requests)
    created = [r["rid"] for r in made]
    # A failing head blocks the queue: it is repeated until it succeeds, and nothing behind
    # it goes out meanwhile.
    assert list(dict.fromkeys(sent)) == created
    assert sent == sorted(sent, key=created.index)
    assert len(sent) == 8 + 3
    gaps = [b.at - a.at for a, b in pairwise(rx.requests)]
    assert min(gaps) >= hold
