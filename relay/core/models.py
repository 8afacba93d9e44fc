"""Plain data that crosses module boundaries: records going in, deliveries going out."""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field

from relay.core.text import escape_controls


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One valid upstream record, ready to store.

    ``call_ts`` is the upstream's own ``call_timestamp`` text (``YYYY-MM-DD HH:MM:SS`` in the
    upstream's zone), which sorts chronologically as text. ``body`` is the complete webhook body
    (the envelope around the verbatim record), built once so every attempt sends the same bytes.
    ``subscribers`` None (the common case) sends the record to every subscriber of its batch;
    a tuple names the ones whose filters it passed (a subset of the batch's, possibly empty).
    """

    rid: int
    call_ts: str
    body: bytes
    subscribers: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A record that could not be accepted (no usable rid or call_timestamp), kept with why.

    Kept once per account and content: the same bytes served again (every poll, after every
    restart) only update when they were last seen (see :func:`quarantine_digest`).
    """

    raw: bytes
    reason: str


def quarantine_digest(account: str, raw: bytes) -> bytes:
    """The identity of a quarantined record: SHA-256 of the account, a NUL and the raw bytes.

    SHA-256 because PostgreSQL computes the same in SQL (``sha256()``) when it migrates rows
    kept before the digest existed.
    """
    return hashlib.sha256(account.encode("utf-8") + b"\0" + raw).digest()


@dataclass(frozen=True, slots=True)
class Orphan:
    """A subscriber that still has deliveries in the store but is no longer configured.

    ``since`` is when maintenance first found it so; its deliveries are kept until ``since``
    plus ``delivery.orphan_retention`` (configured again before then, it resumes them).
    """

    subscriber: str
    since: float
    deliveries: int


@dataclass(frozen=True, slots=True)
class IngestBatch:
    """Everything one successful poll of one account produced, committed in one transaction.

    ``subscribers`` are the names of the subscribers that receive this account's records.
    ``cursor`` is the newest upstream ``call_timestamp`` the account has now seen (or None to
    leave it). With ``seed_only`` the records are remembered as seen but not delivered (used by
    ``start_from: now`` on the first poll). A large response is ingested as several batches,
    one transaction each, and only the last of them carries the cursor.
    """

    account: str
    records: list[CallRecord]
    subscribers: list[str]
    received_at: float
    cursor: str | None
    quarantined: list[Quarantined] = field(default_factory=list)
    seed_only: bool = False


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What an ingest did: the rids newly stored, and how many were already known."""

    new_rids: list[int]
    duplicates: int


@dataclass(frozen=True, slots=True)
class AccountCursor:
    """Durable per-account poll position.

    ``newest`` is the newest ``call_timestamp`` seen (None before the first successful poll);
    ``last_sweep`` is the wall-clock time of the last full look-back sweep, and
    ``sweep_anchor`` the cursor as it stood right after it (the next sweep reads back from
    there, so it must survive a restart).
    """

    newest: str | None
    last_sweep: float | None
    sweep_anchor: str | None = None


NO_CURSOR = AccountCursor(None, None)  # an account never polled (frozen, so one serves all)


# Not frozen, though nothing changes one once made: these are built per delivery attempt, and a
# frozen dataclass's __init__ costs about four times a plain one (a call of object.__setattr__
# per field). Treat them as values.
@dataclass(slots=True)
class Delivery:
    """One claimed delivery: one record to one subscriber.

    ``token`` fences the claim on backends shared by several instances: a fresh number for
    every claim, carried back in :class:`Finished` and to ``release_claims``/``renew_claims``
    so that a result from a claim that has since expired and been taken again is not applied.
    0 on backends with a single owner (SQLite), where nothing else can take the claim.
    """

    id: int
    subscriber: str
    account: str
    rid: int
    body: bytes
    attempts: int
    token: int = 0


class Outcome(enum.Enum):
    """What happens to a delivery after an attempt."""

    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    GONE = "gone"  # 410: the subscriber is disabled; the delivery waits, it is not dropped


# Not frozen: see Delivery.
@dataclass(slots=True)
class Attempt:
    """The record of one HTTP attempt.

    ``error`` and ``response`` (the receiver's answer, capped) come from outside and are stored,
    logged and listed: control characters in them are escaped here, once, whoever built the
    attempt (see :func:`relay.core.text.escape_controls`).
    """

    at: float
    status: int | None
    error: str | None
    latency_ms: float
    response: str

    def __post_init__(self) -> None:
        # The escaped texts replace the given ones before anyone can see them.
        if self.error is not None:
            self.error = escape_controls(self.error)
        self.response = escape_controls(self.response)


# Not frozen: see Delivery.
@dataclass(slots=True)
class Finished:
    """The result of one attempt, to be written back: the outcome and, for RETRY, when.

    ``token`` is the :attr:`Delivery.token` of the claim the attempt was made under; when given
    (not None), a backend that fences claims applies the outcome only while that claim still
    stands (the attempt itself is always recorded).
    """

    delivery_id: int
    attempt: Attempt
    outcome: Outcome
    next_at: float | None = None
    token: int | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery whose retry schedule ran out, kept for inspection and replay."""

    id: int
    subscriber: str
    account: str
    rid: int
    attempts: int
    last_error: str | None
    dead_at: float


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record as stored: its account, rid and the envelope body (``check-config --explain``)."""

    account: str
    rid: int
    body: bytes
