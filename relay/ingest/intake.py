"""One account's intake: a poll's answer validated, turned into webhook bodies and stored.

The poller (:mod:`relay.ingest.poller`) decides when to poll, what window to read and where the
cursor stands; it hands each answer here. An answer is stored in batches, each its own
transaction, and only the last one moves the cursor: a failure half-way keeps the cursor, and
the batches already stored are de-duplicated when the window is read again.

A large answer (a catch-up after an outage) is parsed :data:`SLICE_RECORDS` records at a time
and stored :data:`BATCH_RECORDS` at a time; when a rid repeats in it, the whole body is parsed
instead (only that path can compare the copies). Invalid records (malformed, oversized, a
number no JSON can carry) are quarantined once, never delivered. Rids the last poll's answer
had and the store holds (:class:`~relay.ingest.seen.KnownRids`) build no body at all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from relay.config.schema import Settings
from relay.core.envelope import build_body
from relay.core.errors import NonFiniteNumber
from relay.core.models import CallRecord, IngestBatch, Quarantined
from relay.core.status import RuntimeAccount
from relay.core.window import PollPlan, advance_cursor, skew_limit, validate_records
from relay.ingest.announce import announce_new, warn_odd_stamps
from relay.ingest.batch import Batch, PollState, check_repeats
from relay.ingest.body import NON_FINITE, FetchResult, StreamAbandoned, StreamedBody
from relay.ingest.rejects import Rejects
from relay.ingest.routing import Router
from relay.ingest.seen import KnownRids
from relay.store.base import Store

log = logging.getLogger("relay.ingest.poller")  # the lines operators already filter on

# A large response is parsed SLICE_RECORDS records at a time (as Python objects, about 2 KB
# each) and stored BATCH_RECORDS at a time (as webhook bodies, about 0.5 KB each), one transaction
# per batch: only a slice ever exists as objects, and larger transactions are faster in total.
SLICE_RECORDS = 1_000
BATCH_RECORDS = 10_000


class Intake:
    """Stores one account's poll answers; holds what outlives a poll (known rids, rejects)."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        store: Store,
        notify: Callable[[list[str]], None],
        stats: RuntimeAccount,
    ) -> None:
        up = settings.upstream
        self.name = name
        subscribers = settings.subscribers_for(name)
        self._subscribers = [s.name for s in subscribers]
        self._router = Router(name, subscribers, ZoneInfo(up.timezone), up.phone_region)
        self._store = store
        self._notify = notify
        self._stats = stats  # the poller's: ingest counts what it stored there
        self._tz = ZoneInfo(up.timezone)
        self._max_skew = up.max_clock_skew
        self._max_record_bytes = up.max_record_bytes
        self._rejects = Rejects(name)
        # Rids the last poll's answer had and the store holds: a re-read builds no body for them.
        self._known = KnownRids()

    def begin(self, plan: PollPlan, received_at: float, cursor: str | None) -> PollState:
        """A poll's answer came at ``received_at`` while the account's cursor was ``cursor``."""
        limit = skew_limit(received_at, self._tz, self._max_skew)
        poll = PollState(plan, received_at, limit, cursor)
        self._known.begin()
        return poll

    def done(self) -> None:
        """The poll succeeded (the cursor moved on): its rids are what is known from now on."""
        self._known.done()

    async def ingest(self, poll: PollState, response: FetchResult | StreamedBody) -> str | None:
        """Store the whole answer; returns the account's cursor after it."""
        if not isinstance(response, StreamedBody):
            return await self._ingest_last(poll, response, Batch(), streamed=False)
        try:
            return await self._ingest_stream(poll, response)
        except StreamAbandoned as exc:
            log.info(
                "large response (%d bytes) parsed whole: %s",
                response.nbytes,
                exc,
                extra={"account": self.name},
            )
            poll.restart()
            whole = response.whole()
            return await self._ingest_last(poll, whole, Batch(), streamed=False)

    async def _ingest_stream(self, poll: PollState, body: StreamedBody) -> str | None:
        """Store a large response batch by batch; the last batch moves the cursor (returned).

        A batch is stored while the next one is parsed: the store's work on its own thread
        (SQLite's, without the GIL) overlaps the event loop's parsing, validation and envelopes,
        which took a quarter of a catch-up's time between one batch's transaction and the next.
        Batches are still stored one at a time and in order: the next waits for the one before
        (whose failure stops the catch-up there, before anything after it is stored), and
        whatever ends the stream early waits for the batch being stored (a cancel cancels it, as
        it would a store call awaited in place).

        StreamAbandoned (before the batch concerned is stored) when a rid repeats in the
        response: which copy is kept or quarantined is decided by comparing the records, which
        only the whole-body path still has.
        """
        batch = Batch()
        storing: asyncio.Task[None] | None = None
        try:
            for raw in body.batches(SLICE_RECORDS):
                self._prepare(poll, raw, batch, streamed=True)
                # The parser holds this list until it makes the next one: emptied now, the
                # records as objects are gone while the batch is stored.
                raw.clear()
                if len(batch.records) >= BATCH_RECORDS:
                    if storing is not None:
                        task, storing = storing, None
                        await task  # one batch at a time, in order
                    check_repeats(poll, batch)
                    storing = asyncio.ensure_future(self._commit(poll, batch, None))
                    batch = Batch()
                # A slice takes tens of milliseconds: let claims, POSTs, results and the store
                # call's hand-over run between slices instead of after the whole batch.
                await asyncio.sleep(0)
            if storing is not None:
                task, storing = storing, None
                await task
        except asyncio.CancelledError:
            if storing is not None:
                storing.cancel()
                storing.add_done_callback(_retrieve)
            raise
        except BaseException:
            if storing is not None:
                await storing  # stored before anything else is; its own failure wins
            raise
        assert body.result is not None  # batches() sets it when it ends
        return await self._ingest_last(poll, body.result, batch, streamed=True)

    async def _ingest_last(
        self, poll: PollState, result: FetchResult, batch: Batch, *, streamed: bool
    ) -> str | None:
        """Store the last (or only) batch of a response with the new cursor, and return it."""
        self._prepare(poll, result.records, batch, streamed=streamed)
        # Records the parser refused (a number beyond double range) are kept aside too.
        poll.received += len(result.rejected)
        batch.fresh_invalid.extend(self._rejects.fresh(result.rejected))
        check_repeats(poll, batch)
        # A count above the records means the answer admits it is incomplete: store what came,
        # but keep the cursor, so that whatever is missing is asked for again.
        complete = result.count is None or result.count <= poll.received
        if result.count is not None and result.count != poll.received:
            log.warning(
                "count says %d but %d records came; using the records%s",
                result.count,
                poll.received,
                "" if complete else ", cursor kept",
                extra={"account": self.name},
            )
        cursor = poll.cursor
        if complete and poll.newest is not None:
            cursor = advance_cursor(
                cursor, [poll.newest], poll.received_at, self._tz, self._max_skew
            )
        await self._commit(poll, batch, cursor)
        return cursor

    def _prepare(self, poll: PollState, raw: list[Any], batch: Batch, *, streamed: bool) -> None:
        """Validate records into ``batch`` as webhook bodies; note the newest plausible stamp."""
        valid, invalid = validate_records(raw)
        poll.received += len(raw)
        if streamed:
            rids = {v.rid for v in valid}
            if not batch.rids.isdisjoint(rids):
                raise StreamAbandoned("a rid repeats in the response")
            batch.rids |= rids
        # Every valid call_ts parses, and such text sorts like the time it names.
        newest = max((v.call_ts for v in valid if v.call_ts <= poll.skew_limit), default=None)
        if newest is not None and (poll.newest is None or newest > poll.newest):
            poll.newest = newest
        limit = self._max_record_bytes
        # Routing (subscriber filters) only when some subscriber has a filter: the default path
        # computes nothing extra.
        route = self._router.route if self._router.filtering else None
        known = self._known
        skipped: list[int] = []
        for v in valid:
            if v.rid in known:
                # Stored by an earlier poll (see relay.ingest.seen): the store would drop it.
                skipped.append(v.rid)
                continue
            try:
                body = build_body(self.name, poll.received_at, v.record)
            except NonFiniteNumber:
                # NaN or an infinity: no JSON can carry it. Kept aside (its call_timestamp
                # still moves the cursor past it, as for an oversized record).
                invalid.append((v.record, NON_FINITE))
                continue
            if len(body) > limit:
                # Every delivery of it would hold it in memory, and every receiver would get
                # it: kept aside instead (its call_timestamp still moves the cursor past it).
                batch.fresh_invalid.extend(self._rejects.oversized(v.record, body, limit))
            elif route is None:
                batch.records.append(CallRecord(v.rid, v.call_ts, body))
            else:
                batch.records.append(CallRecord(v.rid, v.call_ts, body, route(v.record)))
        batch.fresh_invalid.extend(self._rejects.fresh(invalid))
        known.stored(skipped)

    async def _commit(self, poll: PollState, batch: Batch, cursor: str | None) -> None:
        """Store one batch in one transaction (``cursor`` None: leave the cursor as it is)."""
        if not batch.records and not batch.fresh_invalid and cursor in (None, poll.cursor):
            return  # an empty poll: nothing to store, and no transaction to pay for
        outcome = await self._store.ingest(
            IngestBatch(
                account=self.name,
                records=batch.records,
                subscribers=self._subscribers,
                received_at=poll.received_at,
                cursor=cursor,
                quarantined=[
                    Quarantined(data, reason) for _, reason, data, _ in batch.fresh_invalid
                ],
                seed_only=poll.plan.seed_only,
            )
        )
        poll.stored.extend(batch.rids)
        self._known.stored(r.rid for r in batch.records)
        self._rejects.remember(batch.fresh_invalid)
        poll.new += len(outcome.new_rids)
        self._stats.ingested += len(outcome.new_rids)
        if poll.plan.seed_only or not outcome.new_rids:
            return
        announce_new(self.name, self._subscribers, outcome.new_rids, batch.records)
        limit = skew_limit(poll.received_at, self._tz, self._max_skew)
        warn_odd_stamps(self.name, outcome.new_rids, batch.records, poll.plan.since, limit)
        if self._subscribers:
            self._notify(self._subscribers)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Take a cancelled store task's outcome, so that an error it ended with before the cancel
    reached it is not reported as never retrieved (the poll that started it failed already)."""
    if not task.cancelled():
        task.exception()
