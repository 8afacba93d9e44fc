"""Per-subscriber delivery: claim due deliveries in batches, POST them with bounded
concurrency at the subscriber's pace, and hand every result to one batching writer.

A dispatcher has no task of its own while its subscriber is idle. The
:class:`~relay.delivery.scheduler.DeliveryScheduler` starts :meth:`SubscriberDispatcher.run`
when there is something to look at (new work, a due retry, a pause or probe coming due, a
replay or re-enable); it claims while deliveries are due, starts up to ``max_in_flight``
workers that send from the claimed buffer and end when it is empty, tells the scheduler when
it next has something due, and returns. So idle cost does not grow with the subscriber count.

Only a small claimed buffer (:func:`buffer_size`) is ever in memory. Three things narrow what
is sent (see :mod:`relay.core.breaker` and :mod:`relay.delivery.pacing`):

* a rate limit: POSTs pass a limiter just before they leave, and the buffer holds only what
  the limit lets out within the lease;
* a 429 pause: the buffer is handed back to the store untouched (no attempt spent) and
  nothing is sent until the pause ends;
* head mode (``ordering: fifo``, or an open circuit): only the oldest delivery, one at a time,
  its result written before the next head is chosen.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from relay.config.schema import DeliverySettings, SubscriberSettings
from relay.core.aio import wait_any
from relay.core.breaker import Change
from relay.core.errors import LocalResourceError, RenderError, StoreError
from relay.core.models import Delivery, Finished, Outcome
from relay.core.retry import Verdict, classify
from relay.core.status import RuntimeSubscriber
from relay.delivery.breaker import SubscriberBreaker
from relay.delivery.handoff import MIN_BUFFER, Waker, buffer_size
from relay.delivery.outcome import decide, log_attempt
from relay.delivery.pacing import Pace
from relay.delivery.results import ResultWriter
from relay.delivery.sender import AttemptOutcome, Sender
from relay.store.base import Store

log = logging.getLogger(__name__)

__all__ = ["MIN_BUFFER", "SubscriberDispatcher", "Waker", "buffer_size"]

STORE_RETRY = 1.0
RESULT_LAG = 0.05  # how long a just-finished result may sit in the write batch
LOCAL_BACKOFF = 1.0  # a worker that hit a local resource error (EMFILE) rests this long


@dataclass(frozen=True, slots=True)
class _End:
    """This run is over; look again at ``when`` (None: only when woken)."""

    when: float | None


# What one claim step says next: claim again at once, wait for room or a wake-up, or end.
_Step = Literal["again", "wait"] | _End


class SubscriberDispatcher:
    """Delivers one subscriber's queue, started on demand by the scheduler."""

    def __init__(
        self,
        subscriber: SubscriberSettings,
        delivery: DeliverySettings,
        store: Store,
        sender: Sender,
        results: ResultWriter,
        clock: Callable[[], float] = time.time,
        lease: float | None = None,
    ) -> None:
        self.sub = subscriber
        self.name = subscriber.name
        self._store = store
        self._sender = sender
        self._results = results
        self._clock = clock
        limit = subscriber.pace()
        # Charged in the store too (keyed by name, never the URL): the limit then holds across
        # restarts and instances.
        key = f"subscriber:{subscriber.name}"
        self.pace = Pace(limit, store, key, clock) if limit is not None else None
        self.breaker = SubscriberBreaker(self.name, subscriber.circuit.policy(), store)
        self.fifo = subscriber.ordering == "fifo"
        capacity = buffer_size(subscriber.max_in_flight, delivery.batch_size)
        if self.pace is not None:
            capacity = min(capacity, self.pace.holdable())
        self._capacity = capacity
        self._batch = min(delivery.batch_size, capacity)
        # A claimed delivery may wait behind one full buffer, sent max_in_flight at a time, and
        # behind the rate limit, before its own POST; the lease must outlive that wait, or the
        # claimer would take it again.
        rounds = -(-capacity // subscriber.max_in_flight) + 1
        self._lease = subscriber.timeout * rounds + delivery.lease_margin
        if self.pace is not None:
            self._lease += self.pace.drain_time(capacity)
        if lease is not None:
            # A shared store: short leases, renewed while held (see held_claims and forget).
            self._lease = lease
        self._ready: deque[Delivery] = deque()  # claimed, waiting for a worker
        # Claimed and not yet finished (queued or in flight), by id, as claimed (with the token).
        self._held: dict[int, Delivery] = {}
        # The rendered bodies of queued deliveries (formats other than envelope), by id: made
        # for a whole claim in one loop as it arrives (see Sender.shape), taken by the attempt.
        # Always a subset of _held, so it is bounded by the buffer.
        self._bodies: dict[int, bytes | RenderError] = {}
        self._shapes = sender.shapes
        self._head: int | None = None  # in head mode, the one delivery that may be sent
        self._workers = 0
        self._closed = False
        self._waker: Waker | None = None
        self.active = False  # run() is going
        self.wake = asyncio.Event()  # something may have changed: look again
        self._space = asyncio.Event()  # a held delivery finished
        self.disabled = False
        self._soonest: float | None = None  # earliest retry we scheduled and may not see yet
        self._settling = False  # a closed circuit's requeue is still under way
        self.stats = RuntimeSubscriber()  # what the operator surfaces show

    # -- scheduling ---------------------------------------------------------------------------

    def attach(self, waker: Waker) -> None:
        """Called once by the scheduler that owns this dispatcher's tasks."""
        self._waker = waker

    def activate(self) -> None:
        """Look at the store now: start :meth:`run`, or nudge it if it is going."""
        if self._closed:
            return
        if self.active:
            self.wake.set()
            return
        assert self._waker is not None, "attach() the dispatcher to a scheduler first"
        self.active = True
        self.wake.clear()
        self._waker.spawn(f"claim:{self.name}", self.run())

    @property
    def head_mode(self) -> bool:
        """True while only the oldest delivery may be sent (fifo, or an open circuit)."""
        return self.fifo or self.breaker.circuit.is_open

    async def run(self) -> None:
        """Claim and hand out while anything is due; then say when to look next, and end."""
        try:
            when = await self._claim_while_due()
        finally:
            self.active = False  # no await between the last look at `wake` and here
        if when is not None and self._waker is not None:
            self._waker.at(self.name, when)

    async def _claim_while_due(self) -> float | None:
        while not self._closed:
            self.wake.clear()
            now = self._clock()
            circuit = self.breaker.circuit
            if circuit.paused(now) or self.disabled or (self.head_mode and self._head is None):
                # Nothing in the buffer may go out now: it waits in the store, attempts unspent.
                await self._give_back_ready()
            if circuit.paused(now):
                return circuit.paused_until
            if self._settling:
                # The circuit just closed: the retries it held back get their place in the
                # queue back first, or this claim would take the newer deliveries before them.
                # (Its end nudges us; only `wake` can say so, `space` may be set already.)
                await wait_any([self.wake], timeout=None)
                continue
            try:
                step = await (self._claim_head(now) if self.head_mode else self._claim_batch(now))
            except StoreError as exc:
                log.error("cannot claim deliveries: %s", exc, extra={"subscriber": self.name})
                return self._clock() + STORE_RETRY
            if step == "again" or self.wake.is_set():
                continue
            if step == "wait":
                await wait_any([self.wake, self._space], timeout=None)
                continue
            return step.when
        return None

    async def _claim_batch(self, now: float) -> _Step:
        room = self._capacity - len(self._held)
        if room * 2 < self._capacity:
            self._space.clear()
            return "wait"  # buffer still at least half full: wait for the workers
        want = min(room, self._batch)
        claimed = await self._store.claim(self.name, want, now, self._lease)
        self._take(claimed)
        if claimed and len(claimed) == want:
            return "again"  # more may be due right now
        return _End(await self._next_look())

    async def _claim_head(self, now: float) -> _Step:
        if self._held:
            self._space.clear()
            return "wait"  # the one delivery allowed out is still out
        claimed = await self._store.claim_head(self.name, now, self._lease)
        if claimed is not None:
            self._head = claimed.id
            self._take([claimed])
            return "wait"
        return _End(self._next_due(await self._store.head_due(self.name)))

    async def _next_look(self) -> float | None:
        try:
            due = await self._store.next_due(self.name)
        except StoreError:
            return self._clock() + STORE_RETRY
        return self._next_due(due)

    def _next_due(self, due: float | None) -> float | None:
        now = self._clock()
        if self._soonest is not None:
            if self._soonest > now:
                return self._soonest if due is None else min(due, self._soonest)
            if self._soonest > now - 1.0:
                # A retry is due but its result may still be in the write batch: look again
                # shortly rather than trusting the store's stale view. Once, not periodically.
                return now + RESULT_LAG
            self._soonest = None
        return due

    def _take(self, claimed: list[Delivery]) -> None:
        if claimed and self._soonest is not None and self._soonest <= self._clock():
            self._soonest = None
        if claimed and self.disabled:
            # The store hands out work only to enabled subscribers: an operator re-enabled it,
            # which also reset the saved circuit.
            self.disabled = False
            self.breaker.reset()
        for d in claimed:
            self._hold(d)
        self._start_workers()

    def _hold(self, d: Delivery) -> None:
        old = self._held.get(d.id)
        if old is not None and old.token == d.token:
            return  # single owner (no tokens): the claim we hold, renewed
        self._held[d.id] = d
        if old is not None and old in self._ready:
            # Our own lease on it ran out and we claimed it again: only the new token counts.
            self._ready[self._ready.index(old)] = d
        else:
            # New, or in flight under the old token (whose result will not apply): send it
            # (again: the same webhook-id, at-least-once).
            self._ready.append(d)
        if self._shapes and d.id not in self._bodies:
            # Rendered now, with the rest of this claim (_take's loop), not between network
            # callbacks: the same bytes (rendering is deterministic), at a fraction of the CPU.
            self._bodies[d.id] = self._sender.shape(d)

    def _start_workers(self) -> None:
        limit = 1 if self.head_mode else self.sub.max_in_flight
        assert self._waker is not None
        while self._workers < limit and self._workers < len(self._ready) and not self._closed:
            self._workers += 1
            self._waker.spawn(f"send:{self.name}", self._work())

    async def _give_back_ready(self) -> None:
        if not self._ready:
            return
        claims = list(self._ready)
        self._ready.clear()
        try:
            await self._store.release_claims(claims)
        except StoreError as exc:
            # Still leased in the store: their lease expiry makes them due again.
            log.warning("cannot release deliveries: %s", exc, extra={"subscriber": self.name})
        finally:
            for d in claims:
                self._drop(d)
            self._space.set()

    async def _give_back(self, delivery: Delivery) -> None:
        """Hand one claimed delivery back untouched: no attempt was made."""
        try:
            await self._store.release_claims([delivery])
        except StoreError as exc:
            # Still leased in the store: its lease expiry makes it due again.
            log.warning("cannot release a delivery: %s", exc, extra={"subscriber": self.name})
        finally:
            self._drop(delivery)
            if delivery.id == self._head:
                self._head = None
            self._space.set()

    def close(self) -> None:
        """Stop claiming and handing out work: busy workers finish the delivery in hand."""
        self._closed = True
        self.wake.set()
        self._space.set()

    def unfinished(self) -> list[int]:
        """Ids claimed but not finished: released at shutdown so they go out after restart."""
        return sorted(self._held)

    def held_claims(self) -> list[Delivery]:
        """The claims held (queued or in flight), with their tokens: renewed while held on a
        shared store, and released (fenced) at shutdown."""
        return list(self._held.values())

    def forget(self, lost: list[Delivery]) -> None:
        """Drop claims the store says are no longer ours (their lease ran out and another
        instance took them, or this one was declared dead): the queued ones are not sent; an
        attempt in flight finishes, and its fenced result only adds to the attempt log."""
        gone = {(d.id, d.token) for d in lost}
        for d in lost:
            self._drop(d)
            if d.id == self._head:
                self._head = None
        if gone:
            self._ready = deque(d for d in self._ready if (d.id, d.token) not in gone)
            self._space.set()

    def _drop(self, delivery: Delivery) -> None:
        # Only this claim: the same id claimed again since (a new token) stays held.
        if self._held.get(delivery.id) is delivery:
            del self._held[delivery.id]
            self._bodies.pop(delivery.id, None)

    # -- workers ------------------------------------------------------------------------------

    def _may_send(self, delivery: Delivery) -> bool:
        if self._closed or self.disabled or self.breaker.circuit.paused(self._clock()):
            return False
        return not self.head_mode or delivery.id == self._head

    async def _work(self) -> None:
        """Send from the buffer until it is empty, then end."""
        try:
            while self._ready and not self._closed:
                delivery = self._ready.popleft()
                if self._may_send(delivery) and self.pace is not None:
                    await self.pace.acquire()
                if not self._may_send(delivery):
                    # Paused, disabled or gated while it waited: back to the buffer, which the
                    # claimer hands back to the store.
                    self._ready.appendleft(delivery)
                    self._nudge()
                    return
                await self._deliver(delivery)
        finally:
            self._workers -= 1

    def _nudge(self) -> None:
        if self._waker is not None and not self._closed:
            self._waker.wake(self.name)

    async def _deliver(self, delivery: Delivery) -> None:
        head = self.head_mode
        try:
            outcome = await self._sender.send(delivery, shaped=self._bodies.pop(delivery.id, None))
        except LocalResourceError as exc:
            # This process is out of descriptors: not the receiver's fault, so no attempt is
            # recorded; the delivery goes back to the queue and this worker rests a moment.
            log.warning(
                "no attempt made, delivery released: %s",
                exc,
                extra={"subscriber": self.name, "account": delivery.account, "rid": delivery.rid},
            )
            self.stats.record("local_error", None, str(exc), self._clock())
            await self._give_back(delivery)
            await asyncio.sleep(LOCAL_BACKOFF)
            self._nudge()  # claim it again
            return
        try:
            finished, change = self._decide(delivery, outcome)  # fenced with the claim's token
            if finished.outcome is Outcome.GONE or head:
                await self._finish_now(finished)
            elif finished.outcome is Outcome.RETRY:
                self._results.put(finished, wake=self.name)  # look again once it is written
            else:
                self._results.put(finished)
        except asyncio.CancelledError:
            raise  # stays held: released at shutdown, due again after restart
        except BaseException:
            # A bug, not a receiver fault: forget the claim so its lease expiry brings it back.
            self._drop(delivery)
            raise
        self._drop(delivery)
        if delivery.id == self._head:
            self._head = None
        self._space.set()
        attempt = outcome.attempt
        self.stats.record(
            finished.outcome.value, attempt.latency_ms / 1000.0, attempt.error, attempt.at
        )
        log_attempt(self.name, delivery, outcome, finished)
        await self._after(change, outcome)

    async def _after(self, change: Change, outcome: AttemptOutcome) -> None:
        """Save and react to a breaker change (never on the happy path: NONE)."""
        if change is Change.NONE:
            return
        now = outcome.attempt.at
        await self.breaker.record(change, now, outcome.attempt.error)
        if change is Change.DISABLE:
            self.disabled = True
        if change is Change.CLOSED:
            try:
                await self._store.requeue_retries(self.name)
            except StoreError as exc:
                log.warning("cannot requeue retries: %s", exc, extra={"subscriber": self.name})
            finally:
                self._settling = False
        if change in (Change.OPENED, Change.CLOSED, Change.PAUSED, Change.DISABLE):
            self._nudge()  # the claimer hands back the buffer, or starts draining

    async def _finish_now(self, finished: Finished) -> None:
        # Written at once rather than with the batch. A GONE: the store disables the subscriber
        # in the same commit (see Store.finish); until it knows, the claimer would take back the
        # deliveries the workers hand back. Head mode: the next head is chosen by the store,
        # which must see this one's outcome first, or it would choose the one behind it.
        try:
            await self._store.finish([finished])
        except StoreError as exc:
            log.warning("cannot record a result yet: %s", exc, extra={"subscriber": self.name})
            self._results.put(finished, wake=self.name)

    def _decide(self, delivery: Delivery, outcome: AttemptOutcome) -> tuple[Finished, Change]:
        if outcome.permanent:  # the body cannot be rendered: no retry can help
            dead = Finished(delivery.id, outcome.attempt, Outcome.DEAD, token=delivery.token)
            return dead, Change.NONE
        verdict = classify(outcome.status, retry_on_4xx=self.sub.retry_on_4xx)
        at = outcome.attempt.at
        change = Change.NONE
        if verdict is Verdict.SUCCESS:
            change = self.breaker.success()
            self._settling = change is Change.CLOSED
        elif verdict is Verdict.GONE:
            self.disabled = True
        elif outcome.status == 429:
            asked = outcome.retry_after if outcome.retry_after is not None else self.sub.retry[0]
            # Counted from when the answer arrived (now), not from when the request left.
            change = self.breaker.pause(self._clock(), min(asked, self.sub.max_retry_after))
        elif verdict is Verdict.RETRY:
            change = self.breaker.failure(at)
        # A 429, or a failure while the circuit is open, never runs out of schedule: the
        # receiver is throttling or down, not rejecting this delivery.
        patient = outcome.status == 429 or self.breaker.circuit.is_open
        finished = decide(self.sub, delivery, outcome, verdict, patient, random.random())
        if finished.next_at is not None and (
            self._soonest is None or finished.next_at < self._soonest
        ):
            # Remember the earliest retry so the scheduler wakes us for it without polling.
            self._soonest = finished.next_at
            if self._waker is not None:
                self._waker.at(self.name, finished.next_at)
        return finished, change
