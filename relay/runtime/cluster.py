"""Several relay instances on one shared store: this instance's id, its heartbeat, recovery of
dead instances' work, cross-instance wake-ups, and renewal of the deliveries it has claimed.

Every process is an instance with a random id (:func:`new_instance_id`), registered in the
store when the supervisor starts. On a shared store (PostgreSQL) four loops, run by the
supervisor, keep the instances honest with each other, each waking every third of
``cluster.lease_ttl``:

* ``heartbeat``: extend this instance's life (an instance that misses a ttl of them is dead),
  and count the live instances, which sets this one's share of the accounts to poll.
  Told it was declared dead (it stalled), it drops its account leases and registers again.
* ``recover``: make the claims of dead instances due again and free their account leases, so
  their work resumes within a ttl (claims whose lease expires are claimable anyway).
* ``renew-claims``: extend the lease of every delivery this instance holds, queued or in
  flight, in one statement; those the store no longer gives us are dropped (another instance
  took them after our lease ran out), so nothing is sent under a lost claim.
* ``listen``: LISTEN/NOTIFY wake-ups from every instance (``due:<subscriber>``,
  ``subscriber:<name>``) wake the named claimers; ``listening`` (after a reconnect) wakes all.

On a single-owner store (SQLite) registration is an in-memory no-op and none of the loops run:
nothing here costs anything.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from relay.config.cluster import ClusterSettings
from relay.core.aio import unless_stopped, wait_or_stop
from relay.core.errors import StoreError
from relay.core.models import Delivery
from relay.delivery.claimer import SubscriberDispatcher
from relay.ingest.lease import AccountLease, LeaseShare
from relay.store.base import Store

log = logging.getLogger(__name__)

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


def new_instance_id() -> str:
    """A fresh id for this process: the host name (for operators) and a random part (so two
    processes, even on one host or after a restart, never share one)."""
    host = socket.gethostname().split(".")[0][:40] or "relay"
    return f"{host}-{uuid.uuid4().hex[:12]}"


class Cluster:
    """This instance's membership of the set of instances sharing the store."""

    def __init__(
        self,
        store: Store,
        settings: ClusterSettings,
        instance_id: str,
        dispatchers: dict[str, SubscriberDispatcher],
        leases: Callable[[], Sequence[AccountLease]],
        share: LeaseShare,
        wake: Callable[[list[str] | None], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self.settings = settings
        self.instance_id = instance_id
        self._dispatchers = dispatchers
        self._leases = leases  # the pollers' leases, as they are now (reloads change them)
        self._share = share
        self._wake = wake
        self._clock = clock
        self.registered = False
        self.recovered = 0  # deliveries of dead instances this one made due again

    @property
    def shared(self) -> bool:
        return self._store.shared

    async def join(self) -> None:
        """Register this instance (claims are stamped with its id from now on). A store that
        refuses is logged; the heartbeat loop registers once it answers."""
        try:
            await self._register()
        except StoreError as exc:
            log.error("cannot register this instance yet: %s", exc)

    async def leave(self) -> None:
        """At the end of a clean shutdown (claims and leases already handed back): expire our
        registration now, so no peer waits a ttl to find nothing of ours to recover."""
        if not self.shared or not self.registered:
            return
        try:
            await self._store.heartbeat(self.instance_id, self._clock(), 0.0)
        except StoreError as exc:
            log.warning("cannot deregister this instance (it expires by itself): %s", exc)

    def early_loops(self) -> list[tuple[str, Loop]]:
        """Loops that end when polling and claiming stop."""
        if not self.shared:
            return []
        return [("cluster:recover", self.recover_loop), ("cluster:listen", self.listen_loop)]

    def late_loops(self) -> list[tuple[str, Loop]]:
        """Loops that run until the very end of shutdown: in-flight deliveries keep their
        leases, and we stay alive, while they finish."""
        if not self.shared:
            return []
        return [("cluster:heartbeat", self.heartbeat_loop), ("cluster:renew", self.renew_loop)]

    async def _register(self) -> None:
        await self._store.register_instance(
            self.instance_id, self._clock(), self.settings.lease_ttl
        )
        if not self.registered:
            log.info("instance %s registered", self.instance_id)
        self.registered = True
        if self.shared:
            live = await self._store.live_instances(self._clock())
            self._share.live = max(1, len(live))

    # -- the loops ------------------------------------------------------------------------------

    async def heartbeat_loop(self, stop: asyncio.Event) -> None:
        """Beat every third of the ttl; register again after being declared dead."""
        every = self.settings.renew_every
        while not await wait_or_stop(stop, every):
            try:
                if not self.registered:
                    await self._register()
                    continue
                now = self._clock()
                if await self._store.heartbeat(self.instance_id, now, self.settings.lease_ttl):
                    # How many share the accounts: each instance's share follows it.
                    self._share.live = max(1, len(await self._store.live_instances(now)))
                    continue
                # Peers declared us dead (we stalled past the ttl): our claims and account
                # leases are gone. Stop trusting our own view of them, then join again.
                log.warning(
                    "instance %s was declared dead by its peers: dropping its leases and "
                    "registering again",
                    self.instance_id,
                )
                for lease in self._leases():
                    lease.lapse()
                self.registered = False
                await self._register()
            except StoreError as exc:
                log.warning("heartbeat failed (retrying in %.1fs): %s", every, exc)

    async def recover_loop(self, stop: asyncio.Event) -> None:
        """Recover dead instances' work now and then (any live instance may; each dead one is
        recovered exactly once)."""
        every = self.settings.renew_every
        while not await wait_or_stop(stop, every):
            try:
                self.recovered += await self._store.recover_dead_instances(self._clock())
            except StoreError as exc:
                log.warning("cannot recover dead instances yet: %s", exc)

    async def renew_loop(self, stop: asyncio.Event) -> None:
        """Keep the leases of every delivery we hold, in one statement per round."""
        every = self.settings.renew_every
        while not await wait_or_stop(stop, every):
            await self.renew_claims()

    async def renew_claims(self) -> int:
        """One renewal round; returns how many claims were found lost (and dropped)."""
        held = [c for d in self._dispatchers.values() for c in d.held_claims()]
        if not held:
            return 0
        try:
            renewed = set(
                await self._store.renew_claims(held, self._clock(), self.settings.lease_ttl)
            )
        except StoreError as exc:
            # Not renewed this round; the next one may still be in time (a third of the ttl).
            log.warning("cannot renew %d claimed deliveries: %s", len(held), exc)
            return 0
        lost: dict[str, list[Delivery]] = {}
        for claim in held:
            if claim.id not in renewed:
                lost.setdefault(claim.subscriber, []).append(claim)
        for name, claims in lost.items():
            # Some of these simply finished meanwhile (their result is written): forgetting
            # a claim no longer held changes nothing.
            self._dispatchers[name].forget(claims)
        return sum(len(c) for c in lost.values())

    async def listen_loop(self, stop: asyncio.Event) -> None:
        """Deliver other instances' wake-ups to our claimers until ``stop``."""
        await unless_stopped(stop, self._store.listen(self._on_wakeup))

    def _on_wakeup(self, kind: str, subject: str) -> None:
        if kind in ("due", "subscriber"):
            self._wake([subject])
        elif kind == "listening":
            self._wake(None)  # wake-ups may have been missed while not listening
