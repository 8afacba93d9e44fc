"""Backends for the store suites: every contract test runs once per backend (``store`` and
``store_factory`` are parametrised sqlite|postgres).

PostgreSQL tests use ``RELAY_TEST_POSTGRES_DSN`` (default: the local trust-auth server), each in
a fresh schema dropped afterwards. When that server cannot be reached they are skipped, all with
one reason, except under ``CI=true``, where an unreachable server fails them: CI must test both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from relay.store import Store
from relay.store.sqlite.store import SqliteStore
from tests.pg import require_postgres

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    if name == "postgres":
        require_postgres()
    return name


@pytest.fixture
def store_factory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[[], Store]:
    """Makes unopened stores that all point at the same (fresh) state."""
    if backend == "sqlite":
        path = str(tmp_path / "state.db")
        return lambda: SqliteStore(path)
    from relay.store.postgres import PostgresStore

    url: str = request.getfixturevalue("pg_url")
    return lambda: PostgresStore(url)


@pytest.fixture
async def store(store_factory: Callable[[], Store]) -> AsyncIterator[Store]:
    s = store_factory()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
