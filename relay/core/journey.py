"""A call's journey: the stored record, each subscriber's delivery with its attempts, and any
quarantine entries, as plain data the store fills and the operator surfaces show.

``RecordQuery`` is a search for records (by account, caller number and time range).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

EXCERPT = 512  # characters of a response or quarantined record shown to an operator


@dataclass(frozen=True, slots=True)
class AttemptView:
    """One HTTP attempt of a delivery."""

    at: float
    status: int | None
    error: str | None
    latency_ms: float
    response: str


@dataclass(slots=True)
class DeliveryView:
    """One record's delivery to one subscriber, with every attempt (oldest first)."""

    id: int
    subscriber: str
    state: str
    attempts: int
    next_at: float
    updated_at: float
    last_status: int | None
    last_error: str | None
    webhook_id: str = ""
    attempt_log: list[AttemptView] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RecordView:
    """A stored record: where it came from, when, and the webhook body."""

    account: str
    rid: int
    call_ts: str
    received_at: float
    body: Any  # the webhook body as parsed JSON (the envelope around the upstream record)


@dataclass(frozen=True, slots=True)
class QuarantineView:
    """A record kept aside instead of delivered, with why."""

    account: str
    reason: str
    at: float
    raw: str  # an excerpt of the record as received


@dataclass(slots=True)
class Journey:
    """Everything the relay knows about one (account, rid).

    ``record`` is None when the record is not stored (never seen, pruned after delivery, or
    quarantined); ``missing`` explains, per configured subscriber without a delivery, why.
    """

    account: str
    rid: int
    record: RecordView | None = None
    deliveries: list[DeliveryView] = field(default_factory=list)
    quarantined: list[QuarantineView] = field(default_factory=list)
    seen: bool = False  # the rid is in the de-dup memory
    missing: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """A search for stored records. ``caller`` matches the digits of either party's number;
    ``since``/``until`` bound ``call_timestamp`` (upstream text, inclusive)."""

    account: str | None = None
    caller: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """One search hit: enough to list it and open its journey."""

    account: str
    rid: int
    call_ts: str
    received_at: float
    caller: str | None
    states: dict[str, str]  # subscriber -> delivery state


@dataclass(frozen=True, slots=True)
class RecentAttempt:
    """One of the latest delivery attempts, for the dashboard's activity list."""

    delivery_id: int
    subscriber: str
    account: str
    rid: int
    at: float
    status: int | None
    error: str | None
    latency_ms: float
    state: str  # the delivery's state now


def digits(text: str | None) -> str:
    """The digits of a phone number as typed ("+1 (555) 010-2000" -> "15550102000")."""
    return "".join(ch for ch in text or "" if ch.isdigit())


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """``text`` cut to ``limit`` characters, control characters escaped (safe on a terminal)."""
    cut = text[:limit]
    safe = "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in cut)
    return safe + ("…" if len(text) > limit else "")
