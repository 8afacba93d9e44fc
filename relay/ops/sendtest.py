"""``relay send-test NAME``: one signed sample call to one subscriber, in its own format.

So that a user can map fields in Zapier or n8n, or see the Slack message, before a real call
arrives. The sample is the spec's sample record stamped now; it is sent with a fresh
``webhook-id`` (``msg_test_…``) so that a receiver de-duplicating by id never confuses it with a
real call. The subscriber's filter is not applied (a note says when it would drop the sample).
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from relay.config.schema import Settings, SubscriberSettings
from relay.core.callview import call_view
from relay.core.envelope import build_body
from relay.core.formats import SAMPLE_RECORD
from relay.core.keys import Ed25519Key
from relay.core.models import Delivery
from relay.delivery.sender import AttemptOutcome, Sender
from relay.http1.client import Http1Client

EXCERPT = 500  # characters of the receiver's answer (and of the body sent) shown
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str, limit: int = EXCERPT) -> str:
    """``text`` cut to ``limit`` characters with control characters escaped (``\\n``,
    ``\\x1b``…): a receiver's answer must not drive the terminal it is shown on."""
    cut = text[:limit] + ("…" if len(text) > limit else "")
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], cut)


async def send_test(settings: Settings, sub: SubscriberSettings) -> tuple[AttemptOutcome, bytes]:
    """Send the sample call to ``sub`` once; returns what happened and the stored-form body."""
    up = settings.upstream
    tz = ZoneInfo(up.timezone)
    account = sub.accounts[0] if sub.accounts else up.accounts[0].name
    now = time.time()
    record = {
        **SAMPLE_RECORD,
        "call_timestamp": datetime.fromtimestamp(now, tz).strftime("%Y-%m-%d %H:%M:%S"),
    }
    body = build_body(account, now, record)
    delivery = Delivery(0, sub.name, account, int(record["rid"]), body, 0)
    client = Http1Client()
    try:
        sender = Sender(client, sub, settings.delivery.response_cap, tz=tz, region=up.phone_region)
        outcome = await sender.send(delivery, msg_id="msg_test_" + secrets.token_hex(10))
    finally:
        client.close()
    return outcome, body


def report(settings: Settings, sub: SubscriberSettings, outcome: AttemptOutcome) -> list[str]:
    """What ``send-test`` prints: format, signatures, the receiver's status and answer. The URL
    is not printed (a Slack or Zapier URL is itself a credential)."""
    kinds = sorted({"v1a" if isinstance(k, Ed25519Key) else "v1" for k in sub.signing_keys})
    lines = [
        f"send-test {sub.name}: format {sub.format_spec.name}, "
        f"{len(sub.signing_keys)} signature(s) ({', '.join(kinds)}), "
        f"webhook-id {outcome.webhook_id}"
    ]
    tz = ZoneInfo(settings.upstream.timezone)
    view = call_view(SAMPLE_RECORD, "sample", tz, settings.upstream.phone_region).as_dict()
    if not sub.compiled_filter.matches(SAMPLE_RECORD, view):
        lines.append(f"note: the filter of {sub.name} would not pass this sample call")
    attempt = outcome.attempt
    if outcome.status is None:
        lines.append(f"no answer: {printable(attempt.error or 'unknown error')}")
    else:
        lines.append(f"receiver answered HTTP {outcome.status} in {attempt.latency_ms:.0f} ms")
        lines.append(f"response: {printable(attempt.response) or '(empty)'}")
    return [_redact(line, settings.secret_values()) for line in lines]


def _redact(text: str, secret_values: list[str]) -> str:
    # A receiver that echoes a request header back must not print a credential.
    for value in secret_values:
        text = text.replace(value, "***")
    return text
