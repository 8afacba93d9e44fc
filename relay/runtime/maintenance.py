"""Maintenance: what the store keeps, and for how long. One pass, with ``now`` passed in, so a
test drives it with explicit times; the supervisor runs it soon after start and then every
:data:`EVERY` seconds.

A pass forgets, each under its own retention (``delivery.*``): delivered records
(``retention``), dead letters (``dead_letter_retention``), quarantined records not seen again
(``quarantine_retention``) and the deliveries of subscribers no longer configured
(``orphan_retention``, counted from when a pass first found them so: configured again before
then, a subscriber resumes them). Orphans are reported in every pass until they are gone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from relay.config.schema import Settings
from relay.core.models import Orphan
from relay.store.base import Store

log = logging.getLogger(__name__)

FIRST_AFTER = 30.0  # the first pass: soon after start, so a relay restarted often still prunes
EVERY = 600.0


@dataclass(slots=True)
class MaintenanceReport:
    """What one pass did."""

    delivered: int = 0
    dead: int = 0
    quarantined: int = 0
    orphaned: int = 0  # deliveries of orphans purged
    orphans: list[Orphan] = field(default_factory=list)


async def maintain(store: Store, settings: Settings, now: float) -> MaintenanceReport:
    """One maintenance pass as of ``now``; raises StoreError as the store does."""
    keep = settings.delivery
    report = MaintenanceReport()
    report.dead = await store.prune_dead(now - keep.dead_letter_retention)
    report.quarantined = await store.prune_quarantine(now - keep.quarantine_retention)
    report.orphans = await store.find_orphans([s.name for s in settings.subscribers], now)
    for orphan in report.orphans:
        log.warning(
            "subscriber %s is no longer configured: %d deliveries kept for %.0fs after %s, "
            "resumed if it is configured again",
            orphan.subscriber,
            orphan.deliveries,
            keep.orphan_retention,
            "now" if orphan.since == now else "it was first found so",
            extra={"subscriber": orphan.subscriber, "count": orphan.deliveries},
        )
    report.orphaned = await store.purge_orphans(now - keep.orphan_retention)
    # Last: records freed by the purges above go in the same pass.
    report.delivered = await store.prune_delivered(now - keep.retention)
    for count, what in (
        (report.delivered, "delivered records past retention"),
        (report.dead, "dead letters past dead_letter_retention"),
        (report.quarantined, "quarantined records past quarantine_retention"),
        (report.orphaned, "deliveries of subscribers no longer configured, past orphan_retention"),
    ):
        if count:
            log.info("pruned %d %s", count, what, extra={"count": count})
    return report
