"""The supervisor: owns every long-lived task of a built pipeline (see :mod:`relay.runtime.wiring`).

Nothing else creates long-lived tasks; the delivery scheduler (one of them) owns the short-lived
tasks a subscriber runs while it has work. Shutdown is two-phase, started by one ``stop`` event
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

from relay.config.schema import Settings
from relay.core.aio import wait_or_stop
from relay.core.errors import StoreError
from relay.core.status import RelayStatus
from relay.runtime import maintenance
from relay.runtime.wiring import Pipeline

log = logging.getLogger(__name__)

RESTART_DELAY = 5.0  # a loop that crashed on a bug is restarted after this pause


class Supervisor:
    """Runs a built :class:`~relay.runtime.wiring.Pipeline` until ``stop``; the admin surface
    reaches it through the :class:`~relay.ops.control.RelayControl` interface it implements."""

    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.store = pipeline.store
        self.pollers = pipeline.pollers
        self.dispatchers = pipeline.dispatchers
        self.results = pipeline.results
        self._clock = clock
        self.started = asyncio.Event()
        self._stopping = False
        self.admin_url: str | None = None  # set by the runner when the admin API listens

    # -- RelayControl ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.started.is_set() and not self._stopping

    @property
    def subscriber_names(self) -> list[str]:
        return list(self.dispatchers)

    async def status(self) -> RelayStatus:
        return await self.pipeline.status(running=self.ready)

    def wake(self, subscribers: list[str] | None = None) -> None:
        self.pipeline.notify(list(self.dispatchers) if subscribers is None else subscribers)

    async def run(self, stop: asyncio.Event) -> None:
        """Run everything until ``stop`` is set, then shut down in two phases."""
        writer_stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            writer = tg.create_task(self.results.run(writer_stop), name="result-writer")
            for poller in self.pollers:
                self._spawn(tg, f"poll:{poller.name}", stop, poller.run)
            # One task for every subscriber: dispatchers run on demand, not on timers.
            scheduler = self._spawn(tg, "delivery", stop, self.pipeline.scheduler.run)
            self._spawn(tg, "maintenance", stop, self._maintain)
            log.info(
                "relay running: %d accounts, %d subscribers",
                len(self.pollers),
                len(self.dispatchers),
            )
            self.started.set()
            await stop.wait()
            self._stopping = True
            log.info("stopping: no new polls or claims; finishing deliveries in flight")
            # The scheduler stops claiming at once and lets in-flight deliveries finish
            # within the grace period (cancelling the rest).
            await scheduler
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
        """Run a maintenance pass :data:`maintenance.FIRST_AFTER` after start, then every
        :data:`maintenance.EVERY` (see :mod:`relay.runtime.maintenance`)."""
        delay = maintenance.FIRST_AFTER
        while not await wait_or_stop(stop, delay):
            delay = maintenance.EVERY
            try:
                await maintenance.maintain(self.store, self.settings, self._clock())
            except StoreError as exc:
                log.warning("maintenance failed, tried again in %.0fs: %s", delay, exc)
