"""A call's journey as an operator reads it: the store's facts (:class:`~relay.core.journey.
Journey`) plus, for each configured subscriber that has no delivery, the reason why.

A filtered-out record has no delivery and leaves no trace of the decision in the store (that is
the point of filtering at ingest), so the reason is found again here: the subscriber's *current*
filter is evaluated against the stored record with the call view, exactly as routing does. When
the filter changed since the record arrived, the answer says what the filter says now.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from zoneinfo import ZoneInfo

from relay.config.schema import Settings, SubscriberSettings
from relay.core.callview import call_view
from relay.core.filters import MATCH_ALL
from relay.core.journey import Journey, RecordView
from relay.core.signing import webhook_id

FILTERED_OUT = (
    "filtered out by the subscriber's filter (its current filter does not pass the record)"
)
ADDED_LATER = "subscriber was added after the record was received"
PASSES_NOW = (
    "no delivery queued: the subscriber was added, or its filter changed, after the record was "
    "received (its current filter passes the record)"
)


def explain(journey: Journey, settings: Settings) -> Journey:
    """Fill webhook ids and ``missing`` (why a configured subscriber got no delivery)."""
    for delivery in journey.deliveries:
        delivery.webhook_id = webhook_id(journey.account, journey.rid, delivery.subscriber)
    have = {d.subscriber for d in journey.deliveries}
    verdict = _FilterVerdict(journey, settings)
    for sub in settings.subscribers:
        if sub.name in have:
            continue
        if journey.quarantined and journey.record is None:
            why = f"record quarantined: {journey.quarantined[-1].reason}"
        elif journey.record is None:
            why = (
                "record no longer stored (delivered and pruned after the retention)"
                if journey.seen
                else "record never received"
            )
        elif not sub.enabled:
            why = "subscriber disabled in the configuration"
        elif sub.accounts is not None and journey.account not in sub.accounts:
            why = f"subscriber is not subscribed to account {journey.account}"
        elif sub.compiled_filter is MATCH_ALL:
            why = ADDED_LATER
        else:
            why = PASSES_NOW if verdict.passes(sub) else FILTERED_OUT
        journey.missing[sub.name] = why
    return journey


class _FilterVerdict:
    """Evaluates subscribers' filters against the journey's stored record, with its call view
    computed once (only when a filter asks)."""

    def __init__(self, journey: Journey, settings: Settings) -> None:
        self._journey = journey
        self._settings = settings
        self._view: dict[str, Any] | None = None

    def passes(self, sub: SubscriberSettings) -> bool:
        assert self._journey.record is not None
        record = _upstream_record(self._journey.record)
        if self._view is None:
            up = self._settings.upstream
            tz = ZoneInfo(up.timezone)
            self._view = call_view(record, self._journey.account, tz, up.phone_region).as_dict()
        return sub.compiled_filter.matches(record, self._view)


def _upstream_record(view: RecordView) -> dict[str, Any]:
    """The upstream record inside the stored webhook envelope (what routing evaluated)."""
    body = view.body
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) else {}


def journey_doc(journey: Journey) -> dict[str, Any]:
    """The JSON form shown by ``relay inspect`` and ``GET /records/{account}/{rid}``."""
    return dataclasses.asdict(journey)
