"""The webhook body: a small envelope around the upstream record, serialised once.

Every delivery of a record, to every subscriber and on every attempt, sends the same bytes::

    {"type":"call.record","timestamp":"2025-07-01T20:54:53.123Z","account":"acme","data":{...}}

``timestamp`` is when the relay received the record (UTC, milliseconds), ``data`` is the upstream
record verbatim: every field, including ones this relay does not know, in the upstream's order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

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
    form instead, so no record is ever rejected for its content.
    """
    envelope = {
        "type": EVENT_TYPE,
        "timestamp": iso_utc(received_at),
        "account": account,
        # orjson only serialises real dicts; a dict passes through without a copy.
        "data": record if isinstance(record, dict) else dict(record),
    }
    try:
        # Copied to an exact-size object: orjson writes into a large buffer and shrinks it in
        # place, and a body kept from that (e.g. 100,000 records of one catch-up poll) pins a
        # few KiB of fragmented heap each; the copy costs a fraction of the serialisation.
        return bytes(memoryview(orjson.dumps(envelope)))
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # A lone surrogate (only a lenient parser lets one in) has no UTF-8 form; a \uXXXX
        # escape is the one way JSON can still carry it.
        return json.dumps(envelope, separators=(",", ":")).encode()
