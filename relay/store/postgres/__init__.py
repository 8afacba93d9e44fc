"""The PostgreSQL backend: one database shared by several relay instances (needs ``asyncpg``,
the ``postgres`` extra). Imported lazily by :mod:`relay.runtime.stores`."""

from relay.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
