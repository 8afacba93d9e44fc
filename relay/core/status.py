"""The typed status model: one truth for ``relay status``, the admin API, metrics and the
dashboard. The store fills the durable part (:class:`StoreStats`); the runtime adds what only a
running process knows (:class:`RuntimeAccount`, :class:`RuntimeSubscriber`).

Runtime counters only ever grow (Prometheus counters are read straight from them), and every
label a view derives from this model is a name from the configuration, so nothing here grows with
the number of calls. Judgements about the model (:func:`readiness`, :func:`account_lag`) are
pure functions that take ``now``.
"""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from relay.core.text import escape_controls, mask_credentials

# Attempt latency histogram bounds in seconds (Prometheus' "le" buckets, +Inf implied).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

POLL_OUTCOMES = ("ok", "auth_failed", "rate_limited", "backing_off", "store_error")
DELIVERY_OUTCOMES = ("delivered", "retry", "dead", "gone", "local_error")

# A poller is stuck when one poll (fetch + ingest) runs this many upstream timeouts, or when it
# overstays a planned wait by this margin: both mean its loop no longer turns.
STUCK_POLL_TIMEOUTS = 5.0
STUCK_MIN = 120.0
OVERDUE_MARGIN = 60.0


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
    circuit breaker and 429 pause.

    ``oldest_pending_at`` is when the queue's earliest pending delivery is (or was) due.
    """

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
    """What a running poller knows about its account.

    ``phase`` is ``starting``, ``budget`` (waiting for the key's request budget), ``polling``
    (a fetch or ingest in progress), ``waiting`` (until ``next_poll_at``) or ``stopped``, since
    ``phase_since``. ``health`` is the outcome of the last poll with its ``reason``.
    """

    polls: int = 0  # successful polls
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POLL_OUTCOMES, 0))
    ingested: int = 0  # records newly stored
    newest_call_at: float | None = None  # epoch of the newest call_timestamp seen
    requests_in_window: int = 0  # upstream requests in the last ``budget_per`` seconds
    budget_requests: int = 0
    budget_per: float = 0.0
    phase: str = "starting"
    phase_since: float = 0.0
    next_poll_at: float | None = None
    health: str | None = None
    reason: str | None = None
    timeout: float = 30.0  # the upstream timeout, to judge a poll that does not end
    interval: float = 0.0  # seconds between polls, as configured or as auto works it out
    interval_auto: bool = False  # poll_interval: auto (relay.core.cadence)

    def count(self, outcome: str, reason: str | None) -> None:
        """Count one poll's outcome and remember it as the account's health."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.health, self.reason = outcome, reason
        if outcome == "ok":
            self.polls += 1

    def enter(self, phase: str, now: float, next_poll_at: float | None = None) -> None:
        """Move to ``phase`` as of ``now``."""
        self.phase, self.phase_since, self.next_poll_at = phase, now, next_poll_at


@dataclass(slots=True)
class RuntimeSubscriber:
    """What a running dispatcher knows about its subscriber."""

    held: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DELIVERY_OUTCOMES, 0))
    # Non-cumulative counts per LATENCY_BUCKETS bound, plus one for +Inf.
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    last_delivered_at: float | None = None
    circuit: str | None = None  # "closed" / "open" / "half_open" where a breaker exists
    running: bool = True  # False once removed from the configuration (its queue is kept)

    def record(self, outcome: str, latency_s: float | None, error: str | None, at: float) -> None:
        """Count one attempt (``latency_s`` None: no request went out, e.g. a local error)."""
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if latency_s is not None:
            self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
            self.latency_sum += latency_s
        if outcome == "delivered":
            self.last_delivered_at = at
        elif error is not None:
            self.last_error, self.last_error_at = error, at

    @property
    def latency_count(self) -> int:
        """How many attempts the histogram holds."""
        return sum(self.latency_counts)


@dataclass(slots=True)
class RelayStatus:
    """The whole picture: the store's snapshot plus, when a relay runs, its live state."""

    store: StoreStats
    running: bool = False
    pollers: dict[str, RuntimeAccount] = field(default_factory=dict)
    dispatchers: dict[str, RuntimeSubscriber] = field(default_factory=dict)
    at: float = 0.0  # when the snapshot was taken
    config_subscribers: list[str] = field(default_factory=list)
    config_accounts: list[str] = field(default_factory=list)

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
        doc["at"] = self.at
        doc["pollers"] = {name: dataclasses.asdict(p) for name, p in self.pollers.items()}
        doc["dispatchers"] = {name: dataclasses.asdict(d) for name, d in self.dispatchers.items()}
        for name, p in self.pollers.items():
            doc["pollers"][name]["lag_seconds"] = account_lag(p, self.at)
            doc["pollers"][name]["reason"] = _safe(p.reason)
        for name, d in self.dispatchers.items():
            doc["dispatchers"][name]["last_error"] = _safe(d.last_error)
        problems = readiness(self, self.at)
        doc["ready"], doc["problems"] = not problems, problems
        return doc


def _safe(text: str | None) -> str | None:
    return None if text is None else escape_controls(mask_credentials(text))


def account_lag(account: RuntimeAccount, now: float) -> float | None:
    """Seconds between ``now`` and the newest call_timestamp seen (None before any)."""
    if account.newest_call_at is None:
        return None
    return max(0.0, now - account.newest_call_at)


def poller_problem(name: str, account: RuntimeAccount, now: float) -> str | None:
    """Why account ``name``'s poller is not healthy-or-knowingly-waiting, or None.

    Backing off, rate limited and auth failures are known reasons (their loop still turns); a
    poll that does not end, or a wait overstayed, is not.
    """
    if account.phase == "stopped":
        return f"account {name}: poller not running"
    if account.phase == "polling":
        limit = max(STUCK_MIN, STUCK_POLL_TIMEOUTS * account.timeout)
        if now - account.phase_since > limit:
            return f"account {name}: one poll has run {now - account.phase_since:.0f}s"
    waiting = account.phase == "waiting" and account.next_poll_at is not None
    if waiting and account.next_poll_at is not None and now > account.next_poll_at + OVERDUE_MARGIN:
        return f"account {name}: poll overdue by {now - account.next_poll_at:.0f}s"
    return None


def readiness(status: RelayStatus, now: float) -> list[str]:
    """Problems that make a relay not ready (empty: ready)."""
    if not status.running:
        return ["relay not running"]
    problems = [
        f"account {name}: no poller"
        for name in status.config_accounts
        if name not in status.pollers
    ]
    for name, account in status.pollers.items():
        problem = poller_problem(name, account, now)
        if problem is not None:
            problems.append(problem)
    return problems
