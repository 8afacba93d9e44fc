"""The request budget, proved on the real limiter under virtual time.

:class:`VirtualTimeLoop` is an ordinary selector event loop whose clock, instead of waiting for
the next timer, jumps straight to it whenever nothing is ready to run. Everything that waits on
the loop clock (``asyncio.sleep``, aiolimiter's wake-up timers, the budget's pauses) then runs
in virtual time: a simulated hour costs milliseconds, and the times recorded are exact.
"""

from __future__ import annotations

import asyncio
import math
import random
import selectors
import sqlite3
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from aiolimiter import AsyncLimiter

from relay.core.budget import (
    MAX_PAUSE,
    MIN_WAIT,
    SAFETY,
    Charge,
    bucket_params,
    bucket_spend,
    default_burst,
)
from relay.ingest.budget import KeyBudget
from relay.store.sqlite import ledger, sql

T = TypeVar("T")


TICK = 1e-6  # virtual seconds each loop iteration takes


class _VirtualClockSelector(selectors.DefaultSelector):
    """Never blocks: a wait for ``timeout`` seconds with nothing to do advances the clock.

    Every loop iteration also costs one :data:`TICK`, as it does on a real clock. Without it,
    aiolimiter can spin forever: float rounding may leave a waiter a hair short of capacity, it
    re-arms its timer for "now", and a clock that never moves by itself never gets there.
    """

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        self.now += TICK
        if not ready:
            if timeout is None:
                raise RuntimeError("deadlock: every task waits and no timer is set")
            self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualClockSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return float(self._virtual.now)

    def live_timers(self) -> int:
        """Timers still armed (peeks at the loop internals; this is our own test loop)."""
        return sum(not handle.cancelled() for handle in self._scheduled)  # type: ignore[attr-defined]


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def most_in_any_window(times: list[float], per: float) -> int:
    """The largest number of admissions inside any closed window ``[t, t + per]``."""
    ordered = sorted(times)
    # A busiest window can always be slid right until it starts at an admission.
    return max((bisect_right(ordered, t + per) - i for i, t in enumerate(ordered)), default=0)


async def hammer(acquire: Callable[[], Awaitable[None]], requests: int, per: float) -> list[float]:
    """Admission times of greedy and sporadic tasks issuing 5x ``requests`` acquisitions.

    Phase one starts on an empty bucket (the burst case), then everyone goes quiet for two
    windows so the bucket drains completely, and phase two bursts again on top of a mix of
    greedy tasks and tasks that pause for random moments between requests.
    """
    loop = asyncio.get_running_loop()
    times: list[float] = []
    rng = random.Random(requests)

    async def worker(target: int, sporadic: bool) -> None:
        while len(times) < target:
            await acquire()
            times.append(loop.time())
            if sporadic:
                await asyncio.sleep(rng.random() * per / max(requests, 1))

    async def phase(target: int) -> None:
        async with asyncio.TaskGroup() as group:
            for i in range(6):
                group.create_task(worker(target, sporadic=i >= 4))

    await phase(2 * requests)
    await asyncio.sleep(2 * per)
    await phase(5 * requests)
    return times


BUDGETS = [(20, 10.0), (900, 900.0), (1000, 900.0), (1, 5.0), (3, 1.0), (50, 0.5)]


@pytest.mark.parametrize(("requests", "per"), BUDGETS)
def test_key_budget_never_exceeds_any_window(requests: int, per: float) -> None:
    async def main() -> list[float]:
        return await hammer(KeyBudget(requests, per).acquire, requests, per)

    times = run_virtual(main)
    assert len(times) >= 5 * requests
    busiest = most_in_any_window(times, per)
    assert busiest <= requests
    # The slack holds too: even windows a little longer than `per` (requests that reach the
    # upstream more unevenly than they left) see no more than `requests`.
    assert most_in_any_window(times, per * (1 + SAFETY / 2)) <= requests
    # And the budget is really used, not squandered by an over-cautious bucket.
    assert busiest >= math.floor(0.98 * requests)


@pytest.mark.parametrize(("requests", "per"), BUDGETS)
def test_naive_limiter_does_exceed_the_budget(requests: int, per: float) -> None:
    # The same harness and checks against AsyncLimiter(requests, per) catch the double burst,
    # so the test above can fail.
    async def main() -> list[float]:
        return await hammer(AsyncLimiter(requests, per).acquire, requests, per)

    times = run_virtual(main)
    assert most_in_any_window(times, per * (1 + SAFETY / 2)) > requests
    if requests > 1:
        # (With requests=1 the naive second request lands exactly on the window's edge, which
        # a clock that moves while the loop runs puts a hair outside.)
        assert most_in_any_window(times, per) > requests


@pytest.mark.parametrize(
    ("requests", "expected"),
    [(1, 1), (19, 1), (20, 1), (40, 2), (199, 9), (200, 10), (1000, 10), (100_000, 10)],
)
def test_default_burst(requests: int, expected: int) -> None:
    assert default_burst(requests) == expected


@pytest.mark.parametrize(
    ("requests", "per", "burst", "capacity", "period"),
    [
        # period = burst / rate, rate = (requests + 1 - burst) / (per * 1.01)
        (1, 5.0, 1, 1.0, 5.05),
        (20, 10.0, 1, 1.0, 0.505),
        (1000, 900.0, 10, 10.0, 10 * 909 / 991),
        (900, 900.0, 10, 10.0, 10 * 909 / 891),
        (100, 60.0, 5, 5.0, 5 * 60.6 / 96),
        (10, 1.0, 10, 10.0, 10.1),  # all burst: ten at once, then one per window
    ],
)
def test_bucket_params(
    requests: int, per: float, burst: int, capacity: float, period: float
) -> None:
    got_capacity, got_period = bucket_params(requests, per, burst)
    assert got_capacity == capacity
    assert got_period == pytest.approx(period, rel=1e-12)


@pytest.mark.parametrize(
    ("requests", "per"),
    [(1, 0.001), (1, 5.0), (2, 1.0), (20, 10.0), (1000, 900.0), (10**6, 86400.0), (7, 1e6)],
)
def test_bucket_params_bound_holds_with_room_to_spare(requests: int, per: float) -> None:
    for burst in {1, default_burst(requests), requests}:
        capacity, period = bucket_params(requests, per, burst)
        worst = capacity + capacity / period * per  # b + r * per: the proven bound on a window
        assert worst < requests + 1 - 1e-3  # so at most `requests` admissions, with slack
        assert worst >= 0.98 * requests  # and hardly anything given away


@pytest.mark.parametrize(
    ("requests", "per", "burst"),
    [
        (0, 10.0, 1),
        (10, 0.0, 1),
        (10, -1.0, 1),
        (10, float("nan"), 1),
        (10, 10.0, 0),
        (10, 10.0, 11),
    ],
)
def test_bucket_params_rejects(requests: int, per: float, burst: int) -> None:
    with pytest.raises(ValueError):
        bucket_params(requests, per, burst)


def test_pause_blocks_every_acquirer_until_it_ends() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        budget = KeyBudget(20, 10.0)
        start = loop.time()
        assert budget.paused_for() == 0.0
        budget.pause(30)
        budget.pause(5)  # a shorter pause never shortens the running one
        assert budget.paused_for() == pytest.approx(30.0)
        admitted: list[float] = []

        async def one() -> None:
            await budget.acquire()
            admitted.append(loop.time() - start)

        async with asyncio.TaskGroup() as group:
            for _ in range(3):
                group.create_task(one())
            await asyncio.sleep(12)
            assert admitted == [] and budget.waiting == 3
            assert budget.paused_for() == pytest.approx(18.0, abs=1e-3)
            budget.pause(20)  # extended while they wait: now until t=32
        assert min(admitted) >= 32.0
        assert admitted[0] == pytest.approx(32.0, abs=1e-3)
        assert budget.paused_for() == 0.0 and budget.waiting == 0

    run_virtual(main)


def test_pause_that_starts_while_queued_in_the_bucket() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        budget = KeyBudget(1, 5.0)  # one request per 5.05 s
        start = loop.time()
        await budget.acquire()
        waiter = asyncio.create_task(budget.acquire())  # bucket slot due at t=5.05
        await asyncio.sleep(1)
        budget.pause(20)  # 429 elsewhere on the key: nothing until t=21
        await waiter
        assert loop.time() - start == pytest.approx(21.0, abs=1e-3)
        # The token taken at t=5.05 during the pause was forfeited, not smuggled past the
        # pause: the next request still waits a full interval after t=21.
        await budget.acquire()
        assert loop.time() - start == pytest.approx(26.05, abs=1e-3)

    run_virtual(main)


@pytest.mark.parametrize(
    ("seconds", "paused"),
    [(0.0, 0.0), (-5.0, 0.0), (float("nan"), 0.0), (1e9, MAX_PAUSE), (float("inf"), MAX_PAUSE)],
)
def test_pause_sanitises_its_argument(seconds: float, paused: float) -> None:
    async def main() -> float:
        budget = KeyBudget(20, 10.0)
        budget.pause(seconds)
        return budget.paused_for()

    assert run_virtual(main) == pytest.approx(paused)


def test_cancelled_waiters_leave_nothing_behind() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualTimeLoop)
        budget = KeyBudget(1, 5.0)
        start = loop.time()
        await budget.acquire()

        # Cancelled while queued in the bucket: its slot passes to the next in line.
        first = asyncio.create_task(budget.acquire())  # due at t=5.05
        second = asyncio.create_task(budget.acquire())  # due at t=10.1
        await asyncio.sleep(1)
        first.cancel()
        await second
        assert loop.time() - start == pytest.approx(5.05, abs=1e-3)
        assert first.cancelled()

        # Cancelled while sleeping out a pause.
        budget.pause(100)
        sleepers = [asyncio.create_task(budget.acquire()) for _ in range(3)]
        await asyncio.sleep(1)
        assert budget.waiting == 3
        for task in sleepers:
            task.cancel()
        await asyncio.gather(*sleepers, return_exceptions=True)
        assert budget.waiting == 0
        await asyncio.sleep(0)  # let the limiter's done-callbacks run
        assert loop.live_timers() == 0

        # Cancelled while queued, with nobody after it: the bucket is not charged for it.
        await asyncio.sleep(budget.paused_for())
        await budget.acquire()
        admitted_at = loop.time()
        orphan = asyncio.create_task(budget.acquire())
        await asyncio.sleep(1)
        orphan.cancel()
        await asyncio.gather(orphan, return_exceptions=True)
        await asyncio.sleep(0)
        assert budget.waiting == 0 and loop.live_timers() == 0
        await budget.acquire()
        assert loop.time() == pytest.approx(admitted_at + 5.05, abs=1e-3)

    run_virtual(main)


@pytest.mark.parametrize(
    ("level", "at", "now", "expected"),
    [
        (0.0, 0.0, 0.0, (1.0, 0.0, 0.0)),  # empty: admitted
        (2.0, 0.0, 0.0, (3.0, 0.0, 0.0)),  # fills up to capacity exactly
        (3.0, 0.0, 0.0, (3.0, 0.0, 2.0)),  # full: wait for one unit to drain at 0.5/s
        (3.0, 0.0, 1.0, (2.5, 1.0, 1.0)),  # half a unit drained: half the wait left
        (3.0, 0.0, 2.0, (3.0, 2.0, 0.0)),  # one unit drained: admitted
        (3.0, 10.0, 5.0, (3.0, 10.0, 2.0)),  # a clock behind drains nothing
        (1.0, 0.0, 1e9, (1.0, 1e9, 0.0)),  # long idle: never below empty
        (3.0, 0.0, 2.0 - 1e-12, (2.0, 2.0 - 1e-12, MIN_WAIT)),  # a sliver still moves the clock
    ],
)
def test_bucket_spend(
    level: float, at: float, now: float, expected: tuple[float, float, float]
) -> None:
    assert bucket_spend(level, at, now, capacity=3.0, rate=0.5) == pytest.approx(expected)


# -- the durable window: restarts ------------------------------------------------------------


class LedgerOnly:
    """Just the store's ``spend_budget``: the real SQLite bucket, on an in-memory database and
    on the loop's thread, so that it runs in virtual time."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self.conn.executescript(sql.SCHEMA_V3)  # the budget's table, nothing else

    async def spend_budget(
        self, key_id: str, now: float, requests: int, per: float, burst: int | None = None
    ) -> float:
        return ledger.spend_budget(self.conn, key_id, now, requests, per, burst)

    async def spend_budgets(self, charges: list[Charge]) -> list[float]:
        return ledger.spend_budgets(self.conn, charges)


def restarts(durable: bool, requests: int = 6, per: float = 10.0) -> list[float]:
    """Admission times of a process restarted 12 times, each taking 1 to 3 requests greedily
    from a fresh KeyBudget (a fresh, full bucket) before it dies."""
    store = LedgerOnly()

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        rng, times = random.Random(3), []
        for _ in range(12):
            budget = KeyBudget(
                requests,
                per,
                store=store if durable else None,  # type: ignore[arg-type]
                key_id="k",
                clock=loop.time,
            )
            for _ in range(rng.randint(1, 3)):
                await budget.acquire()
                times.append(loop.time())
            await asyncio.sleep(rng.random())  # the restart itself
        return times

    return run_virtual(main)


def test_a_restarted_budget_starts_from_what_its_predecessors_spent() -> None:
    # Without the durable bucket each fresh one spends at once: far over the budget.
    assert most_in_any_window(restarts(durable=False), 10.0) > 6
    times = restarts(durable=True)
    assert most_in_any_window(times, 10.0) <= 6
    # Windows a little longer than `per` hold too: the upstream sees requests a little
    # unevenly after they were paid for.
    assert most_in_any_window(times, 10.0 * (1 + SAFETY / 2)) <= 6
    assert most_in_any_window(times, 10.0) == 6, "and the budget is used"
