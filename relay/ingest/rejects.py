"""Records kept aside at ingest: each reject's reason, the bytes quarantine keeps, and a bounded
memory of what this run already kept aside, so a bad record the upstream serves on every poll
is logged and stored once per run, not once per poll."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import Any, NamedTuple

import orjson

log = logging.getLogger("relay.ingest.poller")  # the lines operators already filter on

# Bad records remembered (by a hash of their bytes) so that one the upstream serves on every poll
# is kept aside and logged once per run, not once per poll.
QUARANTINE_MEMORY = 10_000
# Of a record over upstream.max_record_bytes, this much is kept in quarantine: enough to see
# what it is, without storing the megabytes that made it a problem.
OVERSIZE_KEPT = 64 * 1024


class Reject(NamedTuple):
    """One record kept aside: as parsed, why, the bytes stored, and its memory key."""

    record: Any
    reason: str
    data: bytes
    key: bytes


class Rejects:
    """One account's rejects (see the module docstring)."""

    def __init__(self, account: str) -> None:
        self._account = account
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def fresh(self, invalid: list[tuple[Any, str]]) -> list[Reject]:
        """The rejects not kept aside before in this run."""
        out = []
        for raw, reason in invalid:
            data = _raw(raw)
            key = hashlib.blake2b(data, digest_size=16).digest()
            if key not in self._seen:
                out.append(Reject(raw, reason, data, key))
        return out

    def oversized(self, record: Any, body: bytes, limit: int) -> list[Reject]:
        """A record too large to deliver, as a reject (unless kept aside before in this run);
        its first :data:`OVERSIZE_KEPT` bytes are what quarantine keeps."""
        key = hashlib.blake2b(body, digest_size=16).digest()
        if key in self._seen:
            return []
        reason = (
            f"record is {len(body)} bytes as a webhook body, over upstream.max_record_bytes "
            f"({limit}); its first {OVERSIZE_KEPT} bytes are kept"
        )
        return [Reject(record, reason, _raw(record)[:OVERSIZE_KEPT], key)]

    def remember(self, stored: list[Reject]) -> None:
        """Log each newly kept-aside record once, and remember it (bounded) so it stays quiet."""
        for reject in stored:
            log.warning(
                "record kept aside in quarantine: %s",
                reject.reason,
                extra={"account": self._account, "rid": _rid_of(reject.record)},
            )
            self._seen[reject.key] = None
            if len(self._seen) > QUARANTINE_MEMORY:
                self._seen.popitem(last=False)


def _raw(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return repr(value).encode()


def _rid_of(value: Any) -> Any:
    return value.get("rid") if isinstance(value, dict) else None
