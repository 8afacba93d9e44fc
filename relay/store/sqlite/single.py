"""The multi-instance part of the store interface, for a store with exactly one owner.

An SQLite state file is locked by one relay process, so there is never another instance to
share with: the registry and account leases live in memory, with the same observable
contract as on PostgreSQL (a lease still expires), and wake-ups are in-process already. Nothing
here survives a restart, and nothing needs to: the next owner recovers every in-flight delivery
when it opens the file. API budgets are the exception, and live in the file
(:mod:`relay.store.sqlite.ledger`): what a key spent must outlive the process that spent it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from relay.store.base import Wakeup


@dataclass(slots=True)
class _Lease:
    owner: str
    expires_at: float


@dataclass(slots=True)
class _State:
    instances: dict[str, float] = field(default_factory=dict)  # id -> alive until
    leases: dict[str, _Lease] = field(default_factory=dict)


class SingleOwnerMixin:
    """Registry, leases and wake-ups of a single-owner store, kept in memory."""

    _single: _State | None = None

    def _state(self) -> _State:
        if self._single is None:
            self._single = _State()
        return self._single

    # -- instances ----------------------------------------------------------------------------

    async def register_instance(self, instance_id: str, now: float, ttl: float) -> None:
        self._state().instances[instance_id] = now + ttl

    async def heartbeat(self, instance_id: str, now: float, ttl: float) -> bool:
        instances = self._state().instances
        if instance_id not in instances:
            return False
        instances[instance_id] = now + ttl
        return True

    async def live_instances(self, now: float) -> list[str]:
        return sorted(i for i, until in self._state().instances.items() if until > now)

    async def recover_dead_instances(self, now: float) -> int:
        # The only owner recovered every in-flight delivery when it opened the file; an
        # instance of this process that stopped heartbeating just loses its registration and
        # leases. Its claims come back when their leases expire.
        state = self._state()
        dead = {i for i, until in state.instances.items() if until <= now}
        for instance_id in dead:
            del state.instances[instance_id]
        for account in [a for a, lease in state.leases.items() if lease.owner in dead]:
            del state.leases[account]
        return 0

    # -- account leases -----------------------------------------------------------------------

    async def acquire_account_lease(self, account: str, owner: str, ttl: float, now: float) -> bool:
        leases = self._state().leases
        lease = leases.get(account)
        if lease is not None and lease.owner != owner and lease.expires_at > now:
            return False
        leases[account] = _Lease(owner, now + ttl)
        return True

    async def renew_account_lease(self, account: str, owner: str, ttl: float, now: float) -> bool:
        lease = self._state().leases.get(account)
        if lease is None or lease.owner != owner:
            return False
        lease.expires_at = now + ttl
        return True

    async def release_account_lease(self, account: str, owner: str) -> None:
        leases = self._state().leases
        lease = leases.get(account)
        if lease is not None and lease.owner == owner:
            del leases[account]

    async def account_lease_holders(self, now: float) -> dict[str, str]:
        return {
            a: lease.owner for a, lease in self._state().leases.items() if lease.expires_at > now
        }

    # -- wake-ups -----------------------------------------------------------------------------

    async def listen(self, callback: Wakeup) -> None:
        # Nobody else writes this file, so nothing will ever arrive: say so once, then wait.
        callback("listening", "")
        await asyncio.Event().wait()

    async def notify(self, kind: str, subject: str) -> None:
        return None
