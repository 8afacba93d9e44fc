"""What one poll carries across the batches of a (possibly streamed) response: the plan, the
cursor it began from, the newest plausible stamp, the rids already stored; and one batch of
records ready to store."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from relay.core.models import CallRecord
from relay.core.window import PollPlan
from relay.ingest.body import StreamAbandoned
from relay.ingest.rejects import Reject


@dataclass(slots=True)
class PollState:
    """One poll in progress, across the batches of a streamed response."""

    plan: PollPlan
    received_at: float
    skew_limit: str  # call_timestamps after this do not move the cursor
    cursor: str | None = None  # the account's cursor when the poll began
    new: int = 0  # records newly stored
    received: int = 0  # records of the response prepared so far
    newest: str | None = None  # the newest plausible call_timestamp prepared so far
    # Valid rids of the batches stored so far, 8 bytes each (a set of ints would take ~70).
    stored: array[int] = field(default_factory=lambda: array("q"))

    def restart(self) -> None:
        """Start over with the whole response (what was stored stays: it is de-duplicated)."""
        self.received = 0
        self.stored = array("q")


@dataclass(slots=True)
class Batch:
    """Records validated and turned into bodies, to be stored in one transaction."""

    records: list[CallRecord] = field(default_factory=list)
    fresh_invalid: list[Reject] = field(default_factory=list)
    rids: set[int] = field(default_factory=set)  # valid rids, for a streamed response


def check_repeats(poll: PollState, batch: Batch) -> None:
    """StreamAbandoned if a rid of ``batch`` was in a batch already stored for this response."""
    if batch.rids and not batch.rids.isdisjoint(poll.stored):
        raise StreamAbandoned("a rid repeats in the response")
