"""The webhook body: a small envelope around the upstream record, serialised once.

Every delivery of a record, to every subscriber and on every attempt, sends the same bytes::

    {"type":"call.record","timestamp":"2025-07-01T20:54:53.123Z","account":"acme","data":{...}}

``timestamp`` is when the relay received the record (UTC, milliseconds), ``data`` is the upstream
record verbatim: every field, including ones this relay does not know, in the upstream's order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from relay.core.errors import NonFiniteNumber

EVENT_TYPE = "call.record"


@lru_cache(maxsize=16)
def iso_utc(ts: float) -> str:
    """Format Unix time ``ts`` as ISO-8601 UTC with milliseconds and ``Z``.

    Sub-millisecond digits are truncated (not rounded) so the text never runs ahead of ``ts``.
    Cached: every record of one poll shares its ``received_at``.
    """
    moment = datetime.fromtimestamp(ts, tz=UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="milliseconds") + "Z"


def build_body(account: str, received_at: float, record: Mapping[str, Any]) -> bytes:
    """Serialise the envelope for ``record`` as compact UTF-8 JSON.

    Keys come in the fixed order ``type, timestamp, account, data``. orjson is used for speed;
    it refuses what JSON allows but it cannot represent (integers beyond 64 bits, non-string
    keys, lone surrogates), and for those records the stdlib ``json`` produces the same compact
    form instead. The one content refused is a number JSON cannot carry (NaN, an infinity):
    :class:`~relay.core.errors.NonFiniteNumber`, never a body with ``null`` or ``Infinity`` in
    its place.
    """
    envelope = {
        "type": EVENT_TYPE,
        "timestamp": iso_utc(received_at),
        "account": account,
        # orjson only serialises real dicts; a dict passes through without a copy.
        "data": record if isinstance(record, dict) else dict(record),
    }
    try:
        out = orjson.dumps(envelope)
    except orjson.JSONEncodeError:
        return _stdlib_body(envelope)
    # orjson writes NaN and infinities as null: only a body with a null can hide one, so only
    # then is the record searched (a few microseconds; most records have no null).
    if b"null" in out and not _finite(envelope["data"]):
        raise NonFiniteNumber(_NON_FINITE)
    # Copied to an exact-size object: orjson writes into a large buffer and shrinks it in
    # place, and a body kept from that (e.g. 100,000 records of one catch-up poll) pins a
    # few KiB of fragmented heap each; the copy costs a fraction of the serialisation.
    return bytes(memoryview(out))


_NON_FINITE = "the record holds NaN or an infinity, which JSON cannot carry"


def _stdlib_body(envelope: dict[str, Any]) -> bytes:
    try:
        text = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:  # "Out of range float values are not JSON compliant"
        raise NonFiniteNumber(_NON_FINITE) from exc
    try:
        return text.encode()
    except UnicodeEncodeError:
        # A lone surrogate (only a lenient parser lets one in) has no UTF-8 form; a \uXXXX
        # escape is the one way JSON can still carry it.
        return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode()


def _finite(value: Any) -> bool:
    """Whether no float inside ``value`` is NaN or infinite."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, float) and not math.isfinite(item):
            return False
    return True
