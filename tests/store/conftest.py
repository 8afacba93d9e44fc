"""Backends for the store suites: every contract test runs once per backend (``store`` and
``store_factory`` are parametrised sqlite|postgres).

PostgreSQL tests use ``RELAY_TEST_POSTGRES_DSN`` (default: the local trust-auth server), each in
a fresh schema dropped afterwards. When that server cannot be reached they are skipped, all with
one reason, except under ``CI=true``, where an unreachable server fails them: CI must test both.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from relay.store import Store
from relay.store.sqlite.store import SqliteStore
from tests.helpers import GENEROUS

PG_DSN = os.environ.get("RELAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]

_reachable: dict[str, str | None] = {}


def _probe() -> str | None:
    """None when PostgreSQL answers, else why not (checked once per session)."""
    if "result" not in _reachable:
        try:
            import asyncpg
        except ImportError:
            _reachable["result"] = "asyncpg is not installed (pip install '.[postgres]')"
            return _reachable["result"]

        async def ping() -> None:
            conn = await asyncpg.connect(PG_DSN, timeout=GENEROUS)
            await conn.close()

        try:
            asyncio.run(ping())
            _reachable["result"] = None
        except Exception as exc:  # any failure to connect means: no server for these tests
            _reachable["result"] = f"PostgreSQL at RELAY_TEST_POSTGRES_DSN unreachable: {exc}"
    return _reachable["result"]


def require_postgres() -> None:
    """Skip (fail under CI=true) the calling test when PostgreSQL cannot be reached."""
    reason = _probe()
    if reason is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL is required)")
    pytest.skip(reason)


def schema_url(schema: str) -> str:
    separator = "&" if "?" in PG_DSN else "?"
    return f"{PG_DSN}{separator}schema={schema}"


async def pg_execute(sql: str, *args: object) -> str:
    """Run one statement on a connection of its own (outside any store)."""
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        return await conn.execute(sql, *args)
    finally:
        await conn.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A state URL for a fresh, empty schema of its own (created by the store, dropped after).

    Synchronous, so that ``store_factory`` can ask for it; the drop runs on a loop of its own.
    """
    require_postgres()
    schema = f"relay_test_{uuid.uuid4().hex[:12]}"
    try:
        yield schema_url(schema)
    finally:
        asyncio.run(pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


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
