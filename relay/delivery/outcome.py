"""What one attempt means for its delivery (delivered, retry when, dead, gone), and the log
line that says so. Pure apart from the logging; the breaker's part is in the claimer."""

from __future__ import annotations

import logging

from relay.config.schema import SubscriberSettings
from relay.core.breaker import probe_attempts
from relay.core.fastlog import log_fast
from relay.core.models import Delivery, Finished, Outcome
from relay.core.retry import Verdict, next_attempt_at
from relay.delivery.sender import AttemptOutcome

log = logging.getLogger("relay.delivery.claimer")  # the name operators already filter on


def decide(
    sub: SubscriberSettings,
    delivery: Delivery,
    outcome: AttemptOutcome,
    verdict: Verdict,
    patient: bool,
    jitter: float,
) -> Finished:
    """The outcome of one attempt. ``patient``: the schedule does not run out (the circuit is
    open, or the receiver answered 429); the last retry interval repeats instead. The result is
    fenced with the claim's token: a result from a claim since lost changes nothing."""
    attempts = delivery.attempts + 1
    token = delivery.token
    if verdict is Verdict.SUCCESS:
        return Finished(delivery.id, outcome.attempt, Outcome.DELIVERED, token=token)
    if verdict is Verdict.GONE:
        return Finished(delivery.id, outcome.attempt, Outcome.GONE, token=token)
    if verdict is Verdict.RETRY:
        if patient:
            attempts = probe_attempts(attempts, len(sub.retry))
        next_at = next_attempt_at(
            sub.retry,
            attempts,
            outcome.attempt.at,
            jitter=jitter,
            retry_after=outcome.retry_after,
            max_retry_after=sub.max_retry_after,
        )
        if next_at is not None:
            return Finished(delivery.id, outcome.attempt, Outcome.RETRY, next_at, token)
    return Finished(delivery.id, outcome.attempt, Outcome.DEAD, token=token)


def log_attempt(
    subscriber: str, delivery: Delivery, outcome: AttemptOutcome, finished: Finished
) -> None:
    """One log line per attempt (built only when its level is enabled)."""
    if finished.outcome is Outcome.DELIVERED and not log.isEnabledFor(logging.INFO):
        return  # the common case at WARNING: do not even build the fields
    fields = {
        "account": delivery.account,
        "rid": delivery.rid,
        "subscriber": subscriber,
        "webhook_id": outcome.webhook_id,
        "attempt": delivery.attempts + 1,
        "status": outcome.status,
        "latency_ms": round(outcome.attempt.latency_ms, 1),
    }
    if finished.outcome is Outcome.DELIVERED:
        if not log_fast(log, logging.INFO, "delivered", fields):
            log.info("delivered", extra=fields)
        return
    fields["error"] = outcome.attempt.error
    if finished.outcome is Outcome.RETRY:
        assert finished.next_at is not None
        fields["next_in"] = f"{finished.next_at - outcome.attempt.at:.0f}s"
        log.warning("attempt failed, will retry", extra=fields)
    elif finished.outcome is Outcome.GONE:
        log.error("subscriber answered 410 Gone: disabled, deliveries kept", extra=fields)
    else:
        log.error("dead-lettered: retries exhausted or not retryable", extra=fields)
