"""Which subscribers a record goes to: subscriber filters, applied at ingest (issue 10).

The decision is made before the ingest transaction and travels with the record
(``CallRecord.subscribers``), so a filtered-out record never gets a delivery. Filters over record
fields alone cost only their own comparisons: the call view (phone-number parsing is its dear
part) is computed on first use by a filter that reads ``call.…``, once per record.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from relay.config.schema import SubscriberSettings
from relay.core.callview import call_view
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
        view = _LazyView(record, self._account, self._tz, self._region)
        failed = {name for name, test in self._filters if not test.matches(record, view)}
        if not failed:
            return None
        return tuple(name for name in self._names if name not in failed)


class _LazyView(Mapping[str, Any]):
    """The call view of one record as a mapping, computed when a filter first reads it."""

    __slots__ = ("_account", "_record", "_region", "_tz", "_view")

    def __init__(
        self, record: dict[str, Any], account: str, tz: ZoneInfo, region: str | None
    ) -> None:
        self._record = record
        self._account = account
        self._tz = tz
        self._region = region
        self._view: dict[str, Any] | None = None

    def _get(self) -> dict[str, Any]:
        if self._view is None:
            self._view = call_view(self._record, self._account, self._tz, self._region).as_dict()
        return self._view

    def __getitem__(self, key: str) -> Any:
        return self._get()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())
