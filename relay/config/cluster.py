"""How several relay instances on one shared state database coordinate (``cluster:``).

Part of :class:`~relay.config.schema.Settings`. Only a shared backend (PostgreSQL) uses it; on
SQLite, with one owner, nothing here costs anything.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from relay.config.durations import PositiveDuration


class ClusterSettings(BaseModel):
    """``lease_ttl`` bounds how long work held by a dead instance waits for another: its
    registration, its account leases and its claimed deliveries each expire that long after
    its last renewal, and live instances renew all three every third of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # At least 1 s: renewals every third of it must fit between the store's round trips; at
    # most 10 minutes: longer only delays failover.
    lease_ttl: PositiveDuration = Field(default=15.0, ge=1.0, le=600.0)

    @property
    def renew_every(self) -> float:
        """How often leases and the heartbeat are renewed: a third of ``lease_ttl``, so one
        renewal may fail (or be late) without losing anything."""
        return self.lease_ttl / 3
