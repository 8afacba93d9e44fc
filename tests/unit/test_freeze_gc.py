"""``relay run`` takes what start-up made out of the garbage collector's reach once it runs."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from relay.runtime.runner import freeze_gc
from relay.sim.simulator import SimulatedWebFones
from relay.store.sqlite.store import SqliteStore
from tests.helpers import GENEROUS, KEY_A, make_settings
from tests.pollers import supervised

KEY_UNKNOWN = "key-unknown-0123456789abcdef"  # the simulator refuses it: 403 on every poll


async def test_start_up_objects_are_frozen_once_the_relay_runs() -> None:
    started = asyncio.Event()
    supervisor: Any = SimpleNamespace(started=started)
    gc.unfreeze()
    try:
        freeze_gc(supervisor)
        await asyncio.sleep(0)
        assert gc.get_freeze_count() == 0, "nothing is frozen before the relay runs"
        started.set()

        async def frozen() -> None:
            while gc.get_freeze_count() == 0:
                await asyncio.sleep(0)

        await asyncio.wait_for(frozen(), GENEROUS)
    finally:
        gc.unfreeze()


# -- the supervisor's signal: every account configured at start has polled once ------------------


class StatusStore(SqliteStore):
    """The real store; ``refused`` is set once an account's key has been recorded as refused."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.refused = asyncio.Event()

    async def set_account_status(
        self, account: str, status: str, error: str | None, now: float
    ) -> None:
        await super().set_account_status(account, status, error, now)
        if status == "auth_failed":
            self.refused.set()


async def test_every_account_polled_once_waits_for_all_and_not_for_one_a_reload_removed(
    tmp_path: Path,
) -> None:
    sim = SimulatedWebFones({KEY_A: "alpha"})
    await sim.start()
    accounts = {"alpha": KEY_A, "stranger": KEY_UNKNOWN}
    settings = make_settings(tmp_path, sim.url, [], accounts=accounts)
    store = StatusStore(settings.state)
    await store.open()
    try:
        async with supervised(settings, store) as sup:
            await asyncio.wait_for(store.refused.wait(), GENEROUS)
            assert not sup.polled_once.is_set(), "stranger has not polled successfully"
            alone = make_settings(tmp_path, sim.url, [], accounts={"alpha": KEY_A})
            await sup._apply(alone)
            await asyncio.wait_for(sup.polled_once.wait(), GENEROUS)
            assert [(p.name, p.polls >= 1) for p in sup.pollers] == [("alpha", True)]
    finally:
        await store.close()
        await sim.stop()
