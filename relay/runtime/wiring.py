"""The one place that builds the pipeline from settings: the WebFones client, one budget per API
key, one poller per account, one sender and dispatcher per subscriber, and the results writer.

Nothing here runs anything; :class:`~relay.runtime.supervisor.Supervisor` owns the tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import aiohttp

from relay.config.schema import Settings
from relay.core.budget import key_id
from relay.core.status import RelayStatus, RuntimeAccount, RuntimeSubscriber
from relay.delivery.claimer import SubscriberDispatcher
from relay.delivery.http1 import Http1Client
from relay.delivery.results import ResultWriter
from relay.delivery.scheduler import DeliveryScheduler
from relay.delivery.sender import Sender
from relay.ingest.budget import KeyBudget
from relay.ingest.poller import AccountPoller
from relay.ingest.upstream import WebFonesClient
from relay.store.base import Store


@dataclass
class Pipeline:
    """Every part of a running relay, built and wired but not started."""

    store: Store
    pollers: list[AccountPoller]
    dispatchers: dict[str, SubscriberDispatcher]
    results: ResultWriter
    scheduler: DeliveryScheduler

    def notify(self, subscribers: list[str]) -> None:
        """Wake the named subscribers' claimers: new deliveries were just committed."""
        for name in subscribers:
            self.scheduler.wake(name)

    async def status(self, running: bool) -> RelayStatus:
        """The store's snapshot plus what the pollers and dispatchers know."""
        return RelayStatus(
            store=await self.store.stats(),
            running=running,
            pollers={p.name: RuntimeAccount(polls=p.polls) for p in self.pollers},
            dispatchers={
                name: RuntimeSubscriber(held=len(d.unfinished()))
                for name, d in self.dispatchers.items()
            },
        )


def build_pipeline(
    settings: Settings,
    store: Store,
    upstream_session: aiohttp.ClientSession,
    delivery_client: Http1Client,
    clock: Callable[[], float] = time.time,
) -> Pipeline:
    """Build every part from ``settings``; the sessions and the store are handed in, not built."""
    up = settings.upstream
    client = WebFonesClient(
        upstream_session, up.base_url, timeout=up.timeout, max_response_bytes=up.max_response_bytes
    )
    # Accounts that share an API key share its budget: the upstream counts per key.
    budgets: dict[str, KeyBudget] = {}
    for account in up.accounts:
        key = account.api_key.get_secret_value()
        if key not in budgets:
            budgets[key] = KeyBudget(
                up.rate_limit.requests,
                up.rate_limit.per,
                store=store,
                key_id=key_id(key),
                clock=clock,
            )
    results = ResultWriter(store)
    dispatchers = {
        sub.name: SubscriberDispatcher(
            sub,
            settings.delivery,
            store,
            Sender(
                delivery_client,
                sub,
                settings.delivery.response_cap,
                tz=ZoneInfo(up.timezone),
                region=up.phone_region,
            ),
            results,
            clock,
        )
        for sub in settings.subscribers
        if sub.enabled
    }
    scheduler = DeliveryScheduler(
        dispatchers, store, grace=settings.delivery.grace_period, clock=clock
    )
    results.on_written = scheduler.wake
    pipeline = Pipeline(store, [], dispatchers, results, scheduler)
    pipeline.pollers = [
        AccountPoller(
            account,
            settings,
            store,
            client,
            budgets[account.api_key.get_secret_value()],
            pipeline.notify,
            clock,
        )
        for account in up.accounts
    ]
    return pipeline
