"""One real AccountPoller on a real SQLite store, polling the simulated WebFones over the lean
HTTP client, with the poller's wall clock in the test's hands (``now[0]``); or every account's
poller, run by a real supervisor (``supervised``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

from relay.config.schema import Settings
from relay.http1.client import Http1Client
from relay.ingest.budget import KeyBudget
from relay.ingest.poller import AccountPoller
from relay.ingest.upstream import WebFonesClient
from relay.runtime.supervisor import Supervisor
from relay.runtime.wiring import build_pipeline
from relay.sim.simulator import SimulatedWebFones
from relay.store import Store
from relay.store.sqlite.store import SqliteStore
from tests.helpers import GENEROUS, KEY_A, Sub, make_settings, new_secret

S = TypeVar("S", bound=SqliteStore)


@contextlib.asynccontextmanager
async def simulated() -> AsyncIterator[tuple[SimulatedWebFones, Http1Client]]:
    """The simulator with one account (``alpha`` on ``KEY_A``) and a client session for it."""
    sim = SimulatedWebFones({KEY_A: "alpha"})
    await sim.start()
    try:
        async with Http1Client() as session:
            yield sim, session
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def account_poller(
    store_type: type[S],
    sim: SimulatedWebFones,
    session: Http1Client,
    tmp_path: Path,
    now: list[float],
    start_from: str,
) -> AsyncIterator[tuple[AccountPoller, S]]:
    """A loaded poller for ``alpha`` and its store (a new pair is what a restart sees)."""
    subs = [Sub("crm", "http://127.0.0.1:9/crm", new_secret())]
    conf = make_settings(tmp_path, sim.url, subs, upstream={"start_from": start_from})
    store = store_type(conf.state)
    await store.open()
    try:
        client = WebFonesClient(session, sim.url, timeout=GENEROUS, max_response_bytes=1 << 20)
        budget = KeyBudget(100_000, 10.0)
        account = conf.upstream.accounts[0]
        p = AccountPoller(account, conf, store, client, budget, lambda _: None, lambda: now[0])
        await p.load()
        yield p, store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def supervised(settings: Settings, store: Store) -> AsyncIterator[Supervisor]:
    """The whole pipeline for ``settings`` on ``store`` (opened), run by its supervisor until
    the block ends (no admin surface, no signal handlers, no gc freezes)."""
    async with Http1Client() as http:
        supervisor = Supervisor(settings, build_pipeline(settings, store, http))
        stop = asyncio.Event()
        task = asyncio.ensure_future(supervisor.run(stop))
        try:
            started = asyncio.ensure_future(supervisor.started.wait())
            await asyncio.wait({started, task}, timeout=GENEROUS, return_when="FIRST_COMPLETED")
            started.cancel()
            if task.done():
                task.result()  # raises what stopped it from starting
            assert supervisor.started.is_set(), "the supervisor did not start in time"
            yield supervisor
        finally:
            stop.set()
            await asyncio.wait_for(task, GENEROUS)
