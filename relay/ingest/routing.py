"""Which subscribers a record goes to: subscriber filters, applied at ingest (issue 10).

The decision is made before the ingest transaction and travels with the record
(``CallRecord.subscribers``), so a filtered-out record never gets a delivery. Filters over record
fields alone cost only their own comparisons; one that reads ``call.…`` gets a
:class:`~relay.core.callview.LazyCallView`, which computes only the fields read (``call.missed``
parses no phone number), once per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo

from relay.config.schema import SubscriberSettings
from relay.core.callview import LazyCallView
from relay.core.filters import MATCH_ALL, Filter


class Router:
    """Routes one account's records to its subscribers."""

    def __init__(
        self,
        account: str,
        subscribers: Sequence[SubscriberSettings],
        tz: ZoneInfo,
        region: str | None,
    ) -> None:
        self._account = account
        self._names = [s.name for s in subscribers]
        self._filters: list[tuple[str, Filter]] = [
            (s.name, s.compiled_filter) for s in subscribers if s.compiled_filter is not MATCH_ALL
        ]
        self._tz = tz
        self._region = region

    @property
    def filtering(self) -> bool:
        """Does any subscriber have a filter? If not, :meth:`route` is always None."""
        return bool(self._filters)

    def route(self, record: dict[str, Any]) -> tuple[str, ...] | None:
        """The subscribers whose filters ``record`` passes, or None when that is all of them
        (the store's fast fan-out)."""
        view = LazyCallView(record, self._account, self._tz, self._region)
        failed = [name for name, test in self._filters if not test.matches(record, view)]
        if not failed:
            return None
        return tuple(name for name in self._names if name not in failed)
