"""One scheduler for every subscriber: wakes a dispatcher on an event or at its next due time,
and owns the short-lived tasks dispatchers start while they have work.

Idle subscribers cost nothing here: there is no task and no timer per subscriber, only one
heap of due times (a retry, a pause ending, a probe, a lease running out) and one set of
subscribers woken by events (new deliveries committed by a poller, a replay or a re-enable).
The scheduler sleeps until the earliest due time or the next event, whichever comes first.

Shutdown (``stop``): every dispatcher stops claiming, workers finish the delivery in hand
within ``grace``, whatever is still in flight then is cancelled; the supervisor then flushes
results and releases what was claimed but not finished.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from relay.core.aio import wait_any
from relay.core.errors import StoreError
from relay.delivery.claimer import SubscriberDispatcher
from relay.store.base import Store

log = logging.getLogger(__name__)

RESTART_DELAY = 5.0  # a dispatcher task that crashed on a bug is looked at again this much later
PRIME_RETRY = 1.0  # the start-up look at the store failed: try again this much later


class DeliveryScheduler:
    """Runs the dispatchers of one relay on demand (see the module docstring)."""

    def __init__(
        self,
        dispatchers: dict[str, SubscriberDispatcher],
        store: Store,
        *,
        grace: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dispatchers = dispatchers
        self._store = store
        self._grace = grace
        self._clock = clock
        self._heap: list[tuple[float, str]] = []
        self._next: dict[str, float] = {}  # the earliest wake-up requested per subscriber
        self._woken: dict[str, None] = {}  # ordered set: subscribers to look at now
        self._event = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.wakeups = 0  # dispatcher runs started, for tests and status
        self.primed = asyncio.Event()  # saved state restored and due times known
        for d in dispatchers.values():
            d.attach(self)

    # -- the Waker interface ------------------------------------------------------------------

    def wake(self, subscriber: str) -> None:
        """Look at ``subscriber`` now (unknown names are ignored)."""
        if subscriber in self.dispatchers:
            self._woken[subscriber] = None
            self._event.set()

    def wake_all(self) -> None:
        """Look at every subscriber now."""
        for name in self.dispatchers:
            self._woken[name] = None
        self._event.set()

    def at(self, subscriber: str, when: float) -> None:
        """Look at ``subscriber`` at epoch time ``when``; an earlier request already made
        covers a later one (that run then says when to look next)."""
        current = self._next.get(subscriber)
        if current is not None and current <= when:
            return
        self._next[subscriber] = when
        if not self._heap or when < self._heap[0][0]:
            self._event.set()  # earlier than what the loop sleeps until
        heapq.heappush(self._heap, (when, subscriber))

    def add(self, dispatcher: SubscriberDispatcher) -> None:
        """Take on one more subscriber (at start, or when a reload adds one). Added while
        running, its saved circuit, pause and due time are read before it is woken."""
        self.dispatchers[dispatcher.name] = dispatcher
        dispatcher.attach(self)
        if self.primed.is_set() and self._tg is not None:
            self.spawn(f"prime:{dispatcher.name}", self._prime_one(dispatcher))

    async def remove(self, name: str) -> SubscriberDispatcher | None:
        """Stop one subscriber (a reload removed or changed it): no new claims, its busy
        workers finish the delivery in hand within the grace period, the rest are cancelled.
        Returns its dispatcher, whose unfinished claims the caller releases."""
        dispatcher = self.dispatchers.pop(name, None)
        if dispatcher is None:
            return None
        dispatcher.close()
        mine = [t for t in self._tasks if t.get_name().partition(":")[2] == name]
        await self._wait(mine)
        return dispatcher

    async def _prime_one(self, d: SubscriberDispatcher) -> None:
        circuits = await self._store.load_circuits()
        disabled = await self._store.disabled_subscribers()
        due = await self._store.due_times()
        if d.name in circuits:
            d.breaker.restore(circuits[d.name])
        d.disabled = d.name in disabled
        self.at(d.name, due.get(d.name, self._clock()))

    def spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run a dispatcher's coroutine as a task owned here."""
        if self._tg is None:
            coro.close()
            raise RuntimeError("the scheduler is not running")
        task = self._tg.create_task(self._guard(name, coro), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            subscriber = name.partition(":")[2]
            log.exception("task %s crashed; looking again in %.0fs", name, RESTART_DELAY)
            self.at(subscriber, self._clock() + RESTART_DELAY)

    # -- running ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Wake dispatchers until ``stop``; then drain them (see the module docstring)."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                await self._prime(stop)
                await self._loop(stop)
            finally:
                await self._drain()
                self._tg = None

    async def _prime(self, stop: asyncio.Event) -> None:
        """Restore saved circuits and pauses, and find what is due, in three queries."""
        while not stop.is_set():
            try:
                circuits = await self._store.load_circuits()
                disabled = await self._store.disabled_subscribers()
                due = await self._store.due_times()
            except StoreError as exc:
                log.error("cannot read delivery state (will retry): %s", exc)
                await wait_any([stop], timeout=PRIME_RETRY)
                continue
            for name, d in self.dispatchers.items():
                if name in circuits:
                    d.breaker.restore(circuits[name])
                d.disabled = name in disabled
                if name in due:
                    self.at(name, due[name])
            self.primed.set()
            return

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                when, name = heapq.heappop(self._heap)
                if self._next.get(name) == when:  # else superseded by an earlier request
                    del self._next[name]
                    self._woken[name] = None
            woken, self._woken = self._woken, {}
            self._event.clear()
            for name in woken:
                dispatcher = self.dispatchers.get(name)
                if dispatcher is None:
                    continue  # removed by a reload since it was woken
                self.wakeups += 1
                dispatcher.activate()
            timeout = None if not self._heap else max(0.0, self._heap[0][0] - self._clock())
            if self._woken:
                continue  # activations may wake others at once
            await wait_any([self._event, stop], timeout=timeout)

    async def _drain(self) -> None:
        for d in self.dispatchers.values():
            d.close()  # no new claims; idle workers end, busy ones after the delivery in hand
        await self._wait(set(self._tasks))

    async def _wait(self, tasks: Collection[asyncio.Task[None]]) -> None:
        """Let ``tasks`` finish within the grace period; cancel what is still busy then."""
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._grace)
        if late:
            log.warning(
                "%d delivery tasks still busy after %.0fs grace: cancelled, retried after restart",
                len(late),
                self._grace,
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
