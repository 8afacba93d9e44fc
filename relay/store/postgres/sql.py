"""The SQL of the PostgreSQL backend, one named statement per operation.

Batches travel as parallel arrays expanded with ``unnest`` (one round trip, however many rows),
and every statement leaves the schema to the connection's ``search_path``, so one store can be
pointed at any schema. Times are epoch seconds chosen by the caller, never ``now()``: both
backends and their tests see the same clock.
"""

from __future__ import annotations

PRUNE_CHUNK = 2000  # records examined per prune transaction: short locks, bounded WAL per step
PRUNE_SEEN_CHUNK = 5000  # seen rows deleted per transaction
# The maintenance lock: one pruner at a time among the instances on this schema (relays on other
# schemas of the same server keep their own).
MAINTENANCE_KEY = "hashtextextended('relay-maintenance:' || current_schema(), 0)"
TRY_MAINTENANCE = f"SELECT pg_try_advisory_lock({MAINTENANCE_KEY})"
END_MAINTENANCE = f"SELECT pg_advisory_unlock({MAINTENANCE_KEY})"

# -- ingest ---------------------------------------------------------------------------------------

LOAD_CURSOR = "SELECT newest, last_sweep, sweep_anchor FROM cursors WHERE account = $1"
LOAD_CURSORS = (
    "SELECT account, newest, last_sweep, sweep_anchor FROM cursors WHERE account = ANY($1::text[])"
)

# The seen insert is the de-dup: only rids not yet known come back, whoever else is ingesting.
MARK_SEEN = """
INSERT INTO seen (account, rid, call_ts, seen_at)
SELECT $1, u.rid, u.call_ts, $4 FROM unnest($2::bigint[], $3::text[]) AS u(rid, call_ts)
ON CONFLICT DO NOTHING
RETURNING rid
"""

# Records in batch order: ids come from the sequence in the order the sorted rows are inserted,
# and the queue order of their deliveries follows those ids.
INSERT_RECORDS = """
INSERT INTO records (account, rid, call_ts, received_at, body)
SELECT $1, u.rid, u.call_ts, $4, u.body
FROM unnest($2::bigint[], $3::text[], $5::bytea[]) WITH ORDINALITY AS u(rid, call_ts, body, n)
ORDER BY u.n
RETURNING id, rid
"""

# One delivery per (record, subscriber); the body stays in its one record row.
FAN_OUT = """
INSERT INTO deliveries (record_id, subscriber, state, attempts, next_at, updated_at)
SELECT r.id, s.name, 'pending', 0, $3, $3
FROM unnest($1::bigint[]) AS r(id), unnest($2::text[]) WITH ORDINALITY AS s(name, n)
ORDER BY r.id, s.n
"""

# Filtered records (``CallRecord.subscribers`` given): one delivery per listed (record, name)
# pair, inserted in the order given (record order), so each queue keeps record order.
FAN_OUT_PAIRS = """
INSERT INTO deliveries (record_id, subscriber, state, attempts, next_at, updated_at)
SELECT u.id, u.name, 'pending', 0, $3, $3
FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS u(id, name, n)
ORDER BY u.n
"""

RECENT_RECORDS = "SELECT account, rid, body FROM records ORDER BY id DESC LIMIT $1"

# Kept once: the same record again only says when it was last seen (and how often). A batch
# never holds one record twice (the poller keeps one per digest), so one row per conflict.
QUARANTINE = """
INSERT INTO quarantine (account, digest, raw, reason, at, last_at)
SELECT $1, u.digest, u.raw, u.reason, $5, $5
FROM unnest($2::bytea[], $3::bytea[], $4::text[]) AS u(digest, raw, reason)
ON CONFLICT (digest) DO UPDATE
SET last_at = greatest(quarantine.last_at, excluded.last_at), times = quarantine.times + 1
"""

ADVANCE_CURSOR = """
INSERT INTO cursors (account, newest) VALUES ($1, $2)
ON CONFLICT (account) DO UPDATE SET newest = excluded.newest
WHERE cursors.newest IS NULL OR excluded.newest > cursors.newest
"""

MARK_SWEPT = """
INSERT INTO cursors (account, last_sweep, sweep_anchor) VALUES ($1, $2, $3)
ON CONFLICT (account) DO UPDATE
SET last_sweep = excluded.last_sweep, sweep_anchor = excluded.sweep_anchor
"""

PRUNE_SEEN = """
WITH doomed AS (
    SELECT rid FROM seen WHERE account = $1 AND call_ts < $2 AND seen_at < $3 LIMIT $4
)
DELETE FROM seen USING doomed WHERE seen.account = $1 AND seen.rid = doomed.rid
"""

# The channel is the schema's own (relays on other schemas of one server hear nothing of it):
# named from a digest of the schema, so it is a short identifier whatever the schema's name.
CHANNEL = "'relay_wakeup_' || left(md5(current_schema()), 16)"
NOTIFY = f"SELECT pg_notify({CHANNEL}, payload) FROM unnest($1::text[]) AS p(payload)"
LISTEN_CHANNEL = f"SELECT {CHANNEL}"

# -- delivery -------------------------------------------------------------------------------------

CLAIM_ASYNC_COMMIT = "SET LOCAL synchronous_commit = off"

# Due pending rows in queue order plus inflight rows whose lease ran out, each half walking its
# own partial index; SKIP LOCKED lets another instance claim the rows this one is taking right
# now without waiting and without ever getting the same row. The winners are stamped with this
# store's owner and a fresh fencing token, and come back with their record in queue order.
CLAIM = """
WITH pending AS (
    SELECT id, next_at FROM deliveries
    WHERE subscriber = $1 AND state = 'pending' AND next_at <= $2
    ORDER BY next_at, id LIMIT $3 FOR UPDATE SKIP LOCKED
), expired AS (
    SELECT id, next_at FROM deliveries
    WHERE subscriber = $1 AND state = 'inflight' AND lease_until < $2
    ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED
), due AS (
    SELECT id, next_at FROM pending UNION ALL SELECT id, next_at FROM expired
), picked AS (
    SELECT id FROM due
    WHERE NOT EXISTS (SELECT 1 FROM subscriber_state
                      WHERE subscriber = $1 AND disabled_reason IS NOT NULL)
    ORDER BY next_at, id LIMIT $3
), leased AS (
    UPDATE deliveries AS d
    SET state = 'inflight', lease_until = $2::float8 + $4::float8, owner = $5,
        token = nextval('claim_tokens')
    FROM picked WHERE d.id = picked.id
    RETURNING d.id, d.attempts, d.record_id, d.next_at, d.token
)
SELECT l.id, l.attempts, l.token, r.account, r.rid, r.body, r.id
FROM leased AS l JOIN records AS r ON r.id = l.record_id
ORDER BY l.next_at, l.id
"""

# One row per result: (id, at, status, error, latency_ms, response, state, next_at, token,
# stamp); stamp is the row's updated_at (see relay.store.results.updated_stamps).
# The attempt is history and is always kept (as on SQLite); the state changes only while the
# claim that produced it still stands: 'delivered' is final, and a token that no longer matches
# means the lease ran out and the delivery was claimed again (or recovered) since.
# Attempts have no foreign key (schema version 4): an attempt is written only for a delivery
# this statement holds locked, by its update or, where the claim no longer stands, by a key
# share lock, so a delivery being deleted (whose deleter removes its attempts afterwards, see
# relay.store.postgres.retention) is waited for and then skipped, never left with an attempt.
_RESULTS = """
unnest($1::bigint[], $2::float8[], $3::int[], $4::text[], $5::float8[], $6::text[], $7::text[],
       $8::float8[], $9::bigint[], $10::float8[])
    AS f(id, at, status, error, latency_ms, response, state, next_at, token, stamp)
"""
FINISH = f"""
WITH f AS (SELECT * FROM {_RESULTS}), applied AS (
    UPDATE deliveries AS d
    SET state = f.state, next_at = COALESCE(f.next_at, d.next_at), lease_until = NULL,
        owner = NULL, token = NULL, attempts = d.attempts + 1, last_status = f.status,
        last_error = f.error, updated_at = f.stamp
    FROM f
    WHERE d.id = f.id AND d.state <> 'delivered' AND (f.token IS NULL OR d.token = f.token)
    RETURNING d.id
), kept AS (
    SELECT d.id FROM deliveries AS d
    WHERE d.id = ANY(ARRAY(SELECT id FROM f EXCEPT ALL SELECT id FROM applied))
    FOR KEY SHARE OF d
)
INSERT INTO attempts (delivery_id, at, status, error, latency_ms, response)
SELECT f.id, f.at, f.status, f.error, f.latency_ms, f.response
FROM f WHERE f.id IN (SELECT id FROM applied UNION ALL SELECT id FROM kept)
"""

# What a delete of deliveries leaves to do, as its own statement after it (see FINISH): its
# snapshot then sees every attempt committed by a finish that the delete waited for.
DELETE_ATTEMPTS = "DELETE FROM attempts WHERE delivery_id = ANY($1::bigint[])"

DISABLE_GONE = """
INSERT INTO subscriber_state (subscriber, disabled_reason, updated_at)
SELECT DISTINCT subscriber, $2::text, $3::float8 FROM deliveries WHERE id = ANY($1::bigint[])
ON CONFLICT (subscriber) DO UPDATE
SET disabled_reason = excluded.disabled_reason, updated_at = excluded.updated_at
"""

# next_at stays what it was when the row was claimed, so it is due at once, in its old place.
RELEASE = """
UPDATE deliveries SET state = 'pending', lease_until = NULL, owner = NULL, token = NULL
WHERE state = 'inflight' AND id = ANY($1::bigint[])
RETURNING subscriber
"""
RELEASE_CLAIMS = """
UPDATE deliveries AS d
SET state = 'pending', lease_until = NULL, owner = NULL, token = NULL
FROM unnest($1::bigint[], $2::bigint[]) AS c(id, token)
WHERE d.id = c.id AND d.state = 'inflight' AND d.token = c.token
RETURNING d.subscriber
"""
RENEW_CLAIMS = """
UPDATE deliveries AS d SET lease_until = $3
FROM unnest($1::bigint[], $2::bigint[]) AS c(id, token)
WHERE d.id = c.id AND d.state = 'inflight' AND d.token = c.token
RETURNING d.id
"""

SUBSCRIBER_DISABLED = "SELECT disabled_reason FROM subscriber_state WHERE subscriber = $1"
NEXT_DUE = """
SELECT LEAST(
    (SELECT MIN(next_at) FROM deliveries WHERE subscriber = $1 AND state = 'pending'),
    (SELECT MIN(lease_until) FROM deliveries WHERE subscriber = $1 AND state = 'inflight'))
"""

# -- operations -----------------------------------------------------------------------------------

ACCOUNT_STATUS = """
INSERT INTO account_status (account, status, error, updated_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (account) DO UPDATE
SET status = excluded.status, error = excluded.error, updated_at = excluded.updated_at
"""
SUBSCRIBER_STATE = """
INSERT INTO subscriber_state (subscriber, disabled_reason, updated_at) VALUES ($1, $2, $3)
ON CONFLICT (subscriber) DO UPDATE
SET disabled_reason = excluded.disabled_reason, updated_at = excluded.updated_at
"""
DISABLED_SUBSCRIBERS = """
SELECT subscriber, disabled_reason FROM subscriber_state WHERE disabled_reason IS NOT NULL
"""
DEAD_LETTERS = """
SELECT d.id, d.subscriber, r.account, r.rid, d.attempts, d.last_error, d.updated_at
FROM deliveries AS d JOIN records AS r ON r.id = d.record_id
WHERE d.state = 'dead' AND ($1::text IS NULL OR d.subscriber = $1)
ORDER BY d.updated_at DESC, d.id DESC LIMIT $2
"""
REPLAY = """
UPDATE deliveries
SET state = 'pending', attempts = 0, next_at = $1, lease_until = NULL, owner = NULL,
    token = NULL, updated_at = $1
WHERE state = 'dead' AND ($2::text IS NULL OR subscriber = $2)
  AND ($3::bigint[] IS NULL OR id = ANY($3::bigint[]))
RETURNING subscriber
"""

# Examine the next PRUNE_CHUNK records received before the cutoff (keyset order) and delete
# those whose every delivery is delivered; deliveries follow by ON DELETE CASCADE, and their
# ids come back for DELETE_ATTEMPTS (a record's deliveries are all made at its ingest).
PRUNE_DELIVERED = """
WITH candidates AS (
    SELECT id, received_at FROM records
    WHERE received_at < $1 AND (received_at, id) > ($2, $3)
    ORDER BY received_at, id LIMIT $4
), pruned AS (
    DELETE FROM records AS r USING candidates AS c
    WHERE r.id = c.id AND NOT EXISTS (
        SELECT 1 FROM deliveries AS d WHERE d.record_id = r.id AND d.state <> 'delivered')
    RETURNING r.id
), last AS (
    SELECT received_at, id FROM candidates ORDER BY received_at DESC, id DESC LIMIT 1
)
SELECT (SELECT count(*) FROM pruned), (SELECT count(*) FROM candidates),
       (SELECT received_at FROM last), (SELECT id FROM last),
       (SELECT COALESCE(array_agg(d.id), '{}') FROM deliveries AS d
        WHERE d.record_id IN (SELECT id FROM pruned))
"""

ACCOUNT_CURSORS = "SELECT account, newest, last_sweep FROM cursors"
ACCOUNT_STATUSES = "SELECT account, status, error FROM account_status"
STATE_COUNTS = """
SELECT subscriber, state, count(*),
       MIN(next_at) FILTER (WHERE state = 'pending')
FROM deliveries GROUP BY subscriber, state
"""
SUBSCRIBER_STATES = "SELECT subscriber, disabled_reason, orphaned_at FROM subscriber_state"
COUNTS = "SELECT (SELECT count(*) FROM quarantine), (SELECT count(*) FROM seen)"

# -- several instances ----------------------------------------------------------------------------

REGISTER_INSTANCE = """
INSERT INTO instances (id, started_at, heartbeat_at, expires_at)
VALUES ($1, $2::float8, $2::float8, $2::float8 + $3::float8)
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at
"""
HEARTBEAT = """
UPDATE instances SET heartbeat_at = $2::float8, expires_at = $2::float8 + $3::float8
WHERE id = $1
"""
LIVE_INSTANCES = "SELECT id FROM instances WHERE expires_at > $1 ORDER BY id"
# Dead instances are locked one by one (SKIP LOCKED), so two instances recovering at once split
# the work instead of waiting on each other; their claims and leases go in the same commit.
DEAD_INSTANCES = """
DELETE FROM instances WHERE id IN (
    SELECT id FROM instances WHERE expires_at <= $1 FOR UPDATE SKIP LOCKED)
RETURNING id
"""
RECOVER_CLAIMS = """
UPDATE deliveries SET state = 'pending', lease_until = NULL, owner = NULL, token = NULL
WHERE state = 'inflight' AND owner = ANY($1::text[])
RETURNING subscriber
"""
DROP_LEASES_OF = "DELETE FROM account_leases WHERE owner = ANY($1::text[])"

# Held while now < expires_at. The same owner renews; anyone takes over an expired lease, and a
# change of owner bumps the epoch (a fencing number for whoever wants one).
ACQUIRE_LEASE = """
INSERT INTO account_leases AS l (account, owner, expires_at, epoch)
VALUES ($1, $2, $3::float8 + $4::float8, 1)
ON CONFLICT (account) DO UPDATE
SET owner = excluded.owner, expires_at = excluded.expires_at,
    epoch = l.epoch + CASE WHEN l.owner = excluded.owner THEN 0 ELSE 1 END
WHERE l.owner = excluded.owner OR l.expires_at <= $3::float8
RETURNING epoch
"""
RENEW_LEASE = """
UPDATE account_leases SET expires_at = $3::float8 + $4::float8 WHERE account = $1 AND owner = $2
RETURNING epoch
"""
RELEASE_LEASE = "DELETE FROM account_leases WHERE account = $1 AND owner = $2"
LEASE_HOLDERS = "SELECT account, owner FROM account_leases WHERE expires_at > $1"

# The shared leaky bucket of one API key, drained and charged in one locked upsert: a row comes
# back only when the request may go (see relay.core.budget.bucket_params for why the bucket
# bounds every sliding window). Time never runs backwards in the bucket: a caller whose clock
# is behind sees no drain rather than a negative one.
SPEND_BUDGET = """
INSERT INTO budget_buckets AS b (key_id, level, at) VALUES ($1, 1, $2::float8)
ON CONFLICT (key_id) DO UPDATE
SET level = GREATEST(0, b.level - $3::float8 * GREATEST(0, $2::float8 - b.at)) + 1,
    at = GREATEST(b.at, $2::float8)
WHERE (b.paused_until IS NULL OR b.paused_until <= $2::float8)
  AND GREATEST(0, b.level - $3::float8 * GREATEST(0, $2::float8 - b.at)) + 1 <= $4::float8
RETURNING 1
"""
BUDGET_STATE = "SELECT level, at, paused_until FROM budget_buckets WHERE key_id = $1"
PAUSE_BUDGET = """
INSERT INTO budget_buckets AS b (key_id, level, at, paused_until)
VALUES ($1, 0, $2::float8, $2::float8)
ON CONFLICT (key_id) DO UPDATE
SET paused_until = GREATEST(COALESCE(b.paused_until, excluded.paused_until),
                            excluded.paused_until)
"""
