"""A subscriber's rate limit is charged in the store, so a restarted relay (and, on PostgreSQL,
every other instance) sees what was already sent: run on both backends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from relay.config.pace import SubscriberRateLimit
from relay.delivery.pacing import Pace
from relay.store import Store
from tests.helpers import GENEROUS
from tests.store.builders import NOW, opened

LIMIT = SubscriberRateLimit(requests=2, per=3600.0, burst=2)  # a window no test outlasts
KEY = "subscriber:slack"


class Charged:
    """A clock that stands still, and a store wrapper that says when it told a sender to wait."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.waited = asyncio.Event()

    async def spend_budget(self, *args: object, **kwargs: object) -> float:
        wait = await self.store.spend_budget(*args, **kwargs)  # type: ignore[arg-type]
        if wait > 0:
            self.waited.set()
        return wait


async def test_a_restarted_sender_waits_for_what_the_last_one_spent(
    store_factory: Callable[[], Store],
) -> None:
    async with opened(store_factory()) as first:
        pace = Pace(LIMIT, first, KEY, clock=lambda: NOW)
        await asyncio.wait_for(pace.acquire(), GENEROUS)
        await asyncio.wait_for(pace.acquire(), GENEROUS)  # the whole burst, charged durably
    async with opened(store_factory()) as second:
        charged = Charged(second)
        # A fresh process: its local bucket is full, the store's is not.
        again = Pace(LIMIT, charged, KEY, clock=lambda: NOW)  # type: ignore[arg-type]
        sending = asyncio.create_task(again.acquire())
        await asyncio.wait_for(charged.waited.wait(), GENEROUS)
        assert not sending.done()  # told to wait: nothing may be sent yet
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        assert await second.spend_budget(KEY, NOW, 2, LIMIT.per + 0.05, 2) > 0
        # Another subscriber's limit is its own.
        assert await second.spend_budget("subscriber:other", NOW, 2, LIMIT.per, 2) == 0.0
