"""The supervisor: owns every long-lived task of a built pipeline (see :mod:`relay.runtime.wiring`).

Nothing else creates long-lived tasks; the delivery scheduler (one of them) owns the
short-lived tasks a subscriber runs while it has work. Each account's poller is a *unit* with its
own stop event, and the scheduler takes subscribers on and off, so a reload
(:mod:`relay.runtime.reload`) changes one without touching the others. Shutdown is two-phase,
started by one ``stop`` event (SIGINT/SIGTERM only set it): pollers and claims stop at once;
workers finish the delivery in hand within ``delivery.grace_period``; whatever is still in flight
then is cancelled; results are flushed; deliveries claimed but not finished are released so they
go out after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from relay.config.schema import Settings
from relay.core.aio import wait_any, wait_or_stop
from relay.core.errors import ConfigError, StoreError
from relay.core.status import RelayStatus
from relay.ingest.poller import AccountPoller
from relay.ops.control import ReloadResult
from relay.runtime import maintenance
from relay.runtime.reload import plan_reload
from relay.runtime.wiring import (
    Pipeline,
    make_client,
    make_dispatcher,
    make_poller,
    refresh_cadences,
)

log = logging.getLogger(__name__)

RESTART_DELAY = 5.0  # a loop that crashed on a bug is restarted after this pause
WATCH_EVERY = 1.0  # how often --watch looks at the config file


@dataclass
class _Unit:
    """One account's tasks, stopped together."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Supervisor:
    """Runs a built :class:`~relay.runtime.wiring.Pipeline` until ``stop``; the admin surface
    reaches it through the :class:`~relay.ops.control.RelayControl` interface it implements."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        clock: Callable[[], float] = time.time,
        *,
        loader: Callable[[], Settings] | None = None,
        watch: str | None = None,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.store = pipeline.store
        self.pollers = pipeline.pollers
        self.dispatchers = pipeline.dispatchers
        self.results = pipeline.results
        self.cluster = pipeline.cluster
        self._clock = clock
        self._loader = loader  # re-reads the config file (raises ConfigError)
        self._watch = watch  # the config file to watch for changes, if any
        self.started = asyncio.Event()
        # Set once every account configured at start has polled successfully once (or was
        # removed by a reload first): what start-up made is all there then (relay.runtime.runner).
        self.polled_once = asyncio.Event()
        self._unpolled: set[str] = set()
        self._on_first_poll = self._first_poll  # one bound method for every poller
        self._stopping = False
        self._tg: asyncio.TaskGroup | None = None
        self._stop: asyncio.Event | None = None
        self._units: dict[str, _Unit] = {}
        self._reload_lock = asyncio.Lock()
        self._reload_wanted = asyncio.Event()
        self.admin_url: str | None = None  # set by the runner when the admin API listens

    # -- RelayControl ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.started.is_set() and not self._stopping

    @property
    def subscriber_names(self) -> list[str]:
        return list(self.dispatchers)

    async def status(self) -> RelayStatus:
        return await self.pipeline.status(self.ready, self.settings, self._clock())

    def wake(self, subscribers: list[str] | None = None) -> None:
        self.pipeline.notify(list(self.dispatchers) if subscribers is None else subscribers)

    def request_reload(self) -> None:
        """Reload soon, from the supervisor's own task (what SIGHUP does)."""
        self._reload_wanted.set()

    async def reload(self) -> ReloadResult:
        """Re-read the configuration and apply the differences; an invalid file changes
        nothing and its problems come back one per line."""
        if self._loader is None:
            return ReloadResult(problems=["this relay was not started from a config file"])
        if not self.ready or self._tg is None:
            return ReloadResult(problems=["the relay is not running"])
        try:
            new = await asyncio.to_thread(self._loader)
        except ConfigError as exc:
            log.error("reload rejected, running configuration kept: %s", "; ".join(exc.problems))
            return ReloadResult(problems=exc.problems)
        async with self._reload_lock:
            return await self._apply(new)

    # -- running --------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Run everything until ``stop`` is set, then shut down in two phases."""
        writer_stop = asyncio.Event()
        # Heartbeat and claim renewal outlive the drain: deliveries in flight keep their leases.
        late_stop = asyncio.Event()
        self._stop = stop
        if self.cluster is not None:
            await self.cluster.join()
        await self._hand_over_cursors()
        self._unpolled = {p.name for p in self.pollers if p.polls == 0}
        if not self._unpolled:
            self.polled_once.set()  # nothing to wait for (no accounts)
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            writer = tg.create_task(self.results.run(writer_stop), name="result-writer")
            if self.cluster is not None:
                for name, loop_fn in self.cluster.early_loops():
                    self._spawn(tg, name, stop, loop_fn)
                for name, loop_fn in self.cluster.late_loops():
                    self._spawn(tg, name, late_stop, loop_fn)
            for poller in self.pollers:
                self._start_poller(poller)
            # One task for every subscriber: dispatchers run on demand, not on timers.
            scheduler = self._spawn(tg, "delivery", stop, self.pipeline.scheduler.run)
            self._spawn(tg, "maintenance", stop, self._maintain)
            self._spawn(tg, "reload", stop, self._reloads)
            log.info(
                "relay running: %d accounts, %d subscribers",
                len(self.pollers),
                len(self.dispatchers),
            )
            self.started.set()
            await stop.wait()
            self._stopping = True
            log.info("stopping: no new polls or claims; finishing deliveries in flight")
            async with self._reload_lock:  # a reload in progress finishes first
                for unit in self._units.values():
                    unit.stop.set()
                # The scheduler stops claiming at once and lets in-flight deliveries finish
                # within the grace period (cancelling the rest).
                await scheduler
            writer_stop.set()
            await writer
            await self._release(self.dispatchers.values())
            late_stop.set()
        if self.cluster is not None:
            await self.cluster.leave()
        log.info("stopped")

    async def _hand_over_cursors(self) -> None:
        """Read every lease-less poller's cursor in one store query and hand it over: at
        10,000 accounts, one round trip instead of 10,000 as the pollers start. A leased
        poller (shared store) loads its own on taking the lease, when it is current; if this
        read fails, each poller loads its own as it starts (and backs off as ever)."""
        pollers = [p for p in self.pollers if p.lease is None]
        if not pollers:
            return
        try:
            cursors = await self.store.load_cursors([p.name for p in pollers])
        except StoreError as exc:
            log.warning("cannot load the cursors at start-up; each account loads its own: %s", exc)
            return
        for poller in pollers:
            poller.hand_over(cursors[poller.name])

    def _first_poll(self, account: str) -> None:
        """``account`` polled successfully for the first time (or a reload removed it)."""
        self._unpolled.discard(account)
        if not self._unpolled:
            self.polled_once.set()

    def _start_poller(self, poller: AccountPoller) -> None:
        assert self._tg is not None
        poller.on_first_poll = self._on_first_poll
        unit = self._units[f"poll:{poller.name}"] = _Unit()
        unit.tasks.append(self._spawn(self._tg, f"poll:{poller.name}", unit.stop, poller.run))

    async def _stop_unit(self, key: str) -> None:
        unit = self._units.pop(key, None)
        if unit is None:
            return
        unit.stop.set()
        await asyncio.gather(*unit.tasks, return_exceptions=True)

    def _spawn(
        self,
        tg: asyncio.TaskGroup,
        name: str,
        stop: asyncio.Event,
        loop_fn: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    ) -> asyncio.Task[None]:
        return tg.create_task(self._guard(name, stop, loop_fn), name=name)

    async def _guard(
        self,
        name: str,
        stop: asyncio.Event,
        loop_fn: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
    ) -> None:
        """Run a loop; if it dies of a bug, log the traceback and restart it (never silently)."""
        while not stop.is_set():
            try:
                await loop_fn(stop)
                return
            except Exception:
                log.exception("task %s crashed; restarting in %.0fs", name, RESTART_DELAY)
                await wait_or_stop(stop, RESTART_DELAY)

    async def _release(self, dispatchers: Any) -> None:
        claims = [c for d in dispatchers for c in d.held_claims()]
        if not claims:
            return
        try:
            # Shielded: this final write must not be lost to a second Ctrl-C. Fenced: a claim
            # another instance has taken since ours ran out is not handed back.
            await asyncio.shield(self.store.release_claims(claims))
        except StoreError as exc:
            log.error("could not release %d claimed deliveries: %s", len(claims), exc)

    # -- reload ---------------------------------------------------------------------------------

    async def _apply(self, new: Settings) -> ReloadResult:
        plan = plan_reload(self.settings, new)
        for name in plan.stop_subscribers:
            d = await self.pipeline.scheduler.remove(name)
            if d is not None:
                await self._release([d])
        old_client = self.pipeline.client
        if plan.new_client:
            assert self.pipeline.http is not None
            self.pipeline.client = make_client(new, self.pipeline.http, self.pipeline.instance)
        staying = {a.name for a in plan.start_accounts}
        for name in plan.stop_accounts:
            await self._stop_unit(f"poll:{name}")
            self.pollers[:] = [p for p in self.pollers if p.name != name]
            if name not in staying:
                self._first_poll(name)  # removed: it will never poll, nor need to
        if plan.new_client and old_client is not None:
            old_client.close()  # its pollers are stopped (all of them: the upstream changed)
        self.settings = new
        for sub in plan.start_subscribers:
            self.pipeline.scheduler.add(make_dispatcher(self.pipeline, sub, new))
        for account in plan.start_accounts:
            poller = make_poller(self.pipeline, account, new)
            self.pollers.append(poller)
            self._start_poller(poller)
        self.pipeline.share.accounts = len(self.pollers)  # this instance's share follows
        refresh_cadences(self.pipeline, new)  # how many accounts share each key may have changed
        self.wake([s.name for s in plan.start_subscribers])
        kept: dict[str, int] = {}
        removed = [n for n in plan.stop_subscribers if n not in self.dispatchers]
        if removed:
            stats = await self.store.stats()
            for name in removed:
                queue = stats.subscribers.get(name)
                kept[name] = (queue.pending + queue.inflight) if queue else 0
        result = ReloadResult(
            added=plan.added,
            removed=plan.removed,
            changed=plan.changed,
            kept_pending=kept,
            restart_required=plan.restart_required,
        )
        log.info(
            "configuration reloaded: added %s, removed %s, changed %s",
            plan.added or "nothing",
            plan.removed or "nothing",
            plan.changed or "nothing",
            extra={"kept_pending": kept, "restart_required": plan.restart_required},
        )
        return result

    async def _reloads(self, stop: asyncio.Event) -> None:
        """Reload when asked (SIGHUP) or, with --watch, when the config file changes."""
        seen = _mtime(self._watch)
        while not stop.is_set():
            await wait_any([self._reload_wanted, stop], WATCH_EVERY if self._watch else None)
            if stop.is_set():
                return
            if self._watch is not None and not self._reload_wanted.is_set():
                now = _mtime(self._watch)
                if now == seen:
                    continue
                seen = now
            self._reload_wanted.clear()
            await self.reload()

    async def _maintain(self, stop: asyncio.Event) -> None:
        """Run a maintenance pass :data:`maintenance.FIRST_AFTER` after start, then every
        :data:`maintenance.EVERY` (see :mod:`relay.runtime.maintenance`)."""
        delay = maintenance.FIRST_AFTER
        while not await wait_or_stop(stop, delay):
            delay = maintenance.EVERY
            try:
                await maintenance.maintain(self.store, self.settings, self._clock())
            except StoreError as exc:
                log.warning("maintenance failed, tried again in %.0fs: %s", delay, exc)


def _mtime(path: str | None) -> tuple[float, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime, st.st_size)
