"""A subscriber's circuit breaker and 429 pause in the dispatcher: applies the pure transitions
of :mod:`relay.core.breaker`, saves each change in the store so it survives a restart, logs it,
and disables a subscriber that has failed for ``circuit.disable_after``.

Nothing is written while a subscriber is healthy: a success on a closed circuit with no failures
changes nothing, so the happy path costs no store call.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from relay.core.breaker import (
    BreakerPolicy,
    Change,
    Circuit,
    on_failure,
    on_pause,
    on_reset,
    on_success,
)
from relay.core.errors import StoreError
from relay.store.base import Store

log = logging.getLogger(__name__)


class SubscriberBreaker:
    """The live :class:`Circuit` of one subscriber, kept in step with the store."""

    def __init__(self, name: str, policy: BreakerPolicy, store: Store) -> None:
        self.name = name
        self.policy = policy
        self.circuit = Circuit()
        self._store = store

    def restore(self, circuit: Circuit) -> None:
        """Start from the state saved by a previous run."""
        self.circuit = circuit

    def reset(self) -> None:
        """The store re-enabled the subscriber (which reset the saved circuit too)."""
        self.circuit = on_reset()

    def success(self) -> Change:
        """A delivery succeeded."""
        self.circuit, change = on_success(self.circuit)
        return change

    def failure(self, now: float) -> Change:
        """An attempt failed in a way that counts against the receiver."""
        self.circuit, change = on_failure(self.circuit, self.policy, now)
        return change

    def pause(self, now: float, seconds: float) -> Change:
        """A 429 asked for ``seconds`` of quiet (capped by the caller)."""
        self.circuit, change = on_pause(self.circuit, now, seconds)
        return change

    async def record(self, change: Change, now: float, error: str | None) -> None:
        """Save and log a change; disable the subscriber when the policy says so.

        Store failures are logged, not raised: the live state still applies in this process,
        and the next change saves it again.
        """
        if change is Change.NONE:
            return
        fields = {
            "subscriber": self.name,
            "failures": self.circuit.failures,
            "circuit": self.circuit.state,
        }
        if change is Change.OPENED:
            log.error(
                "circuit opened after %d consecutive failures: one probe at a time from now on",
                self.circuit.failures,
                extra=fields,
            )
        elif change is Change.CLOSED:
            log.warning("circuit closed: the receiver answered again; draining", extra=fields)
        elif change is Change.PAUSED:
            until = self.circuit.paused_until or now
            log.warning(
                "receiver answered 429: subscriber paused for %.1fs", until - now, extra=fields
            )
        try:
            await self._store.save_circuit(self.name, self.circuit, now)
            if change is Change.DISABLE:
                await self._store.set_subscriber_disabled(
                    self.name, self.disable_reason(error), now
                )
        except StoreError as exc:
            log.warning("cannot save the circuit state: %s", exc, extra=fields)
            return
        if change is Change.DISABLE:
            log.error(
                "subscriber disabled after failing for %.0fs; deliveries kept",
                now - (self.circuit.failing_since or now),
                extra=fields,
            )

    def disable_reason(self, error: str | None) -> str:
        """Why the subscriber was disabled, for status output (no secrets: attempt errors
        describe the failure, never a header or the body)."""
        since = self.circuit.failing_since
        started = "?" if since is None else datetime.fromtimestamp(since, UTC).isoformat()
        return f"failing since {started}: {error or 'no answer'}"
