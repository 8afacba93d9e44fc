"""The SQLite backend's schema and its migrations, how a connection is configured and checked,
and the small helpers every transaction uses (see :mod:`relay.store.sqlite.sql`)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from relay.core.errors import StoreError
from relay.core.models import quarantine_digest

log = logging.getLogger(__name__)

T = TypeVar("T")

# Version 1 of the schema. Statements are separated by ";" (none may contain one).
SCHEMA_V1 = """
CREATE TABLE cursors (
    account     TEXT PRIMARY KEY,
    newest      TEXT,
    last_sweep  REAL
);
CREATE TABLE seen (
    account  TEXT NOT NULL,
    rid      INTEGER NOT NULL,
    call_ts  TEXT NOT NULL,
    seen_at  REAL NOT NULL,
    PRIMARY KEY (account, rid)
) WITHOUT ROWID;
CREATE INDEX seen_age ON seen (account, call_ts);
CREATE TABLE records (
    id           INTEGER PRIMARY KEY,
    account      TEXT NOT NULL,
    rid          INTEGER NOT NULL,
    call_ts      TEXT NOT NULL,
    received_at  REAL NOT NULL,
    body         BLOB NOT NULL
);
CREATE INDEX records_received ON records (received_at);
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    record_id    INTEGER NOT NULL REFERENCES records (id) ON DELETE CASCADE,
    subscriber   TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'inflight', 'delivered', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    lease_until  REAL,
    last_status  INTEGER,
    last_error   TEXT,
    updated_at   REAL NOT NULL
);
-- One partial index per state, each as small as that state: claim walks 'deliveries_due' in
-- order and stops after ``limit`` rows, expired leases (rare) are found through
-- 'deliveries_leased', and stats counts every state from an index without sorting the table.
CREATE INDEX deliveries_due ON deliveries (subscriber, next_at) WHERE state = 'pending';
CREATE INDEX deliveries_leased ON deliveries (subscriber, lease_until) WHERE state = 'inflight';
CREATE INDEX deliveries_done ON deliveries (subscriber) WHERE state = 'delivered';
CREATE INDEX deliveries_dead ON deliveries (subscriber, updated_at) WHERE state = 'dead';
CREATE INDEX deliveries_record ON deliveries (record_id, state);
CREATE TABLE attempts (
    delivery_id  INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    at           REAL NOT NULL,
    status       INTEGER,
    error        TEXT,
    latency_ms   REAL NOT NULL,
    response     TEXT NOT NULL
);
CREATE INDEX attempts_delivery ON attempts (delivery_id);
CREATE TABLE quarantine (
    id       INTEGER PRIMARY KEY,
    account  TEXT NOT NULL,
    raw      BLOB NOT NULL,
    reason   TEXT NOT NULL,
    at       REAL NOT NULL
);
CREATE TABLE account_status (
    account     TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    error       TEXT,
    updated_at  REAL NOT NULL
);
CREATE TABLE subscriber_state (
    subscriber       TEXT PRIMARY KEY,
    disabled_reason  TEXT,
    updated_at       REAL NOT NULL
)
"""

# Version 2: the sweep anchor is kept (it lived in memory, so the first sweep after a restart
# read back from the current cursor and could miss a record written late behind the old one).
SCHEMA_V2 = "ALTER TABLE cursors ADD COLUMN sweep_anchor TEXT"

# Version 3: each API key's budget bucket (see relay.store.sqlite.ledger), so that a restarted
# relay does not spend again a window its previous process already spent (it lived in memory).
# ``key_id`` is a digest of the key, never the key.
SCHEMA_V3 = """
CREATE TABLE budget_buckets (
    key_id        TEXT PRIMARY KEY,
    level         REAL NOT NULL,
    at            REAL NOT NULL,
    paused_until  REAL
)
"""

# Version 4 (issue 8 #7, #8): a quarantined record is kept once per account and content (its
# digest), with when it was first and last seen, so that a restart does not keep it again and
# retention can forget it; a subscriber no longer configured is stamped with when that was
# found; dead letters are found by age. Self-contained: it needs nothing of version 3.
SCHEMA_V4 = """
CREATE TABLE quarantine_v4 (
    id       INTEGER PRIMARY KEY,
    account  TEXT NOT NULL,
    digest   BLOB NOT NULL UNIQUE,
    raw      BLOB NOT NULL,
    reason   TEXT NOT NULL,
    at       REAL NOT NULL,
    last_at  REAL NOT NULL,
    times    INTEGER NOT NULL DEFAULT 1
);
INSERT INTO quarantine_v4 (account, digest, raw, reason, at, last_at)
SELECT account, relay_quarantine_digest(account, raw), raw, reason, at, at
FROM quarantine WHERE true ORDER BY id
ON CONFLICT (digest) DO UPDATE
SET last_at = max(last_at, excluded.last_at), times = times + 1;
DROP TABLE quarantine;
ALTER TABLE quarantine_v4 RENAME TO quarantine;
CREATE INDEX quarantine_seen ON quarantine (last_at);
CREATE INDEX deliveries_dead_age ON deliveries (updated_at) WHERE state = 'dead';
ALTER TABLE subscriber_state ADD COLUMN orphaned_at REAL
"""

# Version 5, self-contained: each subscriber's circuit breaker and 429 pause survive a restart,
# and the head of a queue (oldest pending delivery, for fifo ordering and an open circuit's
# probe) is one index step instead of a sort of the whole backlog.
SCHEMA_V5 = """
CREATE TABLE subscriber_circuit (
    subscriber     TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    failing_since  REAL,
    opened_at      REAL,
    paused_until   REAL,
    updated_at     REAL NOT NULL
);
CREATE INDEX deliveries_queue ON deliveries (subscriber, id) WHERE state = 'pending'
"""

# Version 6: a delivery's record is found by record id alone. With the state in the key, every
# result (pending -> delivered) deleted and re-inserted that index entry too; the readers of
# this index (retention, a call's journey) look at a record's few deliveries and read their
# state from the row.
SCHEMA_V6 = """
DROP INDEX deliveries_record;
CREATE INDEX deliveries_record ON deliveries (record_id)
"""

# Version 7: a pending delivery is in one partial index, not two. Never tried (attempts = 0:
# new, replayed), it is in 'deliveries_fresh' in queue order; tried before (a retry), in
# 'deliveries_retry' by due time. 'deliveries_due' and 'deliveries_queue' held every pending
# row twice, once by due time and once in queue order, and each costs ~0.8 us of the writer's
# time per delivery written at ingest and again at its result (~20 % of an ingest; see
# bench/analysis.md). A fresh delivery is due when it is queued, so queue order is its due
# order; only retries need the second order. Readers take the head, the next due time and
# claims from both (relay.store.sqlite.sql, pace, held).
SCHEMA_V7 = """
DROP INDEX deliveries_due;
DROP INDEX deliveries_queue;
CREATE INDEX deliveries_fresh ON deliveries (subscriber, id)
    WHERE state = 'pending' AND attempts = 0;
CREATE INDEX deliveries_retry ON deliveries (subscriber, next_at)
    WHERE state = 'pending' AND attempts > 0
"""

# Version 8: the retries in queue order too, for the head of a queue (fifo, and an open
# circuit's probe), which is the oldest of the first fresh row and the oldest retry: without it,
# finding the oldest retry walked them all (1.4 ms with 10,000 retries, against 0.02 ms). Only
# retries are in it, so deliveries that succeed the first time never touch it.
SCHEMA_V8 = """
CREATE INDEX deliveries_retry_queue ON deliveries (subscriber, id)
    WHERE state = 'pending' AND attempts > 0
"""

# MIGRATIONS[n] takes a file from ``PRAGMA user_version`` n to n + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8,
)  # fmt: skip

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
CHUNK = 500  # ids per "IN (…)" list: far below SQLite's 32,766 host parameters
_SQLITE_FULL = 13


# -- opening ------------------------------------------------------------------------------------


def configure(conn: sqlite3.Connection, synchronous: str) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("state file cannot use WAL (journal mode %s); writes will be slower", mode)
    conn.execute(f"PRAGMA synchronous = {synchronous}")  # validated against SYNCHRONOUS_MODES
    conn.execute("PRAGMA busy_timeout = 5000")  # only ops tools ever share the file
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA cache_size = -32768")  # 32 MiB
    conn.execute("PRAGMA journal_size_limit = 67108864")  # truncate a big WAL back to 64 MiB


def check_ours(conn: sqlite3.Connection, path: str) -> None:
    """Refuse, with reads only, a file from a newer relay or from some other program."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"state file {path} has schema version {version}, newer than this relay "
            f"understands ({len(MIGRATIONS)}); upgrade the relay"
        )
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        raise StoreError(f"state file {path} is an SQLite file of some other program")


def check_current(conn: sqlite3.Connection, path: str) -> None:
    """:func:`check_ours`, and refuse a file an older relay wrote that no ``relay run`` of
    this version has upgraded yet: a reader never migrates, and this relay's queries name
    indexes such a file does not have."""
    check_ours(conn, path)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if 0 < version < len(MIGRATIONS):
        raise StoreError(
            f"state file {path} has schema version {version}, from an older relay; "
            f"`relay run` upgrades it to {len(MIGRATIONS)} when it starts"
        )


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Bring the schema to the newest version, all steps in one transaction."""
    # Version 4 computes the digest of quarantined rows kept before it existed.
    conn.create_function(
        "relay_quarantine_digest",
        2,
        lambda account, raw: quarantine_digest(account, bytes(raw)),
        deterministic=True,
    )
    with _transaction(conn):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        check_ours(conn, path)  # again inside the transaction: nobody changed it meanwhile
        for step in MIGRATIONS[version:]:
            for statement in step.split(";"):
                if statement.strip():
                    conn.execute(statement)
        if version < len(MIGRATIONS):
            conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


def recover(conn: sqlite3.Connection) -> int:
    """Make deliveries leased by a process that died due again (their next_at is past)."""
    with _transaction(conn):
        sql = "UPDATE deliveries SET state = 'pending', lease_until = NULL WHERE state = 'inflight'"
        return conn.execute(sql).rowcount


# -- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE … COMMIT``; any failure (including in COMMIT) rolls back everything."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def _reading(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN … COMMIT`` for reads that must see one snapshot (nothing to write, so no write
    lock is taken and the commit writes nothing)."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == _SQLITE_FULL) or "disk is full" in str(exc)


def _chunks(items: Sequence[T], size: int = CHUNK) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def execute(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> int:
    """One statement in its own transaction; returns the number of rows changed."""
    with _transaction(conn):
        return conn.execute(sql, params).rowcount
