"""Claims of the one owner of a state file, kept in memory instead of written to it.

A claim is a lease: the claimed deliveries are not handed out again until it runs out or the
claim ends (a result, a release). On a file with exactly one owner (see
:mod:`relay.store.sqlite.store`) nothing outside this process can claim, so the lease need not be
in the file: a claimed delivery stays ``pending`` there, and the lease lives here, next to the
only connection that could hand the delivery out twice.

Why: writing each claim (``pending`` to ``inflight`` and back) cost an ``UPDATE``, five changes
to the partial indexes and a commit per claimed batch; that was about a sixth of the store
thread's time for a steady stream of deliveries, and its commits are what made claims queue
behind the poller's ingest transactions. What a crash of the owner loses is exactly what was
lost before: the leases, which the next owner dropped on open anyway (``schema.recover``), so
every claimed delivery that has no stored result is sent again, with its webhook-id.

What changes for a reader: the running relay's status, dashboard and journeys show held
deliveries as ``inflight`` (the store overlays them, :meth:`Held.state`); a snapshot read by
another process (``relay status`` on the file) sees them as ``pending``, which is what they are
on disk and what they would be after a crash.

Two of the store's threads touch a :class:`Held`: the writer (results, releases, stats) and the
claim thread (claims, on a read connection of their own), so each method holds a lock for its
few dictionary steps. What keeps a claim from handing out a delivery whose result has just been
stored is an order, not the lock: a result's commit comes before its :meth:`Held.drop`, and a
claim reads :meth:`Held.live` before its snapshot of the file begins, so a delivery either is
still held when the claim looks or its result is already in the claim's snapshot.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence

import orjson

from relay.core.status import StoreStats

# Held rows that are still pending on disk (a purge may have removed some), by subscriber.
SQL_HELD_PENDING = """
SELECT subscriber, COUNT(*) FROM deliveries
WHERE id IN (SELECT value FROM json_each(?)) AND state = 'pending' GROUP BY subscriber
"""
# The earliest due time among a subscriber's pending rows that no claim holds (NULL: none):
# the first unheld fresh row in queue order (see sql.SQL_CLAIM on why that is its due order),
# and the first unheld retry by due time. One or two index steps each, plus the held rows.
SQL_OLDEST_UNHELD = """
SELECT MIN(at) FROM (
    SELECT at FROM (
        SELECT next_at AS at FROM deliveries INDEXED BY deliveries_fresh
        WHERE subscriber = ?1 AND state = 'pending' AND attempts = 0
            AND id NOT IN (SELECT value FROM json_each(?2))
        ORDER BY id LIMIT 1)
    UNION ALL
    SELECT at FROM (
        SELECT next_at AS at FROM deliveries INDEXED BY deliveries_retry
        WHERE subscriber = ?1 AND state = 'pending' AND attempts > 0
            AND id NOT IN (SELECT value FROM json_each(?2))
        ORDER BY next_at LIMIT 1))
"""


class Held:
    """Lease expiry times by subscriber and delivery id (monotonic only in that a claim or a
    renewal sets them; ``now`` always comes from the caller)."""

    def __init__(self) -> None:
        self._by_sub: dict[str, dict[int, float]] = {}
        self._sub_of: dict[int, str] = {}
        self._lock = threading.Lock()

    def live(self, subscriber: str, now: float) -> list[int]:
        """The ids ``subscriber`` holds under a lease still running at ``now``. Leases that ran
        out are forgotten here: their deliveries may be claimed again, as on a shared store."""
        with self._lock:
            held = self._by_sub.get(subscriber)
            if not held:
                return []
            expired = [i for i, until in held.items() if until < now]
            for i in expired:
                del held[i]
                del self._sub_of[i]
            return list(held)

    def take(self, subscriber: str, ids: Iterable[int], until: float) -> None:
        with self._lock:
            held = self._by_sub.setdefault(subscriber, {})
            for i in ids:
                held[i] = until
                self._sub_of[i] = subscriber

    def drop(self, ids: Iterable[int]) -> list[int]:
        """End these claims; returns the ids that were not held here."""
        with self._lock:
            missing: list[int] = []
            for i in ids:
                subscriber = self._sub_of.pop(i, None)
                if subscriber is None:
                    missing.append(i)
                else:
                    del self._by_sub[subscriber][i]
            return missing

    def renew(self, ids: Sequence[int], until: float) -> list[int]:
        """Extend the leases among ``ids`` still held (run out or not, as a row still
        ``inflight`` was) to ``until``; returns those renewed."""
        with self._lock:
            renewed: list[int] = []
            for i in ids:
                subscriber = self._sub_of.get(i)
                if subscriber is not None:
                    self._by_sub[subscriber][i] = until
                    renewed.append(i)
            return renewed

    def ids(self, subscriber: str) -> list[int]:
        """Every id ``subscriber`` holds, leases run out or not (as a row left ``inflight`` was:
        not pending until claimed again or released)."""
        with self._lock:
            return list(self._by_sub.get(subscriber) or ())

    def soonest(self, subscriber: str) -> float | None:
        """When the first lease of ``subscriber`` runs out (None: it holds none; a time past:
        one ran out already, and its delivery is due again)."""
        with self._lock:
            return min((self._by_sub.get(subscriber) or {}).values(), default=None)

    def subscribers(self) -> list[str]:
        """The subscribers that hold (or held) claims."""
        with self._lock:
            return list(self._by_sub)

    def every(self) -> list[int]:
        """Every held id, of every subscriber."""
        with self._lock:
            return list(self._sub_of)

    def state(self, delivery_id: int, state: str) -> str:
        """A delivery's state as a reader should see it: ``inflight`` while held (the
        ``state_of`` of :mod:`relay.store.sqlite.queries`)."""
        with self._lock:
            return "inflight" if state == "pending" and delivery_id in self._sub_of else state

    def clear(self) -> None:
        with self._lock:
            self._by_sub.clear()
            self._sub_of.clear()


# -- what readers of the owner's store see --------------------------------------------------------


def overlay_stats(conn: sqlite3.Connection, held: Held, stats: StoreStats) -> StoreStats:
    """``stats`` (read just before, on the same thread) with held deliveries counted in flight
    rather than pending, and the oldest pending one among those not held."""
    every = held.every()
    if not every:
        return stats
    for subscriber, n in conn.execute(SQL_HELD_PENDING, (orjson.dumps(every).decode(),)):
        counts = stats.subscribers.get(subscriber)
        if counts is None:
            continue
        counts.pending -= n
        counts.inflight += n
        hold = orjson.dumps(held.ids(subscriber)).decode()
        (at,) = conn.execute(SQL_OLDEST_UNHELD, (subscriber, hold)).fetchone()
        counts.oldest_pending_at = None if at is None else float(at)
    return stats
