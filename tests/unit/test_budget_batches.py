"""The durable budget charges of many keys go to the store in batches
(:class:`relay.ingest.budget.BudgetLedger`): the accounts of one slot pay in one transaction,
each charge answered as if alone, none lost or answered twice when a caller is cancelled or the
store fails. Against the real SQLite store; a batch is held in the store by an event, never by
time. (That a batch answers as the same spends one by one is in the store contract suite.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from relay.core.budget import Charge
from relay.core.errors import StoreError
from relay.ingest.budget import BudgetLedger, KeyBudget
from relay.store.sqlite.store import SqliteStore
from tests.helpers import sqlite_rows, wait_until_async

REQUESTS, PER = 100, 60.0


class HeldStore(SqliteStore):
    """The real store, keeping every batch it was sent and holding each while ``gate`` is
    clear; ``fail`` makes the next batch fail."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.batches: list[list[str]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail = False

    async def spend_budgets(self, charges: Sequence[Charge]) -> list[float]:
        self.batches.append([c.key_id for c in charges])
        await self.gate.wait()
        if self.fail:
            self.fail = False
            raise StoreError("the state file is gone")
        return await super().spend_budgets(charges)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[HeldStore]:
    s = HeldStore(str(tmp_path / "state.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def budgets(store: HeldStore, ledger: BudgetLedger, n: int, prefix: str = "k") -> list[KeyBudget]:
    return [
        KeyBudget(REQUESTS, PER, store=store, key_id=f"{prefix}{i}", ledger=ledger)
        for i in range(n)
    ]


def charged(store: HeldStore) -> list[str]:
    return sorted(r[0] for r in sqlite_rows(store.path, "SELECT key_id FROM budget_buckets"))


async def test_keys_due_together_pay_in_one_batch(store: HeldStore) -> None:
    ledger = BudgetLedger(store)
    keys = budgets(store, ledger, 30)
    await asyncio.gather(*(b.acquire() for b in keys))
    assert store.batches == [[f"k{i}" for i in range(30)]]
    assert charged(store) == sorted(f"k{i}" for i in range(30))


async def test_charges_arriving_during_a_batch_form_the_next(store: HeldStore) -> None:
    ledger = BudgetLedger(store)
    first, second = budgets(store, ledger, 5, "a"), budgets(store, ledger, 7, "b")
    store.gate.clear()
    early = [asyncio.ensure_future(b.acquire()) for b in first]
    await wait_until_async(lambda: _true(len(store.batches) == 1))
    late = [asyncio.ensure_future(b.acquire()) for b in second]
    await wait_until_async(lambda: _true(ledger.queued == 7))
    assert len(store.batches) == 1, "nothing more is sent while a batch is in the store"
    store.gate.set()
    await asyncio.gather(*early, *late)
    assert [len(b) for b in store.batches] == [5, 7]
    assert len(charged(store)) == 12


async def test_a_failed_batch_fails_each_of_its_charges_once(store: HeldStore) -> None:
    ledger = BudgetLedger(store)
    keys = budgets(store, ledger, 4)
    store.fail = True
    results = await asyncio.gather(*(b.acquire() for b in keys), return_exceptions=True)
    assert all(isinstance(r, StoreError) for r in results)
    assert charged(store) == []
    await asyncio.gather(*(b.acquire() for b in keys))  # the next batch works
    assert len(charged(store)) == 4


async def test_a_charge_cancelled_before_its_batch_leaves_is_not_paid(store: HeldStore) -> None:
    ledger = BudgetLedger(store)
    held, dropped = budgets(store, ledger, 2, "h"), budgets(store, ledger, 1, "x")[0]
    store.gate.clear()
    first = [asyncio.ensure_future(b.acquire()) for b in held]
    await wait_until_async(lambda: _true(len(store.batches) == 1))
    gone = asyncio.ensure_future(dropped.acquire())
    await wait_until_async(lambda: _true(ledger.queued == 1))
    gone.cancel()
    # The first caller of the batch in the store is cancelled too: the other still gets its
    # answer, and the batch commits whole.
    first[0].cancel()
    store.gate.set()
    await first[1]
    assert first[0].cancelled() and gone.cancelled()
    assert store.batches == [["h0", "h1"]], "the cancelled charge was never sent"
    assert charged(store) == ["h0", "h1"]
    assert ledger.queued == 0 and dropped.waiting == 0


async def _true(value: bool) -> bool:
    return value
