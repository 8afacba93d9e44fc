"""The PostgreSQL schema, as numbered migrations applied in one transaction under a lock.

Several relay instances may start at the same moment against one empty database. Each takes a
transaction-scoped advisory lock keyed by the target schema before it looks at anything, so
exactly one of them creates the tables and the others then find the schema current. Because
PostgreSQL DDL is transactional, a migration interrupted half-way (killed instance, dropped
connection) leaves nothing behind: the next start redoes it from the version that committed.

Timestamps and queue times are ``double precision`` epoch seconds, like the SQLite backend's
``REAL`` columns, so both backends return the same numbers. The upstream's ``call_timestamp``
text is compared as text, so those columns use the "C" collation: a locale collation may weigh
digits and punctuation differently and change the order of ``2024-05-01 10:00:00`` strings.
"""

from __future__ import annotations

import logging

import asyncpg

from relay.core.errors import StoreError

log = logging.getLogger(__name__)

# Version 1: the SQLite backend's tables (schema versions 1 and 2 there), plus what only a
# shared database needs: claim owners and fencing tokens, an instance registry, account leases
# and shared API budgets.
SCHEMA_V1 = """
CREATE TABLE cursors (
    account       text PRIMARY KEY,
    newest        text COLLATE "C",
    last_sweep    double precision,
    sweep_anchor  text COLLATE "C"
);
CREATE TABLE seen (
    account  text NOT NULL,
    rid      bigint NOT NULL,
    call_ts  text COLLATE "C" NOT NULL,
    seen_at  double precision NOT NULL,
    PRIMARY KEY (account, rid)
);
CREATE INDEX seen_age ON seen (account, call_ts);
CREATE TABLE records (
    id           bigserial PRIMARY KEY,
    account      text NOT NULL,
    rid          bigint NOT NULL,
    call_ts      text COLLATE "C" NOT NULL,
    received_at  double precision NOT NULL,
    body         bytea NOT NULL
);
CREATE INDEX records_received ON records (received_at, id);
CREATE SEQUENCE claim_tokens;
CREATE TABLE deliveries (
    id           bigserial PRIMARY KEY,
    record_id    bigint NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    subscriber   text NOT NULL,
    state        text NOT NULL CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
    attempts     integer NOT NULL DEFAULT 0,
    next_at      double precision NOT NULL,
    lease_until  double precision,
    owner        text,
    token        bigint,
    last_status  integer,
    last_error   text,
    updated_at   double precision NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (subscriber, next_at, id) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (subscriber, lease_until) WHERE state = 'inflight';
CREATE INDEX deliveries_owner ON deliveries (owner) WHERE state = 'inflight';
CREATE INDEX deliveries_done ON deliveries (subscriber) WHERE state = 'delivered';
CREATE INDEX deliveries_dead ON deliveries (subscriber, updated_at) WHERE state = 'dead';
CREATE INDEX deliveries_record ON deliveries (record_id, state);
CREATE TABLE attempts (
    id           bigserial PRIMARY KEY,
    delivery_id  bigint NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    at           double precision NOT NULL,
    status       integer,
    error        text,
    latency_ms   double precision NOT NULL,
    response     text NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);
CREATE TABLE quarantine (
    id       bigserial PRIMARY KEY,
    account  text NOT NULL,
    raw      bytea NOT NULL,
    reason   text NOT NULL,
    at       double precision NOT NULL
);
CREATE TABLE account_status (
    account     text PRIMARY KEY,
    status      text NOT NULL,
    error       text,
    updated_at  double precision NOT NULL
);
CREATE TABLE subscriber_state (
    subscriber       text PRIMARY KEY,
    disabled_reason  text,
    updated_at       double precision NOT NULL
);
CREATE TABLE instances (
    id            text PRIMARY KEY,
    started_at    double precision NOT NULL,
    heartbeat_at  double precision NOT NULL,
    expires_at    double precision NOT NULL
);
CREATE TABLE account_leases (
    account     text PRIMARY KEY,
    owner       text NOT NULL,
    expires_at  double precision NOT NULL,
    epoch       bigint NOT NULL
);
CREATE TABLE budget_buckets (
    key_id        text PRIMARY KEY,
    level         double precision NOT NULL,
    at            double precision NOT NULL,
    paused_until  double precision
)
"""

# Version 2 (issue 8 #7, #8; the SQLite backend's version 4): a quarantined record is kept once
# per account and content (its SHA-256 digest, as relay.core.models.quarantine_digest computes
# it), with when it was first and last seen; a subscriber no longer configured is stamped with
# when that was found; dead letters are found by age.
SCHEMA_V2 = """
ALTER TABLE quarantine ADD COLUMN digest bytea;
ALTER TABLE quarantine ADD COLUMN last_at double precision;
ALTER TABLE quarantine ADD COLUMN times integer NOT NULL DEFAULT 1;
UPDATE quarantine SET digest = sha256(convert_to(account, 'UTF8') || '\\x00'::bytea || raw),
                      last_at = at;
WITH kept AS (
    SELECT digest, min(id) AS id, max(last_at) AS last_at, count(*) AS times
    FROM quarantine GROUP BY digest
), dropped AS (
    DELETE FROM quarantine AS q USING kept WHERE q.digest = kept.digest AND q.id <> kept.id
)
UPDATE quarantine AS q SET last_at = kept.last_at, times = kept.times
FROM kept WHERE q.id = kept.id;
ALTER TABLE quarantine ALTER COLUMN digest SET NOT NULL;
ALTER TABLE quarantine ALTER COLUMN last_at SET NOT NULL;
ALTER TABLE quarantine ADD CONSTRAINT quarantine_digest UNIQUE (digest);
CREATE INDEX quarantine_seen ON quarantine (last_at);
CREATE INDEX deliveries_dead_age ON deliveries (updated_at) WHERE state = 'dead';
ALTER TABLE subscriber_state ADD COLUMN orphaned_at double precision
"""

# Version 3: each subscriber's circuit breaker and 429 pause, and the head of each queue as one
# index step (SQLite's version 5).
SCHEMA_V3 = """
CREATE TABLE subscriber_circuit (
    subscriber     text PRIMARY KEY,
    failures       integer NOT NULL,
    failing_since  double precision,
    opened_at      double precision,
    paused_until   double precision,
    updated_at     double precision NOT NULL
);
CREATE INDEX deliveries_queue ON deliveries (subscriber, id) WHERE state = 'pending'
"""

# Version 4: attempts keep their delivery's id without a foreign key. The key's check ran once
# per attempt row (a trigger, a query and a row lock with its WAL record): 12 of the 45 us of
# PostgreSQL CPU per delivered row. The store keeps what the key kept instead: an attempt is
# written only for a delivery its finish holds locked, and whatever deletes deliveries deletes
# their attempts after them, in the same transaction (relay.store.postgres.sql.FINISH and
# relay.store.postgres.retention). Found by catalogue, not name, in case it was renamed.
SCHEMA_V4 = """
DO $$
DECLARE
    fk name;
BEGIN
    FOR fk IN
        SELECT conname FROM pg_constraint
        WHERE contype = 'f' AND conrelid = 'attempts'::regclass
          AND confrelid = 'deliveries'::regclass
    LOOP
        EXECUTE format('ALTER TABLE attempts DROP CONSTRAINT %I', fk);
    END LOOP;
END
$$
"""

# Version 5: two indexes no query reads, dropped. `deliveries_done` held every delivered row
# (the bulk of the table while retention keeps them) and `deliveries_owner` every claimed one;
# each claim and each result wrote an entry in one of them (about 2 of the ~43 us of backend
# CPU per delivery in `python -m bench.pgstore`). Recovering a dead instance's claims reads the
# claimed rows through `deliveries_leased`, which holds exactly those.
SCHEMA_V5 = """
DROP INDEX IF EXISTS deliveries_done;
DROP INDEX IF EXISTS deliveries_owner
"""

# MIGRATIONS[n] takes a schema from version n to n + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5)

VERSION_TABLE = "relay_schema"
# A table of ours that a foreign schema is unlikely to have: present without VERSION_TABLE, the
# schema belongs to something else (or to a broken manual copy) and is left alone.
OUR_TABLES = ("cursors", "seen", "records", "deliveries", "attempts")
_LOCK_CLASS = 0x52454C59  # "RELY": the advisory-lock namespace of the relay's migrations


def quote_ident(name: str) -> str:
    """``name`` as a PostgreSQL identifier, quoted so any text is taken literally."""
    return '"' + name.replace('"', '""') + '"'


async def target_schema(conn: asyncpg.Connection, configured: str | None) -> str:
    """The schema the store lives in: the configured one, else the connection's current one."""
    if configured is not None:
        return configured
    current = await conn.fetchval("SELECT current_schema()")
    if current is None:
        raise StoreError("no schema to create the relay's tables in: the search_path is empty")
    return str(current)


async def migrate(conn: asyncpg.Connection, schema: str, *, create_schema: bool) -> int:
    """Bring ``schema`` to the newest version; returns how many migrations were applied.

    Everything happens in one transaction that first takes an advisory lock keyed by the
    schema, so concurrent starts serialise here and the losers find nothing left to do.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", _LOCK_CLASS, schema)
        if create_schema:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        version = await _version(conn, schema)
        if version > len(MIGRATIONS):
            raise StoreError(
                f"PostgreSQL schema {schema!r} has relay schema version {version}, newer than "
                f"this relay understands ({len(MIGRATIONS)}); upgrade the relay"
            )
        if version == len(MIGRATIONS):
            return 0
        # Unqualified names in the migration SQL land in this schema, whatever the search_path.
        await conn.execute("SELECT set_config('search_path', $1, true)", quote_ident(schema))
        if version == 0:
            await conn.execute(f"CREATE TABLE {VERSION_TABLE} (version integer NOT NULL)")
            await conn.execute(f"INSERT INTO {VERSION_TABLE} VALUES (0)")
        for step in MIGRATIONS[version:]:
            await conn.execute(step)
        await conn.execute(f"UPDATE {VERSION_TABLE} SET version = $1", len(MIGRATIONS))
    applied = len(MIGRATIONS) - version
    log.info("PostgreSQL schema %r migrated to version %d", schema, len(MIGRATIONS))
    return applied


async def _version(conn: asyncpg.Connection, schema: str) -> int:
    tables = {
        str(row[0])
        for row in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema
        )
    }
    if VERSION_TABLE in tables:
        value = await conn.fetchval(f"SELECT version FROM {quote_ident(schema)}.{VERSION_TABLE}")
        return int(value or 0)
    if tables.intersection(OUR_TABLES):
        raise StoreError(
            f"PostgreSQL schema {schema!r} has tables named like the relay's but no "
            f"{VERSION_TABLE} table; it belongs to something else: use an empty schema"
        )
    return 0
