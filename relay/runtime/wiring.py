"""The one place that builds the pipeline from settings: the WebFones client, one budget per API
key, one poller per account, one sender and dispatcher per subscriber, and the results writer.

Nothing here runs anything; :class:`~relay.runtime.supervisor.Supervisor` owns the tasks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from relay.config.schema import AccountSettings, Settings, SubscriberSettings
from relay.core.budget import key_id
from relay.core.schedule import start_offset
from relay.core.status import RelayStatus
from relay.delivery.claimer import SubscriberDispatcher
from relay.delivery.results import ResultWriter
from relay.delivery.scheduler import DeliveryScheduler
from relay.delivery.sender import Sender
from relay.http1.client import Http1Client
from relay.ingest.budget import BudgetLedger, KeyBudget
from relay.ingest.cadence import KeyCadence, key_accounts
from relay.ingest.lease import AccountLease, LeaseShare
from relay.ingest.poller import AccountPoller
from relay.ingest.upstream import WebFonesClient
from relay.runtime.cluster import Cluster, new_instance_id
from relay.store.base import Store


@dataclass
class Pipeline:
    """Every part of a running relay, built and wired but not started."""

    store: Store
    pollers: list[AccountPoller]
    dispatchers: dict[str, SubscriberDispatcher]
    results: ResultWriter
    scheduler: DeliveryScheduler
    # What later builds (a reload adding a subscriber or account) need: the HTTP client of
    # both the upstream GETs and the webhook POSTs.
    http: Http1Client | None = None
    client: WebFonesClient | None = None
    budgets: dict[str, KeyBudget] = field(default_factory=dict)
    ledger: BudgetLedger | None = None  # the budgets' durable charges, batched (one store)
    cadences: dict[str, KeyCadence] = field(default_factory=dict)  # by API key, as budgets
    key_accounts: tuple[Settings, dict[str, list[str]]] | None = None  # see _key_accounts
    clock: Callable[[], float] = time.time
    # This process among the instances sharing the store (see relay.runtime.cluster).
    instance: str = ""
    cluster: Cluster | None = None
    share: LeaseShare = field(default_factory=lambda: LeaseShare(0))

    def notify(self, subscribers: list[str]) -> None:
        """Wake the named subscribers' claimers: new deliveries were just committed."""
        for name in subscribers:
            self.scheduler.wake(name)

    async def status(self, running: bool, settings: Settings, now: float) -> RelayStatus:
        """The store's snapshot plus what the pollers and dispatchers know, as of ``now``."""
        store = await self.store.stats()
        dispatchers = {}
        for name, d in self.dispatchers.items():
            live = dataclasses.replace(d.stats, held=len(d.unfinished()))
            live.outcomes, live.latency_counts = dict(live.outcomes), list(live.latency_counts)
            dispatchers[name] = live
        return RelayStatus(
            store=store,
            running=running,
            pollers={p.name: p.snapshot(now) for p in self.pollers},
            dispatchers=dispatchers,
            at=now,
            config_subscribers=[s.name for s in settings.subscribers],
            config_accounts=[a.name for a in settings.upstream.accounts],
        )


def build_pipeline(
    settings: Settings,
    store: Store,
    http: Http1Client,
    clock: Callable[[], float] = time.time,
    instance_id: str | None = None,
) -> Pipeline:
    """Build every part from ``settings``; the HTTP client and the store are handed in, not built.

    ``instance_id`` names this process among the instances sharing the store (default: a
    fresh one). On a shared store each poller holds its account's lease to poll, and claims
    are leased for ``cluster.lease_ttl`` and renewed while held.
    """
    results = ResultWriter(store)
    dispatchers: dict[str, SubscriberDispatcher] = {}
    # One scheduler runs every subscriber's deliveries on demand; it wakes a subscriber when
    # its retries' results are written.
    scheduler = DeliveryScheduler(
        dispatchers, store, grace=settings.delivery.grace_period, clock=clock
    )
    results.on_written = scheduler.wake
    pipeline = Pipeline(store, [], dispatchers, results, scheduler)
    pipeline.http = http
    pipeline.ledger = BudgetLedger(store)
    pipeline.clock = clock
    pipeline.instance = instance_id or new_instance_id()
    pipeline.client = make_client(settings, http, pipeline.instance)
    for sub in settings.subscribers:
        if sub.enabled:
            scheduler.add(make_dispatcher(pipeline, sub, settings))
    pipeline.pollers = [make_poller(pipeline, a, settings) for a in settings.upstream.accounts]
    # Spread over the poll interval: N accounts are N polls spread evenly, not one burst. (With
    # auto, each key's schedule has its own slots: relay.ingest.cadence.)
    interval = settings.upstream.poll_interval
    if not isinstance(interval, str):
        for i, poller in enumerate(pipeline.pollers):
            poller.start_offset = start_offset(i, len(pipeline.pollers), interval)
    pipeline.share.accounts = len(pipeline.pollers)
    pipeline.cluster = Cluster(
        store,
        settings.cluster,
        pipeline.instance,
        dispatchers,
        lambda: [p.lease for p in pipeline.pollers if p.lease is not None],
        pipeline.share,
        lambda names: pipeline.notify(list(dispatchers) if names is None else names),
        clock,
    )
    return pipeline


def make_client(
    settings: Settings, http: Http1Client, instance: str | None = None
) -> WebFonesClient:
    """The WebFones client for ``settings.upstream`` (``instance`` sent as a header)."""
    up = settings.upstream
    return WebFonesClient(
        http,
        up.base_url,
        timeout=up.timeout,
        max_response_bytes=up.max_response_bytes,
        instance=instance,
    )


def make_dispatcher(
    pipeline: Pipeline, sub: SubscriberSettings, settings: Settings
) -> SubscriberDispatcher:
    """One subscriber's dispatcher (its sender on the shared delivery client)."""
    assert pipeline.http is not None
    up = settings.upstream
    sender = Sender(
        pipeline.http,
        sub,
        settings.delivery.response_cap,
        tz=ZoneInfo(up.timezone),
        region=up.phone_region,
    )
    # A shared store: short claim leases, renewed while held by relay.runtime.cluster.
    lease = settings.cluster.lease_ttl if pipeline.store.shared else None
    return SubscriberDispatcher(
        sub, settings.delivery, pipeline.store, sender, pipeline.results, pipeline.clock, lease
    )


def make_poller(pipeline: Pipeline, account: AccountSettings, settings: Settings) -> AccountPoller:
    """One account's poller. Accounts that share an API key share its budget (the upstream
    counts per key), and a budget outlives the pollers using it: a reload must not refill it."""
    assert pipeline.client is not None
    key = account.api_key.get_secret_value()
    limit = settings.upstream.rate_limit
    budget = pipeline.budgets.get(key)
    if budget is None or (budget.requests, budget.per) != (limit.requests, limit.per):
        budget = pipeline.budgets[key] = KeyBudget(
            limit.requests,
            limit.per,
            store=pipeline.store,
            key_id=key_id(key),
            clock=pipeline.clock,
            ledger=pipeline.ledger,
        )
    names = _key_accounts(pipeline, settings).get(key, [account.name])
    total = len(settings.upstream.accounts)
    cadence = pipeline.cadences.get(key)
    if cadence is None:
        cadence = pipeline.cadences[key] = KeyCadence(settings.upstream, names, total)
    else:
        cadence.configure(settings.upstream, names, total)
    lease = None
    if pipeline.store.shared:
        ttl = settings.cluster.lease_ttl
        lease = AccountLease(
            pipeline.store, account.name, pipeline.instance, ttl, pipeline.clock, pipeline.share
        )
    return AccountPoller(
        account,
        settings,
        pipeline.store,
        pipeline.client,
        budget,
        pipeline.notify,
        pipeline.clock,
        lease,
        cadence,
    )


def _key_accounts(pipeline: Pipeline, settings: Settings) -> dict[str, list[str]]:
    """:func:`key_accounts` of ``settings``, worked out once per settings object: asked for by
    each of N pollers, a scan of the N accounts each would make start-up quadratic."""
    cached = pipeline.key_accounts
    if cached is None or cached[0] is not settings:
        cached = pipeline.key_accounts = (settings, key_accounts(settings))
    return cached[1]


def refresh_cadences(pipeline: Pipeline, settings: Settings) -> None:
    """After a reload: every key's schedule follows the new settings and the accounts now on
    it (the pollers that kept running included); a key no longer used is forgotten."""
    keys = _key_accounts(pipeline, settings)
    total = len(settings.upstream.accounts)
    for key in list(pipeline.cadences):
        if key in keys:
            pipeline.cadences[key].configure(settings.upstream, keys[key], total)
        else:
            del pipeline.cadences[key]
