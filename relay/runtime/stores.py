"""Picks the state backend from the configured ``state`` URL: the only module that imports a
concrete store. Backends are imported lazily, so a deployment needs only the driver it uses.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from relay.core.errors import StoreError
from relay.store.base import Store, StoreReader

__all__ = ["open_reader", "open_store"]

_SQLITE_PREFIX = "sqlite://"


def open_store(url: str) -> Store:
    """Build (but do not open) the store named by ``url``.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db`` (SQLAlchemy's convention) or
    a plain filesystem path select the SQLite backend; ``postgresql://`` and ``postgres://``
    the PostgreSQL one (``?schema=NAME`` puts its tables in that schema). Anything else
    raises :class:`StoreError` naming only the scheme, so a
    URL's credentials never reach a log.
    """
    url = url.strip()
    if not url:
        raise StoreError("no state store configured; use a sqlite path such as ./relay-state.db")
    if "://" not in url:
        return _sqlite(url)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        path = url[len(_SQLITE_PREFIX) :]
        if not path.startswith("/") or path == "/":
            raise StoreError("a sqlite state URL needs a path: sqlite:///relay-state.db")
        return _sqlite(path[1:])
    if scheme in ("postgresql", "postgres"):
        return _postgres(url)
    raise StoreError(
        f"unsupported state store scheme {scheme!r}; use a sqlite path or a postgresql:// URL"
    )


def _postgres(url: str) -> Store:
    try:
        from relay.store.postgres import PostgresStore
    except ImportError as exc:  # asyncpg is an optional dependency
        raise StoreError(
            "the PostgreSQL backend needs asyncpg: pip install 'webfones-relay[postgres]'"
        ) from exc
    return PostgresStore(url)


def open_reader(url: str) -> StoreReader:
    """Build (but do not open) a read-only view of the state named by ``url`` that works
    while a relay owns it: for SQLite a snapshot reader that takes no lock; a shared backend
    (PostgreSQL) is read through its ordinary store."""
    store = open_store(url)
    from relay.store.sqlite import SqliteSnapshotReader, SqliteStore

    if isinstance(store, SqliteStore):
        return SqliteSnapshotReader(store.path)
    return store


def _sqlite(path: str) -> Store:
    if path == ":memory:" or path.startswith("file:"):
        # An in-memory database would silently lose every call on restart.
        raise StoreError("the state store must be a file path, not an in-memory database")
    from relay.store.sqlite import SqliteStore

    return SqliteStore(os.path.expanduser(path))
