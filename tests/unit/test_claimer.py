"""The claimer/worker hand-off of :mod:`relay.delivery.claimer`, on a real SQLite store in a
temporary directory, with a scripted sender in place of HTTP.

What is pinned down here: workers (started on demand by the scheduler) send every claimed
delivery, never more than ``max_in_flight`` are in flight, the held buffer never exceeds
:func:`buffer_size`, leases cover every round a claimed delivery may wait, no worker waits
parked without work and ``close`` lets the busy one finish, a cancelled send stays held
(released at shutdown), and a 410 is written at once and hands the rest of the buffer back
unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from relay.config.schema import Settings
from relay.core.models import Attempt, CallRecord, Delivery, IngestBatch
from relay.core.signing import webhook_id
from relay.delivery.claimer import SubscriberDispatcher, buffer_size
from relay.delivery.results import ResultWriter
from relay.delivery.scheduler import DeliveryScheduler
from relay.delivery.sender import AttemptOutcome
from relay.store.sqlite.store import SqliteStore
from tests.helpers import Sub, make_settings, new_secret, sqlite_rows, wait_until_async

NAME = "crm"
GENEROUS = 300.0  # bounds for waits on bounded work: generous, never a speed check


@dataclass
class ScriptedSender:
    """Answers each POST with the next scripted status (200 once the script runs out).

    With ``hold`` set, every send waits for it, so a test can look at the dispatcher while
    deliveries are in flight. Counts concurrency and what it was asked to send.
    """

    script: list[int] = field(default_factory=list)
    hold: asyncio.Event | None = None
    sent: list[int] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    shapes: bool = False  # sends the stored body: nothing to render ahead

    async def send(self, delivery: Delivery, *, shaped: object = None) -> AttemptOutcome:
        assert shaped is None
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.started.set()
        try:
            if self.hold is not None:
                await self.hold.wait()
            status = self.script.pop(0) if self.script else 200
        finally:
            self.in_flight -= 1
        self.sent.append(delivery.rid)
        async with self.changed:
            self.changed.notify_all()
        error = None if 200 <= status < 300 else f"HTTP {status}"
        attempt = Attempt(at=time.time(), status=status, error=error, latency_ms=1.0, response="")
        msg_id = webhook_id(delivery.account, delivery.rid, NAME)
        return AttemptOutcome(attempt, status, None, msg_id)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(predicate), GENEROUS)


def settings_for(tmp_path: Path, **extra: object) -> Settings:
    sub = Sub(NAME, "http://127.0.0.1:9/hook", new_secret(), dict(extra))
    return make_settings(tmp_path, "http://127.0.0.1:9", [sub])


async def fill(store: SqliteStore, count: int) -> None:
    records = [CallRecord(rid, "2026-01-01 00:00:00", b'{"rid":%d}' % rid) for rid in range(count)]
    await store.ingest(IngestBatch("alpha", records, [NAME], 1_000.0, None))


@dataclass
class Rig:
    store: SqliteStore
    sender: ScriptedSender
    dispatcher: SubscriberDispatcher
    results: ResultWriter
    stop: asyncio.Event
    scheduler: DeliveryScheduler
    running: asyncio.Task[None]

    def workers(self) -> list[asyncio.Task[None]]:
        """The dispatcher's send tasks alive right now (started on demand)."""
        return [t for t in self.scheduler._tasks if t.get_name().startswith("send:")]


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, sender: ScriptedSender, records: int, **extra: object
) -> AsyncIterator[Rig]:
    settings = settings_for(tmp_path, **extra)
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    await fill(store, records)
    results = ResultWriter(store)
    sub = settings.subscribers[0]
    dispatcher = SubscriberDispatcher(sub, settings.delivery, store, sender, results)  # type: ignore[arg-type]
    scheduler = DeliveryScheduler({NAME: dispatcher}, store, grace=GENEROUS)
    results.on_written = scheduler.wake
    stop, writer_stop = asyncio.Event(), asyncio.Event()
    writer = asyncio.create_task(results.run(writer_stop))
    running = asyncio.create_task(scheduler.run(stop))
    try:
        yield Rig(store, sender, dispatcher, results, stop, scheduler, running)
    finally:
        stop.set()
        if sender.hold is not None:
            sender.hold.set()
        await asyncio.wait_for(asyncio.gather(running, return_exceptions=True), GENEROUS)
        writer_stop.set()
        await asyncio.wait_for(writer, GENEROUS)
        await store.close()


def states(tmp_path: Path) -> dict[str, int]:
    rows = sqlite_rows(tmp_path / "state.db", "SELECT state, COUNT(*) FROM deliveries GROUP BY 1")
    return {state: count for state, count in rows}


@pytest.mark.parametrize(("max_in_flight", "batch_size", "expected"), [
    (1, 256, 128),   # a claim carries dozens even for one worker
    (4, 256, 128),
    (16, 256, 256),  # more workers drain faster: each claim hands every worker eight
    (32, 256, 512),
    (100, 256, 512),  # ... up to twice the batch size
    (300, 256, 600),  # twice the workers, so every worker stays busy
    (4, 16, 32),     # a small batch_size caps the buffer
    (1, 1, 2),
])  # fmt: skip
def test_buffer_size(max_in_flight: int, batch_size: int, expected: int) -> None:
    assert buffer_size(max_in_flight, batch_size) == expected


async def test_every_delivery_goes_out_once_and_never_more_than_max_in_flight(tmp_path) -> None:
    sender = ScriptedSender()
    async with rig(tmp_path, sender, 300, max_in_flight=3) as r:
        await sender.wait_for(lambda: len(sender.sent) >= 300)
        await asyncio.wait_for(r.results.flush(), GENEROUS)
    assert sorted(sender.sent) == list(range(300))
    assert sender.most_in_flight <= 3
    assert states(tmp_path) == {"delivered": 300}


async def test_held_buffer_stays_within_its_size_while_workers_are_busy(tmp_path) -> None:
    sender = ScriptedSender(hold=asyncio.Event())
    async with rig(tmp_path, sender, 1_000, max_in_flight=2) as r:
        await asyncio.wait_for(sender.started.wait(), GENEROUS)
        capacity = buffer_size(2, 256)
        # The claimer fills the buffer and then parks on "space"; give it every chance to
        # over-claim by letting the loop run until the store shows no more claims coming.
        for _ in range(50):
            await asyncio.sleep(0)
        assert len(r.dispatcher.unfinished()) <= capacity
        # Every claim the dispatcher holds is held in the store (in its memory: nothing in the
        # file says so), and no other.
        counts = (await r.store.stats()).subscribers[NAME]
        assert counts.inflight == len(r.dispatcher.unfinished())
        assert states(tmp_path) == {"pending": 1_000}
        assert sender.in_flight == 2
        sender.hold.set()  # type: ignore[union-attr]
        await sender.wait_for(lambda: len(sender.sent) >= 1_000)
    assert sorted(sender.sent) == list(range(1_000))


async def test_lease_covers_every_round_a_claimed_delivery_may_wait(tmp_path) -> None:
    sender = ScriptedSender(hold=asyncio.Event())
    before = time.time()
    async with rig(tmp_path, sender, 10, max_in_flight=1, timeout="2s") as r:
        await asyncio.wait_for(sender.started.wait(), GENEROUS)
        after = time.time()
        # The store's own record of its claims (they live in its memory, on its thread).
        lease_until = await r.store._on_thread(r.store._held.soonest, NAME)
        assert lease_until is not None
        sender.hold.set()  # type: ignore[union-attr]
    # A claimed delivery can wait behind a full buffer sent one at a time: the lease must
    # outlive capacity + 1 timeouts plus the margin, or the claimer would take it back.
    needed = 2.0 * (buffer_size(1, 256) + 1) + settings_for(tmp_path).delivery.lease_margin
    assert before + needed <= lease_until <= after + needed


async def test_no_parked_workers_and_close_lets_the_busy_one_finish(tmp_path) -> None:
    sender = ScriptedSender(hold=asyncio.Event())
    async with rig(tmp_path, sender, 1, max_in_flight=3) as r:
        await asyncio.wait_for(sender.started.wait(), GENEROUS)
        assert len(r.workers()) == 1  # one delivery, one worker: none parked waiting for work
        r.stop.set()  # the scheduler closes the dispatcher and waits for the busy worker
        for _ in range(20):
            await asyncio.sleep(0)
        assert not r.running.done() and sender.in_flight == 1
        sender.hold.set()  # type: ignore[union-attr]
        await asyncio.wait_for(r.running, GENEROUS)
        assert sender.sent == [0]
        assert r.dispatcher.unfinished() == []
        assert r.workers() == []


async def test_a_cancelled_send_stays_held_for_release_at_shutdown(tmp_path) -> None:
    sender = ScriptedSender(hold=asyncio.Event())
    async with rig(tmp_path, sender, 1, max_in_flight=1) as r:
        await asyncio.wait_for(sender.started.wait(), GENEROUS)
        [worker] = r.workers()
        worker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await worker
        held = r.dispatcher.unfinished()
        assert len(held) == 1
        await r.store.release(held)
    assert states(tmp_path) == {"pending": 1}
    assert sender.sent == []


async def test_410_is_written_at_once_and_the_rest_is_handed_back_unsent(tmp_path) -> None:
    sender = ScriptedSender(script=[410])
    async with rig(tmp_path, sender, 20, max_in_flight=1) as r:
        await sender.wait_for(lambda: len(sender.sent) >= 1)

        async def handed_back() -> bool:
            counts = (await r.store.stats()).subscribers[NAME]
            return counts.disabled == "410 Gone" and not r.dispatcher.unfinished()

        await wait_until_async(handed_back, timeout=GENEROUS)
        assert await r.store.claim(NAME, 10, 2_000.0, 30.0) == []  # disabled: nothing to claim
    assert sender.sent == [0]  # one POST: the 410; nothing after it
    assert states(tmp_path) == {"pending": 20}


async def test_a_retry_is_sent_again_when_due(tmp_path) -> None:
    sender = ScriptedSender(script=[500, 503])
    async with rig(tmp_path, sender, 1, max_in_flight=1) as r:
        await sender.wait_for(lambda: len(sender.sent) >= 3)
        await asyncio.wait_for(r.results.flush(), GENEROUS)
    assert sender.sent == [0, 0, 0]
    rows = sqlite_rows(tmp_path / "state.db", "SELECT status FROM attempts ORDER BY rowid")
    assert [status for (status,) in rows] == [500, 503, 200]
