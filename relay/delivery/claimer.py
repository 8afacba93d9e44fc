"""Per-subscriber delivery: claim due deliveries in batches, POST them with bounded
concurrency, and hand every result to one batching writer.

Each subscriber has its own claimer and its own ``max_in_flight`` workers, so a slow, failing or
dead subscriber only ever occupies its own workers. Pending deliveries live in the store; only a
small claimed buffer (:func:`buffer_size`) is ever in memory, so memory does not grow with the
backlog.

The hot path is per delivery: hand a claimed delivery to an idle worker, sign, POST, queue the
result. It avoids per-delivery tasks and waiters: an idle worker parks on one future that the
claimer resolves with its next delivery, and a busy worker takes the next one straight from the
buffer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable

from relay.config.schema import DeliverySettings, SubscriberSettings
from relay.core.aio import wait_any
from relay.core.errors import LocalResourceError, StoreError
from relay.core.models import Delivery, Finished, Outcome
from relay.core.retry import Verdict, classify, next_attempt_at
from relay.core.status import RuntimeSubscriber
from relay.delivery.results import ResultWriter
from relay.delivery.sender import AttemptOutcome, Sender
from relay.store.base import Store

log = logging.getLogger(__name__)

IDLE_RECHECK = 5.0  # even with nothing due, look at the store this often (replays, re-enables)
STORE_RETRY = 1.0
RESULT_LAG = 0.05  # how long a just-finished result may sit in the write batch
LOCAL_BACKOFF = 1.0  # a worker that hit a local resource error (EMFILE) rests this long
MIN_BUFFER = 128  # claimed deliveries a subscriber may hold; claims of half of it amortise well


def buffer_size(max_in_flight: int, batch_size: int) -> int:
    """How many claimed deliveries one subscriber may hold in memory (in flight or waiting).

    Twice ``max_in_flight`` keeps every worker busy while the next claim is on its way; at least
    :data:`MIN_BUFFER` (but no more than ``batch_size`` allows) makes each claim, one store round
    trip and one transaction, carry dozens of deliveries instead of a handful.
    """
    return max(2 * max_in_flight, min(MIN_BUFFER, 2 * batch_size))


class SubscriberDispatcher:
    """Delivers one subscriber's queue. The supervisor runs ``claim_loop`` and the workers."""

    def __init__(
        self,
        subscriber: SubscriberSettings,
        delivery: DeliverySettings,
        store: Store,
        sender: Sender,
        results: ResultWriter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sub = subscriber
        self.name = subscriber.name
        self._store = store
        self._sender = sender
        self._results = results
        self._clock = clock
        self._capacity = buffer_size(subscriber.max_in_flight, delivery.batch_size)
        self._batch = min(delivery.batch_size, self._capacity)
        # A claimed delivery may wait behind one full buffer, sent max_in_flight at a time, before
        # its own POST; the lease must outlive that wait, or the claimer would take it again.
        rounds = -(-self._capacity // subscriber.max_in_flight) + 1
        self._lease = subscriber.timeout * rounds + delivery.lease_margin
        self._ready: deque[Delivery] = deque()  # claimed, waiting for a worker
        self._idle: deque[asyncio.Future[Delivery | None]] = deque()  # parked workers
        self._closed = False
        self._held: set[int] = set()  # claimed and not yet finished (queued or in flight)
        self.wake = asyncio.Event()
        self._space = asyncio.Event()
        self.disabled = False
        self._soonest: float | None = None  # earliest retry we scheduled and may not see yet
        self.stats = RuntimeSubscriber()  # what the operator surfaces show

    async def claim_loop(self, stop: asyncio.Event) -> None:
        """Keep the local buffer topped up from the store until ``stop``."""
        while not stop.is_set():
            room = self._capacity - len(self._held)
            if room * 2 < self._capacity:
                # Buffer still at least half full: wait for workers to make room.
                self._space.clear()
                await wait_any([self._space, stop], timeout=IDLE_RECHECK)
                continue
            self.wake.clear()
            try:
                claimed = await self._store.claim(
                    self.name, min(room, self._batch), self._clock(), self._lease
                )
            except StoreError as exc:
                log.error("cannot claim deliveries: %s", exc, extra={"subscriber": self.name})
                await wait_any([stop], timeout=STORE_RETRY)
                continue
            if claimed and self._soonest is not None and self._soonest <= self._clock():
                self._soonest = None
            if claimed:
                self.disabled = False  # the store hands out work only to enabled subscribers
            for d in claimed:
                if d.id not in self._held:
                    self._held.add(d.id)
                    self._hand_out(d)
            if len(claimed) == min(room, self._batch) and claimed:
                continue  # more may be due right now
            await wait_any([self.wake, stop], timeout=await self._idle_timeout())

    async def _idle_timeout(self) -> float:
        now = self._clock()
        if self._soonest is not None:
            if self._soonest > now:
                return min(IDLE_RECHECK, self._soonest - now)
            if self._soonest > now - 1.0:
                # A retry is due but its result may still be in the write batch: look again
                # shortly rather than trusting the store's stale view.
                return RESULT_LAG
            self._soonest = None
        try:
            due = await self._store.next_due(self.name)
        except StoreError:
            return STORE_RETRY
        if due is None:
            return IDLE_RECHECK
        return max(0.0, min(IDLE_RECHECK, due - now))

    def _hand_out(self, delivery: Delivery) -> None:
        """Give a claimed delivery to a parked worker, or buffer it for the next free one."""
        while self._idle:
            parked = self._idle.popleft()
            if not parked.done():  # a cancelled worker leaves its future behind, done
                parked.set_result(delivery)
                return
        self._ready.append(delivery)

    def close(self) -> None:
        """Stop handing out work: parked workers return now, busy ones after their delivery."""
        self._closed = True
        while self._idle:
            parked = self._idle.popleft()
            if not parked.done():
                parked.set_result(None)

    async def worker(self, stop: asyncio.Event) -> None:
        """Send claimed deliveries one at a time until ``stop`` (the in-flight one finishes).

        The supervisor calls :meth:`close` once ``stop`` is set, which wakes parked workers.
        """
        loop = asyncio.get_running_loop()
        while not stop.is_set() and not self._closed:
            if self._ready:
                await self._deliver(self._ready.popleft())
                continue
            parked: asyncio.Future[Delivery | None] = loop.create_future()
            self._idle.append(parked)
            delivery = await parked
            if delivery is None:
                return  # closed: shutting down
            await self._deliver(delivery)

    async def _deliver(self, delivery: Delivery) -> None:
        if self.disabled:
            # 410 Gone arrived for an earlier delivery: do not send the rest of the buffer to a
            # receiver that is gone; hand it back so a re-enable finds it due at once.
            await self._give_back(delivery)
            return
        try:
            outcome = await self._sender.send(delivery)
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
            return
        try:
            finished = self._decide(delivery, outcome)
            if finished.outcome is Outcome.GONE:
                await self._finish_gone(finished)
            else:
                self._results.put(finished)
        except asyncio.CancelledError:
            raise  # stays held: released at shutdown, due again after restart
        except BaseException:
            # A bug, not a receiver fault: forget the claim so its lease expiry brings it back.
            self._held.discard(delivery.id)
            raise
        self._held.discard(delivery.id)
        self._space.set()
        attempt = outcome.attempt
        self.stats.record(
            finished.outcome.value, attempt.latency_ms / 1000.0, attempt.error, attempt.at
        )
        self._log(delivery, outcome, finished)

    async def _finish_gone(self, finished: Finished) -> None:
        # Written at once rather than with the batch: the store disables the subscriber in the
        # same commit (see Store.finish), and until it knows, the claimer would take back the
        # deliveries the workers hand back and send them to a receiver that is gone.
        try:
            await self._store.finish([finished])
        except StoreError as exc:
            log.warning("cannot record 410 Gone yet: %s", exc, extra={"subscriber": self.name})
            self._results.put(finished)

    async def _give_back(self, delivery: Delivery) -> None:
        try:
            await self._store.release([delivery.id])
        except StoreError as exc:
            # Still leased in the store: its lease expiry makes it due again.
            log.warning("cannot release a delivery: %s", exc, extra={"subscriber": self.name})
        finally:
            self._held.discard(delivery.id)
            self._space.set()

    def _decide(self, delivery: Delivery, outcome: AttemptOutcome) -> Finished:
        if outcome.permanent:  # the body cannot be rendered: no retry can help
            return Finished(delivery.id, outcome.attempt, Outcome.DEAD)
        attempts = delivery.attempts + 1
        verdict = classify(outcome.status, retry_on_4xx=self.sub.retry_on_4xx)
        if verdict is Verdict.SUCCESS:
            return Finished(delivery.id, outcome.attempt, Outcome.DELIVERED)
        if verdict is Verdict.GONE:
            self.disabled = True
            return Finished(delivery.id, outcome.attempt, Outcome.GONE)
        if verdict is Verdict.RETRY:
            next_at = next_attempt_at(
                self.sub.retry,
                attempts,
                outcome.attempt.at,
                jitter=random.random(),
                retry_after=outcome.retry_after,
                max_retry_after=self.sub.max_retry_after,
            )
            if next_at is not None:
                # Remember the earliest retry so the claimer wakes for it without polling.
                if self._soonest is None or next_at < self._soonest:
                    self._soonest = next_at
                    self.wake.set()
                return Finished(delivery.id, outcome.attempt, Outcome.RETRY, next_at)
        return Finished(delivery.id, outcome.attempt, Outcome.DEAD)

    def _log(self, delivery: Delivery, outcome: AttemptOutcome, finished: Finished) -> None:
        if finished.outcome is Outcome.DELIVERED and not log.isEnabledFor(logging.INFO):
            return  # the common case at WARNING: do not even build the fields
        fields = {
            "account": delivery.account,
            "rid": delivery.rid,
            "subscriber": self.name,
            "webhook_id": outcome.webhook_id,
            "attempt": delivery.attempts + 1,
            "status": outcome.status,
            "latency_ms": round(outcome.attempt.latency_ms, 1),
        }
        if finished.outcome is Outcome.DELIVERED:
            log.info("delivered", extra=fields)
            return
        fields["error"] = outcome.attempt.error
        if finished.outcome is Outcome.RETRY:
            assert finished.next_at is not None
            fields["next_in"] = f"{finished.next_at - outcome.attempt.at:.0f}s"
            log.warning("attempt failed, will retry", extra=fields)
        elif finished.outcome is Outcome.GONE:
            log.error("subscriber answered 410 Gone: disabled, deliveries kept", extra=fields)
        else:
            log.error("dead-lettered: retries exhausted or not retryable", extra=fields)

    def unfinished(self) -> list[int]:
        """Ids claimed but not finished: released at shutdown so they go out after restart."""
        return sorted(self._held)
