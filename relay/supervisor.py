"""The supervisor: builds the pipeline's parts from settings and owns every long-lived task.

Nothing else creates long-lived tasks. Shutdown is two-phase, started by one ``stop`` event
(SIGINT/SIGTERM only set it): pollers and claimers stop at once; workers finish the delivery in
hand within ``delivery.grace_period``; whatever is still in flight then is cancelled; results
are flushed; deliveries claimed but not finished are released so they go out after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from relay.aio import wait_or_stop
from relay.budget import KeyBudget
from relay.config import Settings
from relay.dispatcher import ResultWriter, SubscriberDispatcher
from relay.errors import StoreError
from relay.http1 import Http1Client
from relay.poller import AccountPoller
from relay.sender import Sender
from relay.store.base import Store
from relay.upstream import WebFonesClient

log = logging.getLogger(__name__)

RESTART_DELAY = 5.0  # a loop that crashed on a bug is restarted after this pause
MAINTENANCE_EVERY = 600.0


class Supervisor:
    """Wires pollers, dispatchers and the result writer, and runs them until ``stop``."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        upstream_session: aiohttp.ClientSession,
        delivery_client: Http1Client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self._clock = clock
        up = settings.upstream
        client = WebFonesClient(
            upstream_session,
            up.base_url,
            timeout=up.timeout,
            max_response_bytes=up.max_response_bytes,
        )
        # Accounts that share an API key share its budget: the upstream counts per key.
        budgets: dict[str, KeyBudget] = {}
        for account in up.accounts:
            key = account.api_key.get_secret_value()
            if key not in budgets:
                budgets[key] = KeyBudget(up.rate_limit.requests, up.rate_limit.per)
        self.results = ResultWriter(store)
        self.dispatchers = {
            sub.name: SubscriberDispatcher(
                sub,
                settings.delivery,
                store,
                Sender(delivery_client, sub, settings.delivery.response_cap),
                self.results,
                clock,
            )
            for sub in settings.subscribers
            if sub.enabled
        }
        self.pollers = [
            AccountPoller(
                account,
                settings,
                store,
                client,
                budgets[account.api_key.get_secret_value()],
                self.notify,
                clock,
            )
            for account in up.accounts
        ]
        self.started = asyncio.Event()
        self.admin_url: str | None = None  # set by the runner when the admin API listens

    def notify(self, subscribers: list[str]) -> None:
        """Wake the named subscribers' claimers: new deliveries were just committed."""
        for name in subscribers:
            dispatcher = self.dispatchers.get(name)
            if dispatcher is not None:
                dispatcher.wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run everything until ``stop`` is set, then shut down in two phases."""
        writer_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(self.results.run(writer_stop), name="result-writer")
            for poller in self.pollers:
                self._spawn(tg, f"poll:{poller.name}", stop, poller.run)
            workers: list[asyncio.Task[None]] = []
            for d in self.dispatchers.values():
                self._spawn(tg, f"claim:{d.name}", stop, d.claim_loop)
                for i in range(d.sub.max_in_flight):
                    workers.append(self._spawn(tg, f"send:{d.name}:{i}", stop, d.worker))
            self._spawn(tg, "maintenance", stop, self._maintain)
            log.info(
                "relay running: %d accounts, %d subscribers",
                len(self.pollers),
                len(self.dispatchers),
            )
            self.started.set()
            await stop.wait()
            log.info("stopping: no new polls or claims; finishing deliveries in flight")
            for d in self.dispatchers.values():
                d.close()  # idle workers return now; busy ones after the delivery in hand
            await self._drain(workers)
            writer_stop.set()
            await writer
            await self._release()
        log.info("stopped")

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

    async def _drain(self, workers: list[asyncio.Task[None]]) -> None:
        grace = self.settings.delivery.grace_period
        if not workers:
            return
        _, late = await asyncio.wait(workers, timeout=grace)
        if late:
            log.warning(
                "%d deliveries still in flight after %.0fs grace: cancelled, retried after restart",
                len(late),
                grace,
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _release(self) -> None:
        ids = [i for d in self.dispatchers.values() for i in d.unfinished()]
        if not ids:
            return
        try:
            # Shielded: this final write must not be lost to a second Ctrl-C.
            await asyncio.shield(self.store.release(ids))
        except StoreError as exc:
            log.error("could not release %d claimed deliveries: %s", len(ids), exc)

    async def _maintain(self, stop: asyncio.Event) -> None:
        """Periodically forget delivered records older than the retention."""
        while True:
            if await wait_or_stop(stop, MAINTENANCE_EVERY):
                return
            cutoff = self._clock() - self.settings.delivery.retention
            try:
                removed = await self.store.prune_delivered(cutoff)
            except StoreError as exc:
                log.warning("pruning delivered records failed: %s", exc)
                continue
            if removed:
                log.info("pruned %d delivered records past retention", removed)
