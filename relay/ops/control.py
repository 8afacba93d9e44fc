"""The small typed interface through which operators' tools (the admin API, later the dashboard)
act on a running relay, without reaching into its parts."""

from __future__ import annotations

from typing import Protocol

from relay.core.status import RelayStatus


class RelayControl(Protocol):
    """What a running relay offers its operator surfaces."""

    @property
    def ready(self) -> bool:
        """True once every loop has started (and until shutdown begins)."""

    @property
    def subscriber_names(self) -> list[str]:
        """The names of the subscribers this process delivers to."""

    async def status(self) -> RelayStatus:
        """The store's snapshot plus this process's live state."""

    def wake(self, subscribers: list[str] | None = None) -> None:
        """Make the named subscribers' claimers (all, for None) look at the store now."""
