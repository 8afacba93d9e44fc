"""Reading a ``postgresql://`` state URL, and turning driver failures into :class:`StoreError`.

The URL is the libpq form asyncpg accepts, plus one parameter of ours: ``schema=NAME`` puts
every table in that schema (created on first open), so several relays or test runs can share a
database without seeing each other. A ``search_path`` parameter works as well (asyncpg passes
unknown parameters to the server as settings); ``schema`` wins when both are given.

Nothing built here ever holds the password in text meant for people: :attr:`Target.where` is
the URL without it, and :func:`store_error` scrubs it from driver messages just in case.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from relay.core.errors import StoreError, StoreFull
from relay.store.postgres.migrations import quote_ident

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"

# What a lost server, a dropped connection or a refused login raise: never a programming error.
DRIVER_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A pooled connection whose server process was terminated while idle can fail its next
    # statement with this rather than a connection error: still the server's doing, not ours.
    asyncpg.exceptions.InternalClientError,
    OSError,  # includes ConnectionError and TimeoutError
)
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
_DISK_FULL = "53100"
APPLICATION_NAME = "webfones-relay"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a PostgreSQL store lives: the URL the driver gets, and what people may see."""

    dsn: str  # for asyncpg: our own parameters removed
    schema: str | None
    where: str  # postgresql://user@host:port/db?schema=…, no password
    password: str | None

    @property
    def application_name(self) -> str:
        """How this store's connections show in ``pg_stat_activity``: with the schema, so that
        relays (or test runs) sharing one server can be told apart."""
        name = APPLICATION_NAME if self.schema is None else f"{APPLICATION_NAME}:{self.schema}"
        return name[:63]  # the server's limit (NAMEDATALEN - 1)

    def settings(self) -> dict[str, str]:
        """Server settings for every connection: the schema and a name in pg_stat_activity."""
        settings = {"application_name": self.application_name}
        if self.schema is not None:
            settings["search_path"] = quote_ident(self.schema)
        return settings

    def connect_args(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect`` and ``asyncpg.create_pool``."""
        return {"dsn": self.dsn, "server_settings": self.settings()}


def parse_target(url: str) -> Target:
    """Split a state URL into what the driver needs and what may be shown."""
    try:
        parts = urlsplit(url.strip())
        password = None if parts.password is None else unquote(parts.password)
        host = parts.hostname or ""
        port = parts.port
    except ValueError as exc:  # e.g. a port that is not a number; the text may hold a password
        raise StoreError(f"invalid PostgreSQL state URL: {type(exc).__name__}") from None
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = None
    kept = []
    for key, value in query:
        if key == "schema":
            schema = value
        else:
            kept.append((key, value))
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise StoreError(
            f"invalid schema name {schema!r} in the PostgreSQL state URL: use letters, digits "
            "and underscores, not starting with a digit"
        )
    user = "" if parts.username is None else f"{unquote(parts.username)}@"
    location = f"[{host}]" if ":" in host else host
    if port is not None:
        location += f":{port}"
    shown = f"{parts.scheme}://{user}{location}{parts.path}"
    if schema is not None:
        shown += f"?schema={schema}"
    dsn = urlunsplit(parts._replace(query=urlencode(kept)))
    return Target(dsn=dsn, schema=schema, where=shown, password=password or None)


def store_error(target: Target, op: str, exc: BaseException) -> StoreError:
    """A :class:`StoreError` (or :class:`StoreFull`) for a failed ``op``, safe to log."""
    if isinstance(exc, asyncpg.PostgresError):
        detail = f"{exc.sqlstate}: {exc}"
    elif isinstance(exc, asyncio.TimeoutError):
        detail = "timed out"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    if target.password:
        detail = detail.replace(target.password, "***")
    if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate == _DISK_FULL:
        return StoreFull(f"PostgreSQL {target.where}: disk full, {op} refused ({detail})")
    return StoreError(f"PostgreSQL {target.where}: {op} failed: {detail}")


async def keep_session(conn: asyncpg.Connection) -> None:
    """What a released connection needs undone before its next use: nothing.

    asyncpg's default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: one more round trip per store operation, and the largest fixed cost of a
    claim or a finish (PostgreSQL CPU per delivery 81 -> 76 us, the client's 73 -> 62 us, in
    claims and finishes of 16). The store leaves nothing behind on a pooled connection: settings
    are ``SET LOCAL`` or connection parameters, cursors live inside transactions, LISTEN has its
    own connection, and the one session lock (maintenance) is released by its holder or ends
    with the connection (see ``relay.store.postgres.retention``). A transaction left open is still
    rolled back by the pool before this is called.
    """


class PoolHost:
    """What the store's mixins (pace, operator queries, shared state) need from the store that
    hosts them: where it lives, its instance id, and connections from its pool."""

    target: Target
    instance_id: str

    def _conn(
        self, op: str
    ) -> contextlib.AbstractAsyncContextManager[PoolConnectionProxy[asyncpg.Record]]:
        """A pooled connection for ``op``; driver failures become StoreError."""
        raise NotImplementedError

    def _tx(
        self, op: str
    ) -> contextlib.AbstractAsyncContextManager[PoolConnectionProxy[asyncpg.Record]]:
        """The same, inside one transaction."""
        raise NotImplementedError
