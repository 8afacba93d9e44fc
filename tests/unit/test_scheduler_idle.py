"""Idle subscribers cost nothing (issue 8 #12): no task, no timer and no store call per
subscriber while nothing is due, however long the relay runs.

Measured by counting the store calls of the real dispatchers and scheduler on a real SQLite
state file, over a virtual hour: a loop clock that jumps to the next timer when nothing is
ready, so an hour costs milliseconds and the count is exact. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import selectors
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from relay.core.models import Delivery
from relay.delivery.claimer import SubscriberDispatcher
from relay.delivery.results import ResultWriter
from relay.delivery.scheduler import DeliveryScheduler
from relay.delivery.sender import Sender
from relay.http1.client import Http1Client
from relay.store.sqlite.store import SqliteStore
from tests.helpers import Sub, make_settings, new_secret

T = TypeVar("T")
SUBSCRIBERS = 2000
HOUR = 3600.0


class _VirtualClockSelector(selectors.DefaultSelector):
    """Jumps the clock to the next timer when nothing is ready; blocks for real only when no
    timer is set (the store's worker thread is then the only thing that can wake the loop)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        self.now += 1e-6
        if not ready:
            if timeout is None:
                return super().select(None)
            self.now += timeout
        return ready


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._virtual = _VirtualClockSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return float(self._virtual.now)


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


class CountingStore(SqliteStore):
    """The real store, counting the calls a dispatcher or the scheduler makes."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.calls: Counter[str] = Counter()

    async def claim(self, subscriber: str, limit: int, now: float, lease: float) -> list[Delivery]:
        self.calls["claim"] += 1
        return await super().claim(subscriber, limit, now, lease)

    async def claim_head(self, subscriber: str, now: float, lease: float) -> Delivery | None:
        self.calls["claim_head"] += 1
        return await super().claim_head(subscriber, now, lease)

    async def next_due(self, subscriber: str) -> float | None:
        self.calls["next_due"] += 1
        return await super().next_due(subscriber)

    async def head_due(self, subscriber: str) -> float | None:
        self.calls["head_due"] += 1
        return await super().head_due(subscriber)

    async def due_times(self) -> dict[str, float]:
        self.calls["due_times"] += 1
        return await super().due_times()


def test_idle_subscribers_make_no_periodic_store_calls(tmp_path: Path) -> None:
    subs = [Sub(f"s{i}", f"http://127.0.0.1:9/s{i}", new_secret()) for i in range(SUBSCRIBERS)]
    # Every other one in fifo order: head mode must be just as quiet.
    for sub in subs[::2]:
        sub.extra = {"ordering": "fifo"}
    settings = make_settings(tmp_path, "http://127.0.0.1:9", subs)

    async def main() -> tuple[Counter[str], Counter[str], Counter[str], int, int]:
        store = CountingStore(str(tmp_path / "state.db"))
        await store.open()
        client = Http1Client()
        results = ResultWriter(store)
        dispatchers = {
            s.name: SubscriberDispatcher(
                s, settings.delivery, store, Sender(client, s, 1024), results
            )
            for s in settings.subscribers
        }
        scheduler = DeliveryScheduler(dispatchers, store, grace=1.0)
        stop = asyncio.Event()
        task = asyncio.ensure_future(scheduler.run(stop))
        try:
            await scheduler.primed.wait()
            for _ in range(10):
                await asyncio.sleep(0)  # let the loop settle into its wait
            started = Counter(store.calls)
            tasks_idle = len(asyncio.all_tasks())
            await asyncio.sleep(HOUR)
            after_hour = Counter(store.calls)
            # An event still works, and costs one subscriber's look, not everyone's.
            scheduler.wake("s1")
            scheduler.wake("s2")
            while scheduler.wakeups < 2 or any(d.active for d in dispatchers.values()):
                await asyncio.sleep(0.01)
            await asyncio.sleep(HOUR)
            after_wake = Counter(store.calls)
        finally:
            stop.set()
            await task
            client.close()
            await store.close()
        return started, after_hour, after_wake, tasks_idle, scheduler.wakeups

    started, after_hour, after_wake, tasks_idle, wakeups = run_virtual(main)
    # Start-up: one query for every subscriber's due time, none per subscriber.
    assert started == Counter({"due_times": 1})
    assert after_hour == started  # a virtual hour idle: not one store call
    # This test, the scheduler, and its two event waiters: none per subscriber.
    assert tasks_idle <= 4
    # s1 (parallel) claims once and asks when next due; s2 (fifo) looks at its head once.
    assert wakeups == 2
    assert after_wake - after_hour == Counter(
        {"claim": 1, "next_due": 1, "claim_head": 1, "head_due": 1}
    )
