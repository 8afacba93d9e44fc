"""``relay check-config --explain``: which of the last stored records each subscriber's filter
passes, so a filter can be tried on real calls before it decides real deliveries.

It reads the state through a read-only reader (:func:`relay.runtime.stores.open_reader`: for
SQLite a lock-free snapshot), so it works while the relay runs, and changes nothing.
"""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

from relay.config.schema import Settings, SubscriberSettings
from relay.core.callview import call_view
from relay.core.models import StoredRecord
from relay.ops.sendtest import printable
from relay.store.base import StoreReader


async def explain(settings: Settings, store: StoreReader, last: int) -> list[str]:
    """The lines to print: one per record (newest first), a verdict per subscriber, then a
    summary per subscriber."""
    records = await store.recent_records(last)
    subs = [s for s in settings.subscribers if s.enabled]
    if not records:
        return ["no stored records yet: run the relay for a while, then explain again"]
    tz = ZoneInfo(settings.upstream.timezone)
    region = settings.upstream.phone_region
    header = ["rid", "account", "call_timestamp", "direction", "disposition"]
    rows: list[list[str]] = []
    passed = dict.fromkeys((s.name for s in subs), 0)
    eligible = dict.fromkeys((s.name for s in subs), 0)
    for stored in records:
        record = _record(stored)
        view = call_view(record, stored.account, tz, region).as_dict()
        # Upstream text, shown on a terminal: control characters escaped, long values cut.
        row = [
            str(stored.rid),
            printable(stored.account, 40),
            printable(str(record.get("call_timestamp", "")), 40),
            str(view["direction"]),
            printable(str(view["disposition"] or ""), 20),
        ]
        for sub in subs:
            row.append(_verdict(sub, stored.account, record, view, passed, eligible))
        rows.append(row)
    lines = [
        f"last {len(records)} stored record(s), newest first "
        "(yes: the subscriber's filter passes it; -: not one of its accounts):",
        *_table([*header, *(s.name for s in subs)], rows),
        "",
    ]
    for sub in subs:
        spec = sub.compiled_filter.spec
        rule = "no filter" if spec is None else "filter " + json.dumps(spec, ensure_ascii=False)
        lines.append(f"{sub.name}: {passed[sub.name]} of {eligible[sub.name]} pass ({rule})")
    return lines


def _verdict(
    sub: SubscriberSettings,
    account: str,
    record: dict[str, Any],
    view: dict[str, Any],
    passed: dict[str, int],
    eligible: dict[str, int],
) -> str:
    if sub.accounts is not None and account not in sub.accounts:
        return "-"
    eligible[sub.name] += 1
    if sub.compiled_filter.matches(record, view):
        passed[sub.name] += 1
        return "yes"
    return "no"


def _record(stored: StoredRecord) -> dict[str, Any]:
    try:
        envelope = json.loads(stored.body)
    except ValueError:
        return {}
    data = envelope.get("data") if isinstance(envelope, dict) else None
    return data if isinstance(data, dict) else {}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
