"""One account's poll loop: plan a window, fetch, validate, ingest durably, move the cursor.

Detection rests on three things (see the README's design notes):

* the cursor is the newest ``call_timestamp`` the upstream has shown us (its clock, not ours);
* every poll re-reads a short ``recent_window`` behind it, and every ``sweep_interval`` a full
  ``lookback``, because a call's record is written when the call ends but stamped when it began;
* every rid is de-duplicated in durable storage in the same transaction that stores the record.

A failure anywhere before the ingest commit leaves the cursor where it was, so the next poll
re-reads the same window: nothing is skipped. What an answer holds is validated and stored by
the account's :class:`~relay.ingest.intake.Intake` (in batches for a large one, only the last
moving the cursor); this module schedules the polls, plans their windows and keeps the cursor.
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
from zoneinfo import ZoneInfo

from relay.config.schema import AccountSettings, Settings
from relay.core.aio import StopWaiter
from relay.core.errors import (
    StoreError,
    StoreFull,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from relay.core.models import AccountCursor
from relay.core.retry import upstream_backoff
from relay.core.schedule import next_due
from relay.core.status import RuntimeAccount
from relay.core.window import StartMemo, WindowPolicy, plan_poll, prune_before
from relay.ingest.budget import KeyBudget
from relay.ingest.cadence import KeyCadence
from relay.ingest.intake import Intake
from relay.ingest.lease import AccountLease, LeaseLost
from relay.ingest.upstream import Credentials, WebFonesClient
from relay.store.base import Store

log = logging.getLogger(__name__)

AUTH_RETRY = 900.0  # a rejected key is tried again every 15 minutes, in case it was fixed
RATE_LIMIT_PAUSE = 60.0  # a 429 without Retry-After pauses the key this long
BACKOFF_CAP = 300.0
PRUNE_MARGIN = 3600.0  # de-dup memory is kept this much longer than the look-back
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
        self._settings = settings
        self._store = store
        self._client = client
        self._budget = budget
        # When to poll next (shared by the accounts on this key; alone on it when not given).
        self._cadence = cadence or KeyCadence(up, [account.name])
        self._clock = clock
        self._tz = ZoneInfo(up.timezone)
        self._starts = StartMemo()
        self._policy = WindowPolicy(
            recent_window=up.recent_window,
            lookback=up.lookback,
            sweep_interval=up.sweep_interval,
            start_from=up.start_from,
        )
        self._cursor = AccountCursor(newest=None, last_sweep=None)
        self._handed: AccountCursor | None = None  # see hand_over
        self._swept_stored: float | None = None  # last_sweep as the store has it
        # The cursor as it stood right after the last sweep: the next sweep reads back from
        # here, not from the current cursor, so a record written up to `lookback` behind the
        # newest record *when it appeared* is still caught however far the cursor moved since.
        self._anchor: str | None = None
        self._epoch_of: str | None = None  # the cursor stats.newest_call_at was read from
        self._status: tuple[str, str | None] | None = None
        self.polls = 0  # successful polls, for status and tests
        # Called with the account's name after the first successful poll (the supervisor's).
        self.on_first_poll: Callable[[str], None] | None = None
        # On a shared store, only the holder of this lease polls the account (None: always us).
        self.lease = lease
        # What the operator surfaces show (see relay.core.status); request times are kept for
        # the "spent in the current window" figure, at most one budget's worth of them.
        self.stats = RuntimeAccount(
            budget_requests=up.rate_limit.requests, budget_per=up.rate_limit.per, timeout=up.timeout
        )
        self._requests: deque[float] = deque(maxlen=up.rate_limit.requests)
        # Validates, stores and announces each answer (relay.ingest.intake).
        self._intake = Intake(account.name, settings, store, notify, self.stats)
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
        waiter = StopWaiter(stop)  # one task waits for stop, not one per sleep and poll
        try:
            await self._polls(stop, waiter)
        finally:
            waiter.close()

    async def _polls(self, stop: asyncio.Event, waiter: StopWaiter) -> None:
        if self.lease is None:
            # The position handed over at start-up (one query for every account), used once: a
            # run restarted after a crash takes up the durable position again, as ever.
            cursor, self._handed = self._handed, None
            if cursor is None:
                await self.load()
            else:
                self._take_up(cursor)
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
            if await waiter.sleep(first):
                return
        while not stop.is_set():
            delay: float | None = None  # after a good poll: the schedule's
            if self.lease is not None and not await self.lease.turn(self.load):
                # Another instance polls this account; ask again soon, so that when it dies
                # we take over within the lease's ttl plus this.
                await waiter.sleep(self.lease.retry_every)
                continue
            try:
                # A stop during a long budget wait or a slow fetch abandons the poll; an ingest
                # that already started still commits or rolls back as a whole in the store.
                if await waiter.run(self.poll_once()) is None:
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
            await waiter.sleep(delay)

    async def load(self) -> None:
        """Take up the account's durable position (cursor, last sweep and its anchor)."""
        self._take_up(await self._store.load_cursor(self.name))

    def hand_over(self, cursor: AccountCursor) -> None:
        """Give a poller without a lease its durable position, read for it by the caller
        (:meth:`Store.load_cursors`, every account at once): :meth:`run` takes it up instead
        of loading its own. A poller never handed one (added by a reload) loads its own."""
        self._handed = cursor

    def _take_up(self, cursor: AccountCursor) -> None:
        """Take up ``cursor``, the account's durable position, as :meth:`load` does."""
        self._cursor = cursor
        self._swept_stored = cursor.last_sweep
        # A file from before the anchor was kept has none: read back from the cursor, as then.
        self._anchor = cursor.sweep_anchor or cursor.newest

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
            memo=self._starts,
        )
        self.stats.enter("budget", now)
        await self._budget.acquire()
        if self.lease is not None:
            await self.lease.before_request()
        self._requests.append(self._clock())
        self.stats.enter("polling", self._clock())
        response = await self._client.fetch(self._credentials, plan.since)
        received_at = self._clock()
        poll = self._intake.begin(plan, received_at, self._cursor.newest)
        cursor = await self._intake.ingest(poll, response)
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
        self._intake.done()
        self.polls += 1
        if self.polls == 1 and self.on_first_poll is not None:
            self.on_first_poll(self.name)
        if cursor is not None and cursor != self._epoch_of:
            # strptime is ~10 us: read again only when the cursor moved, not on every poll
            self._epoch_of = cursor
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
