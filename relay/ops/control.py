"""The small typed interface through which operators' tools (the admin API, metrics, the
dashboard) act on a running relay, without reaching into its parts. The runtime implements it
(:class:`relay.runtime.supervisor.Supervisor`); ops never imports the runtime."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from relay.config.schema import Settings
from relay.core.status import RelayStatus


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did (``problems`` non-empty: rejected, the running config stays)."""

    problems: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    kept_pending: dict[str, int] = field(default_factory=dict)  # removed subscriber -> queue
    restart_required: list[str] = field(default_factory=list)  # sections not applied live

    @property
    def ok(self) -> bool:
        """True when the new configuration is in effect."""
        return not self.problems


class RelayControl(Protocol):
    """What a running relay offers its operator surfaces."""

    @property
    def ready(self) -> bool:
        """True once every loop has started (and until shutdown begins)."""

    @property
    def settings(self) -> Settings:
        """The configuration in effect (changes on reload)."""

    @property
    def subscriber_names(self) -> list[str]:
        """The names of the subscribers this process delivers to."""

    async def status(self) -> RelayStatus:
        """The store's snapshot plus this process's live state."""

    def wake(self, subscribers: list[str] | None = None) -> None:
        """Make the named subscribers' claimers (all, for None) look at the store now."""

    async def reload(self) -> ReloadResult:
        """Re-read the configuration file and apply the differences."""
