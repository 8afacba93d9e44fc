"""The body a subscriber receives, from what the store holds (issue 10 §3).

The store keeps one body per record: the envelope, whose ``data`` is the verbatim upstream
record. ``format: envelope`` (the default) sends those bytes untouched, at no cost. Any other
format is rendered from the envelope's record and account plus the call view, deterministically,
on every attempt: the same stored inputs give the same bytes (and so one body per delivery,
across retries and restarts), and a changed template applies from the next attempt.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from relay.core.callview import call_view
from relay.core.errors import RenderError
from relay.core.formats import (
    CHAT_RENDERERS,
    FAST_RENDERERS,
    EnvelopeFields,
    FormatSpec,
    render,
)
from relay.core.formats.common import dumps


class Shaper:
    """Renders one subscriber's bodies (:meth:`body`)."""

    def __init__(self, spec: FormatSpec, tz: ZoneInfo, region: str | None) -> None:
        self.spec = spec
        self.passthrough = spec.name == "envelope"
        self._chat = CHAT_RENDERERS.get(spec.name)
        self._fast = FAST_RENDERERS.get(spec.name)
        self._tz = tz
        self._region = region

    def body(self, stored: bytes, account: str, msg_id: str) -> bytes:
        """The bytes to send for a stored envelope. Raises only :class:`RenderError`, which is
        permanent (the same stored body fails the same way on every attempt)."""
        if self.passthrough:
            return stored
        envelope = _loads(stored)
        record = envelope.get("data") if isinstance(envelope, dict) else None
        if not isinstance(record, dict):
            raise RenderError("stored body has no record to render")
        if self.spec.name == "record":
            return dumps(record)  # what render() does for it, without a call view it ignores
        account = envelope.get("account", account)
        account = account if isinstance(account, str) else str(account)
        if self._fast is not None:
            body = self._fast(record, account, self._tz, self._region)
            if body is not None:
                return body  # the chat renderer's bytes for this record, without the view
        view = call_view(record, account, self._tz, self._region)
        if self._chat is not None:
            return self._chat(view)  # what render() does, without envelope fields it ignores
        fields: EnvelopeFields = {
            "account": account,
            "received_at": _received_at(envelope.get("timestamp")),
            "webhook_id": msg_id,
        }
        return render(self.spec, record, view, fields)


def _loads(stored: bytes) -> Any:
    try:
        return orjson.loads(stored)
    except orjson.JSONDecodeError:
        pass
    # What orjson refuses but the envelope may hold (integers beyond 64 bits, \ud800 escapes):
    # the stdlib reads it, as it wrote it (relay.core.envelope).
    try:
        return json.loads(stored)
    except ValueError:
        raise RenderError("stored body is not JSON") from None


def _received_at(stamp: object) -> float:
    """The envelope's ``timestamp`` (ISO 8601 UTC, milliseconds) back as Unix seconds; formats
    print it again with :func:`relay.core.envelope.iso_utc`, which gives the same text."""
    if isinstance(stamp, str):
        try:
            moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            return 0.0
        if moment.tzinfo is not None:
            return moment.timestamp()
    return 0.0
