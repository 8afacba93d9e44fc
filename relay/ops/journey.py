"""A call's journey as an operator reads it: the store's facts (:class:`~relay.core.journey.
Journey`) plus, for each configured subscriber that has no delivery, the reason why."""

from __future__ import annotations

import dataclasses
from typing import Any

from relay.config.schema import Settings
from relay.core.journey import Journey
from relay.core.signing import webhook_id


def explain(journey: Journey, settings: Settings) -> Journey:
    """Fill webhook ids and ``missing`` (why a configured subscriber got no delivery)."""
    for delivery in journey.deliveries:
        delivery.webhook_id = webhook_id(journey.account, journey.rid, delivery.subscriber)
    have = {d.subscriber for d in journey.deliveries}
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
        else:
            why = "subscriber was added after the record was received"
        journey.missing[sub.name] = why
    return journey


def journey_doc(journey: Journey) -> dict[str, Any]:
    """The JSON form shown by ``relay inspect`` and ``GET /records/{account}/{rid}``."""
    return dataclasses.asdict(journey)
