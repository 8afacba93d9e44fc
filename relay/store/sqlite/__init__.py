"""The embedded default backend: one SQLite file in WAL mode, driven from one thread."""

from relay.store.sqlite.reader import SqliteSnapshotReader
from relay.store.sqlite.store import SqliteStore

__all__ = ["SqliteSnapshotReader", "SqliteStore"]
