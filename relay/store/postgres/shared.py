"""What only a database shared by several instances needs: the instance registry, account
leases, claim renewal and fencing, shared API budgets, and LISTEN/NOTIFY wake-ups.

The contracts are documented on :class:`relay.store.base.Store`; this module holds the
PostgreSQL side, as a mixin of :class:`relay.store.postgres.store.PostgresStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence
from typing import Any

import asyncpg

from relay.core.budget import MIN_WAIT, bucket_params, bucket_spend, default_burst
from relay.core.models import Delivery
from relay.store.postgres import sql as q
from relay.store.postgres.connect import DRIVER_ERRORS, Conn, PoolHost, store_error

log = logging.getLogger(__name__)

Wakeup = Callable[[str, str], None]
LISTEN_CHECK = 30.0  # seconds between checks that an idle listening connection is still alive
_MAX_BACKOFF = 30.0
_MAX_PAYLOAD = 7_900  # NOTIFY payloads must stay under 8,000 bytes; longer names are not sent


async def notify_due(conn: Conn, subscribers: Collection[str]) -> None:
    """Tell every listening instance that ``subscribers`` have deliveries due (sent on commit,
    and folded by PostgreSQL when one transaction sends the same payload twice)."""
    payloads = [f"due:{name}" for name in subscribers]
    payloads = [p for p in payloads if len(p.encode()) <= _MAX_PAYLOAD]
    if payloads:
        await conn.execute(q.NOTIFY, payloads)


class SharedStateMixin(PoolHost):
    """The multi-instance methods; the host class provides the pool, target and instance id."""

    # -- instances ----------------------------------------------------------------------------

    async def register_instance(self, instance_id: str, now: float, ttl: float) -> None:
        self.instance_id = instance_id  # claims from now on carry this owner
        async with self._conn("register instance") as conn:
            await conn.execute(q.REGISTER_INSTANCE, instance_id, now, ttl)

    async def heartbeat(self, instance_id: str, now: float, ttl: float) -> bool:
        async with self._conn("heartbeat") as conn:
            status = await conn.execute(q.HEARTBEAT, instance_id, now, ttl)
        return status.endswith(" 1")

    async def live_instances(self, now: float) -> list[str]:
        async with self._conn("list instances") as conn:
            return [row[0] for row in await conn.fetch(q.LIVE_INSTANCES, now)]

    async def recover_dead_instances(self, now: float) -> int:
        async with self._tx("recover dead instances") as conn:
            dead = [row[0] for row in await conn.fetch(q.DEAD_INSTANCES, now)]
            if not dead:
                return 0
            rows = await conn.fetch(q.RECOVER_CLAIMS, dead)
            await conn.execute(q.DROP_LEASES_OF, dead)
            await notify_due(conn, {row[0] for row in rows})
        log.warning(
            "%d deliveries claimed by dead instances %s are due again", len(rows), ", ".join(dead)
        )
        return len(rows)

    # -- account leases -----------------------------------------------------------------------

    async def acquire_account_lease(self, account: str, owner: str, ttl: float, now: float) -> bool:
        async with self._conn("acquire account lease") as conn:
            epoch = await conn.fetchval(q.ACQUIRE_LEASE, account, owner, now, ttl)
        return epoch is not None

    async def renew_account_lease(self, account: str, owner: str, ttl: float, now: float) -> bool:
        async with self._conn("renew account lease") as conn:
            epoch = await conn.fetchval(q.RENEW_LEASE, account, owner, now, ttl)
        return epoch is not None

    async def release_account_lease(self, account: str, owner: str) -> None:
        async with self._conn("release account lease") as conn:
            await conn.execute(q.RELEASE_LEASE, account, owner)

    async def account_lease_holders(self, now: float) -> dict[str, str]:
        async with self._conn("list account leases") as conn:
            return {row[0]: row[1] for row in await conn.fetch(q.LEASE_HOLDERS, now)}

    # -- fenced claims ------------------------------------------------------------------------

    async def renew_claims(self, claims: Sequence[Delivery], now: float, lease: float) -> list[int]:
        if not claims:
            return []
        ids, tokens = [c.id for c in claims], [c.token for c in claims]
        async with self._conn("renew claims") as conn:
            rows = await conn.fetch(q.RENEW_CLAIMS, ids, tokens, now + lease)
        return sorted(row[0] for row in rows)

    async def release_claims(self, claims: Sequence[Delivery]) -> None:
        if not claims:
            return
        ids, tokens = [c.id for c in claims], [c.token for c in claims]
        async with self._tx("release claims") as conn:
            rows = await conn.fetch(q.RELEASE_CLAIMS, ids, tokens)
            await notify_due(conn, {row[0] for row in rows})

    # -- shared API budgets -------------------------------------------------------------------

    async def spend_budget(
        self, key_id: str, now: float, requests: int, per: float, burst: int | None = None
    ) -> float:
        capacity, period = bucket_params(
            requests, per, default_burst(requests) if burst is None else burst
        )
        rate = capacity / period
        async with self._conn("spend budget") as conn:
            if await conn.fetchval(q.SPEND_BUDGET, key_id, now, rate, capacity) is not None:
                return 0.0
            row = await conn.fetchrow(q.BUDGET_STATE, key_id)
        if row is None:  # deleted meanwhile by hand: ask again at once
            return 0.0
        level, at, paused_until = float(row[0]), float(row[1]), row[2]
        if paused_until is not None and paused_until > now:
            return float(paused_until) - now
        # Read after the refusal, without the lock: a hint only, and never 0 (MIN_WAIT at least),
        # so a caller that waits it makes progress.
        return max(bucket_spend(level, at, now, capacity, rate)[2], MIN_WAIT)

    async def pause_budget(self, key_id: str, until: float) -> None:
        async with self._conn("pause budget") as conn:
            await conn.execute(q.PAUSE_BUDGET, key_id, until)

    # -- wake-ups -----------------------------------------------------------------------------

    async def notify(self, kind: str, subject: str) -> None:
        async with self._conn("notify") as conn:
            await conn.execute(q.NOTIFY, [f"{kind}:{subject}"])

    async def listen(self, callback: Wakeup) -> None:
        backoff = 0.5
        while True:
            try:
                await self._listen_once(callback)
                backoff = 0.5  # it was connected for a while: reconnect promptly
            except DRIVER_ERRORS as exc:
                error = store_error(self.target, "listen", exc)
                log.warning("%s; wake-ups paused, reconnecting in %.1f s", error, backoff)
            # Backing off between reconnects, not waiting for a condition.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    async def _listen_once(self, callback: Wakeup) -> None:
        """One dedicated connection: LISTEN, report ``listening``, then deliver notifications
        until the connection is lost (noticed at once, or by a liveness check)."""
        lost = asyncio.Event()

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: object) -> None:
            kind, _, subject = str(payload).partition(":")
            try:
                callback(kind, subject)
            except Exception:
                log.exception("a wake-up callback failed")

        conn = await asyncpg.connect(**self.target.connect_args())
        try:
            conn.add_termination_listener(lambda _c: lost.set())
            channel = await conn.fetchval(q.LISTEN_CHANNEL)
            await conn.add_listener(channel, on_notify)
            callback("listening", "")  # anything sent while we were away: look again now
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), LISTEN_CHECK)
                if not lost.is_set():
                    await conn.fetchval("SELECT 1", timeout=LISTEN_CHECK)
        finally:
            conn.terminate()  # synchronous: nothing to await when cancelled
        raise asyncpg.InterfaceError("the listening connection was closed")
