"""PostgreSQL for tests: the DSN, a probe that skips (or, under ``CI=true``, fails) tests when
no server answers, fresh schemas, and one-off statements outside any store.

Tests read ``RELAY_TEST_POSTGRES_DSN`` (default: the local trust-auth server). Each test gets
a schema of its own (``pg_url`` in tests/conftest.py), dropped afterwards; other test runs
share the server, so a test only ever touches its own schema and its own connections (the
relay names them ``webfones-relay:<schema>``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest

from tests.helpers import GENEROUS

PG_DSN = os.environ.get("RELAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")

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


def new_schema() -> str:
    """A fresh schema name, unique across concurrent test runs."""
    return f"relay_test_{uuid.uuid4().hex[:12]}"


def schema_url(schema: str) -> str:
    """The state URL that puts the relay's tables in ``schema``."""
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


async def pg_fetch(sql: str, *args: object) -> list[Any]:
    """Rows of one query on a connection of its own."""
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def drop_schema(schema: str) -> None:
    """Drop ``schema`` and everything in it (synchronous: runs on a loop of its own)."""
    asyncio.run(pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


async def terminate_relay_connections(schema: str) -> int:
    """``pg_terminate_backend`` every connection the relay opened for ``schema`` (by their
    application_name, ``webfones-relay:<schema>``) and no other. Returns how many."""
    rows = await pg_fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = $1 AND pid <> pg_backend_pid()",
        f"webfones-relay:{schema}",
    )
    return sum(1 for row in rows if row[0])
