"""The API budget on SQLite (schema version 3) is durable: what a key spent, and a pause,
survive closing the file (or kill -9), and only a digest of the key is stored. How the bucket
admits and refuses is the store contract (``test_contract.py``), the same on every backend."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.core.budget import bucket_params, key_id
from relay.store.sqlite import sql as backend
from relay.store.sqlite.store import SqliteStore
from tests.helpers import KEY_A, sqlite_rows

T0 = 1_764_400_000.0  # wall-clock seconds, as the relay passes them
REQUESTS, PER = 6, 10.0  # burst 1: one request every 10.1 / 6 s


@pytest.fixture
async def path(tmp_path: Path) -> AsyncIterator[str]:
    yield str(tmp_path / "state.db")


async def reopen(path: str) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    return store


async def test_what_a_key_spent_survives_a_restart(path: str) -> None:
    interval = bucket_params(REQUESTS, PER, 1)[1]
    first = await reopen(path)
    assert await first.spend_budget(key_id(KEY_A), T0, REQUESTS, PER) == 0.0
    await first.close()  # each charge was its own commit: a kill -9 leaves the same
    second = await reopen(path)
    try:
        # A fresh process, but not a fresh bucket: the next request waits out the interval.
        wait = await second.spend_budget(key_id(KEY_A), T0 + 0.5, REQUESTS, PER)
        assert wait == pytest.approx(interval - 0.5)
        assert await second.spend_budget(key_id(KEY_A), T0 + 0.5 + wait, REQUESTS, PER) == 0.0
        # Another key has its own bucket.
        assert await second.spend_budget(key_id("other"), T0 + 0.5, REQUESTS, PER) == 0.0
    finally:
        await second.close()


async def test_a_pause_survives_a_restart(path: str) -> None:
    first = await reopen(path)
    await first.pause_budget("k", T0 + 60)
    await first.pause_budget("k", T0 + 30)  # shorter: changes nothing
    await first.close()
    second = await reopen(path)
    try:
        assert await second.spend_budget("k", T0, REQUESTS, PER) == pytest.approx(60.0)
        assert await second.spend_budget("k", T0 + 60, REQUESTS, PER) == 0.0
    finally:
        await second.close()


async def test_only_a_digest_of_the_key_is_stored(path: str) -> None:
    digest = key_id(KEY_A)
    assert len(digest) == 16 and int(digest, 16) >= 0 and KEY_A not in digest
    assert key_id(KEY_A) == digest != key_id(KEY_A + "x")  # stable, and per key
    store = await reopen(path)
    try:
        await store.spend_budget(digest, T0, REQUESTS, PER)
    finally:
        await store.close()
    assert sqlite_rows(path, "SELECT key_id FROM budget_buckets") == [(digest,)]
    for file in Path(path).parent.glob("state.db*"):
        assert KEY_A.encode() not in file.read_bytes()


async def test_a_version_2_file_gains_the_budget_table(path: str) -> None:
    with sqlite3.connect(path) as conn:
        for step in backend.MIGRATIONS[:2]:
            conn.executescript(step)
        conn.execute("PRAGMA user_version = 2")
    conn.close()
    store = await reopen(path)
    try:
        assert await store.spend_budget("k", T0, 1, 10.0) == 0.0
    finally:
        await store.close()
    assert sqlite_rows(path, "PRAGMA user_version") == [(len(backend.MIGRATIONS),)]
    assert sqlite_rows(path, "SELECT key_id FROM budget_buckets") == [("k",)]
