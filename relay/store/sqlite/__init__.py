"""The embedded default backend: one SQLite file in WAL mode, written from one thread and read
for claims from another."""

from relay.store.sqlite.reader import SqliteSnapshotReader
from relay.store.sqlite.store import SqliteStore

__all__ = ["SqliteSnapshotReader", "SqliteStore"]
