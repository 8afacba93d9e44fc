"""Choosing a backend from the ``state`` URL, and what a URL may never leak (no server needed)."""

from __future__ import annotations

import pytest

from relay.core.errors import StoreError
from relay.runtime.stores import open_store
from relay.store.postgres import PostgresStore
from relay.store.postgres.connect import parse_target, store_error
from relay.store.sqlite.store import SqliteStore

# -- choosing a backend from a URL -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("./relay-state.db", "./relay-state.db"),
        ("/var/lib/relay/state.db", "/var/lib/relay/state.db"),
        ("sqlite:///relay-state.db", "relay-state.db"),
        ("sqlite:////var/lib/relay/state.db", "/var/lib/relay/state.db"),
        ("  state.db ", "state.db"),
    ],
)
def test_open_store_picks_sqlite(url: str, path: str) -> None:
    s = open_store(url)
    assert isinstance(s, SqliteStore)
    assert s.path == path


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://relay:s3cret@db.example/relay?schema=1bad", "invalid schema name"),
        ("postgresql://relay:s3cret@db.example:port/relay", "invalid PostgreSQL state URL"),
        ("mysql://relay:s3cret@db.example/relay", "unsupported state store scheme 'mysql'"),
        ("sqlite://", "needs a path"),
        ("", "no state store configured"),
        (":memory:", "not an in-memory database"),
    ],
)
def test_open_store_rejects(url: str, expected: str) -> None:
    with pytest.raises(StoreError, match=expected) as caught:
        open_store(url)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "where", "schema"),
    [
        ("postgresql://relay:s3cret@db.example/relay", "postgresql://relay@db.example/relay", None),
        (
            "postgres://relay:s%40cret@db.example:6543/relay?schema=tenant_7&sslmode=require",
            "postgres://relay@db.example:6543/relay?schema=tenant_7",
            "tenant_7",
        ),
        ("postgresql:///relay", "postgresql:///relay", None),
        ("postgresql://[::1]:5432/relay", "postgresql://[::1]:5432/relay", None),
    ],
)
def test_open_store_picks_postgres_and_hides_the_password(
    url: str, where: str, schema: str | None
) -> None:
    s = open_store(url)
    assert isinstance(s, PostgresStore)
    assert (s.target.where, s.target.schema) == (where, schema)
    assert "schema=" not in s.target.dsn  # ours, not a server setting
    assert ("sslmode=require" in s.target.dsn) == ("sslmode" in url)


def test_driver_messages_are_scrubbed_of_the_password() -> None:
    target = parse_target("postgresql://relay:hunter2@db.example/relay")
    error = store_error(target, "claim", OSError("connect to relay:hunter2@db.example failed"))
    assert "hunter2" not in str(error)
    assert str(error).startswith("PostgreSQL postgresql://relay@db.example/relay: claim failed")
