"""``relay run`` takes what start-up made out of the garbage collector's reach once it runs, and
what the first polls made once every account has polled once (or after a bound); its process
collects the youngest generation less often and hands the GIL over sooner (tune_interpreter)."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from relay.runtime.runner import SWITCH_INTERVAL, YOUNG_GENERATION, freeze_gc, tune_interpreter
from relay.sim.simulator import SimulatedWebFones
from relay.store.sqlite.store import SqliteStore
from tests.helpers import GENEROUS, KEY_A, make_settings
from tests.pollers import supervised

KEY_UNKNOWN = "key-unknown-0123456789abcdef"  # the simulator refuses it: 403 on every poll


class Watched(asyncio.Event):
    """An event that tells when someone has started waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.awaited = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.awaited.set()
        return await super().wait()


def frozen(obj: object) -> bool:
    """Whether ``obj`` is in the permanent generation (tracked, but out of every collection)."""
    return gc.is_tracked(obj) and not any(o is obj for o in gc.get_objects())


def fake_supervisor() -> Any:
    return SimpleNamespace(started=asyncio.Event(), polled_once=Watched())


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test starts and ends with nothing frozen (what it froze is collectable again) and
    with the collector's thresholds as they were."""
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


async def test_start_up_objects_are_frozen_once_the_relay_runs() -> None:
    supervisor = fake_supervisor()
    settings: list[Any] = [{"accounts": []}]  # what start-up makes and keeps
    task = freeze_gc(supervisor)
    await asyncio.sleep(0)
    assert gc.get_freeze_count() == 0, "nothing is frozen before the relay runs"
    supervisor.started.set()
    # Frozen before it waits for the first polls.
    await asyncio.wait_for(supervisor.polled_once.awaited.wait(), GENEROUS)
    assert frozen(settings)
    supervisor.polled_once.set()
    await asyncio.wait_for(task, GENEROUS)


def test_a_relay_process_collects_its_young_generation_less_often_and_switches_sooner() -> None:
    interval = sys.getswitchinterval()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's defaults
        sys.setswitchinterval(0.005)
        tune_interpreter()
        assert gc.get_threshold() == (YOUNG_GENERATION, 10, 10)
        assert sys.getswitchinterval() == pytest.approx(SWITCH_INTERVAL)
        assert SWITCH_INTERVAL < 0.005 and YOUNG_GENERATION > 700
    finally:
        sys.setswitchinterval(interval)


async def test_freezing_leaves_the_thresholds_alone() -> None:
    gc.set_threshold(700, 10, 10)
    supervisor = fake_supervisor()
    task = freeze_gc(supervisor)
    supervisor.started.set()
    await asyncio.wait_for(supervisor.polled_once.awaited.wait(), GENEROUS)
    supervisor.polled_once.set()
    await asyncio.wait_for(task, GENEROUS)
    assert gc.get_threshold() == (700, 10, 10)


async def test_what_the_first_polls_made_is_frozen_once_every_account_polled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.runtime.runner")
    supervisor = fake_supervisor()
    # A bound far beyond the test's own: only the event can end the wait.
    task = freeze_gc(supervisor, first_polls_within=2 * GENEROUS)
    supervisor.started.set()
    await asyncio.wait_for(supervisor.polled_once.awaited.wait(), GENEROUS)
    made: list[Any] = [{"connection": []}]  # what the first polls make and keep
    assert not task.done(), "the second freeze waits for every account's first poll"
    assert not frozen(made)
    supervisor.polled_once.set()
    await asyncio.wait_for(task, GENEROUS)
    assert frozen(made)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(lines) == 1 and "every account polled" in lines[0], lines
    assert "not every" not in lines[0]


async def test_the_second_freeze_comes_after_a_bound_when_some_account_never_polls(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.runtime.runner")
    supervisor = fake_supervisor()
    task = freeze_gc(supervisor, first_polls_within=0.01)
    supervisor.started.set()
    await asyncio.wait_for(supervisor.polled_once.awaited.wait(), GENEROUS)
    made: list[Any] = [{"connection": []}]
    assert not frozen(made)
    await asyncio.wait_for(task, GENEROUS)  # polled_once is never set
    assert frozen(made)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(lines) == 1 and "not every account polled" in lines[0], lines


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
