"""The typed status model: one truth for ``relay status``, the admin API, metrics and the
dashboard. The store fills the durable part (:class:`StoreStats`); the runtime adds what only a
running process knows (:class:`RuntimeAccount`, :class:`RuntimeSubscriber`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from relay.core.text import escape_controls, mask_credentials


@dataclass(slots=True)
class AccountState:
    """An account's durable poll position and last recorded health."""

    cursor: str | None = None
    last_sweep: float | None = None
    status: str | None = None
    error: str | None = None


@dataclass(slots=True)
class QueueCounts:
    """One subscriber's queue, by delivery state, whether it is disabled (with why), and its
    circuit breaker and 429 pause."""

    pending: int = 0
    inflight: int = 0
    delivered: int = 0
    dead: int = 0
    oldest_pending_at: float | None = None
    disabled: str | None = None
    # No longer configured since then: its deliveries are purged after delivery.orphan_retention.
    orphaned_since: float | None = None
    circuit: str = "closed"  # "open": only one probe at a time (relay.core.breaker)
    failures: int = 0  # consecutive failed attempts
    failing_since: float | None = None
    circuit_opened_at: float | None = None
    paused_until: float | None = None  # a 429 asked for quiet until then


@dataclass(slots=True)
class StoreStats:
    """Everything the store can tell about the relay, from one consistent snapshot."""

    accounts: dict[str, AccountState] = field(default_factory=dict)
    subscribers: dict[str, QueueCounts] = field(default_factory=dict)
    quarantined: int = 0
    seen: int = 0


@dataclass(slots=True)
class RuntimeAccount:
    """What a running poller knows about its account."""

    polls: int = 0


@dataclass(slots=True)
class RuntimeSubscriber:
    """What a running dispatcher knows about its subscriber."""

    held: int = 0


@dataclass(slots=True)
class RelayStatus:
    """The whole picture: the store's snapshot plus, when a relay runs, its live state."""

    store: StoreStats
    running: bool = False
    pollers: dict[str, RuntimeAccount] = field(default_factory=dict)
    dispatchers: dict[str, RuntimeSubscriber] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (the admin API's and ``relay status``'s output)."""
        doc = dataclasses.asdict(self.store)
        # Error texts come from outside (an upstream's error page, a driver's message): shown
        # with credentials masked and control characters escaped, whatever wrote them.
        for account in doc["accounts"].values():
            account["error"] = _safe(account["error"])
        for queue in doc["subscribers"].values():
            queue["disabled"] = _safe(queue["disabled"])
        doc["running"] = self.running
        doc["pollers"] = {name: dataclasses.asdict(p) for name, p in self.pollers.items()}
        doc["dispatchers"] = {name: dataclasses.asdict(d) for name, d in self.dispatchers.items()}
        return doc


def _safe(text: str | None) -> str | None:
    return None if text is None else escape_controls(mask_credentials(text))
