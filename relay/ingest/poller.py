"""One account's poll loop: plan a window, fetch, validate, ingest durably, move the cursor.

Detection rests on three things (see the README's design notes):

* the cursor is the newest ``call_timestamp`` the upstream has shown us (its clock, not ours);
* every poll re-reads a short ``recent_window`` behind it, and every ``sweep_interval`` a full
  ``lookback``, because a call's record is written when the call ends but stamped when it began;
* every rid is de-duplicated in durable storage in the same transaction that stores the record.

A failure anywhere before the ingest commit leaves the cursor where it was, so the next poll
re-reads the same window: nothing is skipped. A large response (a catch-up after an outage) is
stored in batches of :data:`BATCH_RECORDS`, each its own transaction, and only the last one moves
the cursor: a failure half-way keeps the cursor, and the batches already stored are de-duplicated
when the window is read again.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from relay.config.schema import AccountSettings, Settings
from relay.core.aio import unless_stopped, wait_or_stop
from relay.core.envelope import build_body
from relay.core.errors import (
    NonFiniteNumber,
    StoreError,
    StoreFull,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from relay.core.models import AccountCursor, CallRecord, IngestBatch, Quarantined
from relay.core.retry import upstream_backoff
from relay.core.schedule import next_due
from relay.core.status import RuntimeAccount
from relay.core.window import (
    WindowPolicy,
    advance_cursor,
    plan_poll,
    prune_before,
    skew_limit,
    validate_records,
)
from relay.ingest.announce import announce_new, warn_odd_stamps
from relay.ingest.batch import Batch, PollState, check_repeats
from relay.ingest.body import NON_FINITE, FetchResult, StreamAbandoned, StreamedBody
from relay.ingest.budget import KeyBudget
from relay.ingest.cadence import KeyCadence
from relay.ingest.lease import AccountLease, LeaseLost
from relay.ingest.rejects import Rejects
from relay.ingest.routing import Router
from relay.ingest.seen import KnownRids
from relay.ingest.upstream import Credentials, WebFonesClient
from relay.store.base import Store

log = logging.getLogger(__name__)

AUTH_RETRY = 900.0  # a rejected key is tried again every 15 minutes, in case it was fixed
RATE_LIMIT_PAUSE = 60.0  # a 429 without Retry-After pauses the key this long
BACKOFF_CAP = 300.0
PRUNE_MARGIN = 3600.0  # de-dup memory is kept this much longer than the look-back
# A large response is parsed SLICE_RECORDS records at a time (as Python objects, about 2 KB
# each) and stored BATCH_RECORDS at a time (as webhook bodies, about 0.5 KB each), one transaction
# per batch: only a slice ever exists as objects, and larger transactions are faster in total.
SLICE_RECORDS = 1_000
BATCH_RECORDS = 10_000
# An account that never had a record has no cursor, so every poll is a sweep from the last one
# (see relay.core.window): its durable ``last_sweep`` only says where a restarted poller reads
# back from, and an older one only makes it read a little more. Written this often, not on
# every poll: one store write less per empty poll.
SWEPT_WRITE_EVERY = 60.0


class AccountPoller:
    """Polls one account until ``stop`` is set. Owns no tasks; the supervisor runs ``run``."""

    def __init__(
        self,
        account: AccountSettings,
        settings: Settings,
        store: Store,
        client: WebFonesClient,
        budget: KeyBudget,
        notify: Callable[[list[str]], None],
        clock: Callable[[], float] = time.time,
        lease: AccountLease | None = None,
        cadence: KeyCadence | None = None,
    ) -> None:
        up = settings.upstream
        self.name = account.name
        self._credentials = Credentials(account.api_key.get_secret_value(), account.auth)
        subscribers = settings.subscribers_for(account.name)
        self._subscribers = [s.name for s in subscribers]
        self._settings = settings
        self._router = Router(account.name, subscribers, ZoneInfo(up.timezone), up.phone_region)
        self._store = store
        self._client = client
        self._budget = budget
        # When to poll next (shared by the accounts on this key; alone on it when not given).
        self._cadence = cadence or KeyCadence(up, [account.name])
        self._notify = notify
        self._clock = clock
        self._tz = ZoneInfo(up.timezone)
        self._policy = WindowPolicy(
            recent_window=up.recent_window,
            lookback=up.lookback,
            sweep_interval=up.sweep_interval,
            start_from=up.start_from,
        )
        self._cursor = AccountCursor(newest=None, last_sweep=None)
        self._swept_stored: float | None = None  # last_sweep as the store has it
        # The cursor as it stood right after the last sweep: the next sweep reads back from
        # here, not from the current cursor, so a record written up to `lookback` behind the
        # newest record *when it appeared* is still caught however far the cursor moved since.
        self._anchor: str | None = None
        self._rejects = Rejects(self.name)
        # Rids the last poll's answer had and the store holds: a re-read builds no body for them.
        self._known = KnownRids()
        self._status: tuple[str, str | None] | None = None
        self.polls = 0  # successful polls, for status and tests
        # On a shared store, only the holder of this lease polls the account (None: always us).
        self.lease = lease
        # What the operator surfaces show (see relay.core.status); request times are kept for
        # the "spent in the current window" figure, at most one budget's worth of them.
        self.stats = RuntimeAccount(
            budget_requests=up.rate_limit.requests, budget_per=up.rate_limit.per, timeout=up.timeout
        )
        self._requests: deque[float] = deque(maxlen=up.rate_limit.requests)
        # Seconds after start before the first poll: set by the wiring to spread a relay's
        # accounts over the poll interval (relay.core.schedule); 0 polls at once.
        self.start_offset = 0.0

    def snapshot(self, now: float) -> RuntimeAccount:
        """A copy of :attr:`stats` as of ``now`` (for the status model)."""
        per = self.stats.budget_per
        while self._requests and self._requests[0] <= now - per:
            self._requests.popleft()
        self.stats.requests_in_window = len(self._requests)
        self.stats.interval, self.stats.interval_auto = self._cadence.interval, self._cadence.auto
        return copy.deepcopy(self.stats)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until ``stop`` is set, backing off on failures; never raises for upstream faults."""
        try:
            await self._run(stop)
        finally:
            self.stats.enter("stopped", self._clock())
            if self.lease is not None:
                # Shielded: a second Ctrl-C must not keep the next instance waiting a full ttl.
                await asyncio.shield(self.lease.release())

    async def _run(self, stop: asyncio.Event) -> None:
        if self.lease is None:
            await self.load()
        failures = 0
        loop = asyncio.get_running_loop()
        now = self._clock()
        # The first poll: with auto, in the account's slot of its key's schedule; with a fixed
        # interval, after the offset the wiring spread this account to (relay.core.schedule).
        first = self._cadence.first_delay(self.name, now) if self._cadence.auto else 0.0
        first = max(first, self.start_offset)
        due = loop.time() + first  # the next poll's start on the schedule (loop clock)
        if first > 0:
            self.stats.enter("waiting", now, now + first)
            if await wait_or_stop(stop, first):
                return
        while not stop.is_set():
            delay: float | None = None  # after a good poll: the schedule's
            if self.lease is not None and not await self.lease.turn(self.load):
                # Another instance polls this account; ask again soon, so that when it dies
                # we take over within the lease's ttl plus this.
                await wait_or_stop(stop, self.lease.retry_every)
                continue
            try:
                # A stop during a long budget wait or a slow fetch abandons the poll; an ingest
                # that already started still commits or rolls back as a whole in the store.
                if await unless_stopped(stop, self.poll_once()) is None:
                    return
                failures = 0
                self.stats.count("ok", None)
                await self._set_status("ok", None)
            except UpstreamAuthError as exc:
                log.error(
                    "API key rejected (%s); account stopped, retrying in %gs",
                    exc,
                    AUTH_RETRY,
                    extra={"account": self.name, "status": exc.status},
                )
                self.stats.count("auth_failed", str(exc))
                await self._set_status("auth_failed", str(exc))
                delay = AUTH_RETRY
            except UpstreamRateLimited as exc:
                pause = exc.retry_after if exc.retry_after is not None else RATE_LIMIT_PAUSE
                await self._budget.pause_shared(pause)
                log.warning(
                    "rate limited by WebFones (%s); pausing this API key for %.3gs",
                    "Retry-After" if exc.retry_after is not None else "no Retry-After",
                    pause,
                    extra={"account": self.name},
                )
                self.stats.count("rate_limited", str(exc))
                await self._set_status("rate_limited", str(exc))
                delay = pause
            except UpstreamError as exc:
                failures += 1
                delay = upstream_backoff(
                    failures,
                    base=self._cadence.interval,
                    cap=BACKOFF_CAP,
                    jitter=random.random(),
                )
                if exc.retry_after is not None:
                    delay = max(delay, min(exc.retry_after, BACKOFF_CAP))
                log.warning(
                    "poll failed, cursor kept; retrying in %.1fs: %s",
                    delay,
                    exc,
                    extra={"account": self.name, "attempt": failures},
                )
                self.stats.count("backing_off", str(exc))
                await self._set_status("backing_off", str(exc))
            except LeaseLost:
                continue  # nothing sent; the next turn finds out who polls now
            except StoreFull:
                failures += 1
                delay = upstream_backoff(failures, base=1.0, cap=60.0, jitter=random.random())
                log.error(
                    "state disk is full: not taking new records until space returns",
                    extra={"account": self.name},
                )
                self.stats.count("store_error", "state disk is full")
            except StoreError as exc:
                failures += 1
                delay = upstream_backoff(failures, base=1.0, cap=60.0, jitter=random.random())
                log.error("state store error: %s", exc, extra={"account": self.name})
                self.stats.count("store_error", str(exc))
            # A healthy account polls on its schedule, however long the poll took (auto: its
            # slot; a number: one interval after the last poll was due); a failure's delay
            # (back-off, pause) counts from now, and the schedule starts again after it.
            now = self._clock()
            if delay is None and self._cadence.auto:
                delay = self._cadence.delay(self.name, now)
                due = loop.time() + delay
            elif delay is None:
                due = next_due(due, self._cadence.interval, loop.time())
                delay = due - loop.time()
            else:
                due = loop.time() + delay
            self.stats.enter("waiting", now, now + delay)
            await wait_or_stop(stop, delay)

    async def load(self) -> None:
        """Take up the account's durable position (cursor, last sweep and its anchor)."""
        self._cursor = await self._store.load_cursor(self.name)
        self._swept_stored = self._cursor.last_sweep
        # A file from before the anchor was kept has none: read back from the cursor, as then.
        self._anchor = self._cursor.sweep_anchor or self._cursor.newest

    async def poll_once(self) -> int:
        """One poll: fetch the planned window and ingest it. Returns how many records were new."""
        now = self._clock()
        plan = plan_poll(
            self._cursor.newest,
            self._cursor.last_sweep,
            now,
            self._policy,
            self._tz,
            sweep_from=self._anchor,
        )
        self.stats.enter("budget", now)
        await self._budget.acquire()
        if self.lease is not None:
            await self.lease.before_request()
        self._requests.append(self._clock())
        self.stats.enter("polling", self._clock())
        response = await self._client.fetch(self._credentials, plan.since)
        received_at = self._clock()
        skew = self._settings.upstream.max_clock_skew
        poll = PollState(plan, received_at, skew_limit(received_at, self._tz, skew))
        self._known.begin()
        if isinstance(response, StreamedBody):
            try:
                cursor = await self._ingest_stream(poll, response)
            except StreamAbandoned as exc:
                log.info(
                    "large response (%d bytes) parsed whole: %s",
                    response.nbytes,
                    exc,
                    extra={"account": self.name},
                )
                poll.restart()
                whole = response.whole()
                cursor = await self._ingest_last(poll, whole, Batch(), streamed=False)
        else:
            cursor = await self._ingest_last(poll, response, Batch(), streamed=False)
        last_sweep = self._cursor.last_sweep
        if plan.sweep or plan.seed_only:
            last_sweep = received_at
            if not self._quiet_sweep(cursor, received_at):
                await self._store.mark_swept(self.name, received_at, cursor)
                self._swept_stored = received_at
            if cursor is not None:
                await self._prune(cursor, received_at)
            self._anchor = cursor
        self._cursor = AccountCursor(cursor, last_sweep, self._anchor)
        self._known.done()
        self.polls += 1
        if cursor is not None:
            self.stats.newest_call_at = _epoch(cursor, self._tz)
        if plan.seed_only and poll.new:
            log.info(
                "start_from=now: %d existing records remembered, not delivered",
                poll.new,
                extra={"account": self.name},
            )
        log.debug(
            "polled",
            extra={
                "account": self.name,
                "since": plan.since,
                "count": poll.received,
                "new": poll.new,
            },
        )
        return poll.new

    def _quiet_sweep(self, cursor: str | None, at: float) -> bool:
        """Whether this sweep of a still cursor-less account may go unrecorded for now."""
        stored = self._swept_stored
        return cursor is None and stored is not None and 0 <= at - stored < SWEPT_WRITE_EVERY

    async def _ingest_stream(self, poll: PollState, body: StreamedBody) -> str | None:
        """Store a large response batch by batch; the last batch moves the cursor (returned).

        StreamAbandoned (before the batch concerned is stored) when a rid repeats in the
        response: which copy is kept or quarantined is decided by comparing the records, which
        only the whole-body path still has.
        """
        batch = Batch()
        for raw in body.batches(SLICE_RECORDS):
            self._prepare(poll, raw, batch, streamed=True)
            # The parser holds this list until it makes the next one: emptied now, the records
            # as objects are gone while the batch is stored.
            raw.clear()
            if len(batch.records) >= BATCH_RECORDS:
                check_repeats(poll, batch)
                await self._commit(poll, batch, None)
                batch = Batch()
            else:
                # A slice takes tens of milliseconds: let claims, POSTs and results run between
                # slices instead of after the whole batch (about a second of 10,000 records).
                await asyncio.sleep(0)
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
        cursor = self._cursor.newest
        if complete and poll.newest is not None:
            cursor = advance_cursor(
                cursor,
                [poll.newest],
                poll.received_at,
                self._tz,
                self._settings.upstream.max_clock_skew,
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
        limit = self._settings.upstream.max_record_bytes
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
        if not batch.records and not batch.fresh_invalid and cursor in (None, self._cursor.newest):
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
        self.stats.ingested += len(outcome.new_rids)
        if poll.plan.seed_only or not outcome.new_rids:
            return
        announce_new(self.name, self._subscribers, outcome.new_rids, batch.records)
        limit = skew_limit(poll.received_at, self._tz, self._settings.upstream.max_clock_skew)
        warn_odd_stamps(self.name, outcome.new_rids, batch.records, poll.plan.since, limit)
        if self._subscribers:
            self._notify(self._subscribers)

    async def _prune(self, cursor: str, now: float) -> None:
        lookback = self._settings.upstream.lookback
        horizon = prune_before(cursor, lookback, PRUNE_MARGIN)
        forgotten = await self._store.prune_seen(self.name, horizon, now - lookback - PRUNE_MARGIN)
        if forgotten:
            log.debug("forgot %d old rids", forgotten, extra={"account": self.name})

    async def _set_status(self, status: str, error: str | None) -> None:
        # Written only on change: a healthy account costs no write per poll.
        if self._status == (status, error):
            return
        self._status = (status, error)
        try:
            await self._store.set_account_status(self.name, status, error, self._clock())
        except StoreError as exc:
            log.warning("cannot record account status: %s", exc, extra={"account": self.name})


def _epoch(call_ts: str, tz: ZoneInfo) -> float | None:
    """The instant an upstream ``call_timestamp`` names, in the upstream's zone."""
    try:
        return datetime.strptime(call_ts, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz).timestamp()
    except ValueError:
        return None
