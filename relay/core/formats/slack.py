"""The ``slack`` format: an incoming-webhook message with a ``text`` fallback and Block Kit.

Slack answers ``400 no_text`` to a body without ``text`` or ``blocks`` and ``invalid_payload``
/``invalid_blocks`` to blocks over their limits, so every piece is cut to the documented sizes:
a section's text at most 3,000 characters, at most 10 fields of 2,000 each, a context element's
text 3,000, at most 50 blocks (we send 3); ``text`` is kept to 3,000 too (Slack advises under
4,000 and truncates past 40,000). Sources: docs.slack.dev/reference/block-kit/blocks/
(section-block, context-block), api.slack.com/changelog/2016-05-17-changes-to-errors-for-
incoming-webhooks, docs.slack.dev/messaging/sending-messages-using-incoming-webhooks.

mrkdwn needs only ``&``, ``<`` and ``>`` escaped (as ``&amp;`` ``&lt;`` ``&gt;``); that also stops a
caller name from forming ``<!channel>`` or a link. Truncation counts the escaped text, and never
cuts through an entity.
"""

from __future__ import annotations

from typing import Any

from relay.core.callview import CallView
from relay.core.formats.common import dumps, facts, fit, footer, headline, kind

TEXT_LIMIT = 3000  # section text, context text, and what we allow the fallback
FIELD_LIMIT = 2000
MAX_FIELDS = 10
MAX_BLOCKS = 50
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: str, limit: int = TEXT_LIMIT) -> str:
    """mrkdwn-escape ``text``, cut (with ``…``) so the escaped result fits ``limit``."""
    if len(text) <= limit and "&" not in text and "<" not in text and ">" not in text:
        return text  # the common case: nothing to escape, nothing to cut
    return fit(text, limit, _escape_char, _escape_all)


def _escape_char(char: str) -> str:
    return _ESCAPES.get(char, char)


def _escape_all(text: str) -> str:
    # "&" first, so the "&" of the other entities is not escaped again.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(view: CallView) -> bytes:
    """The Slack message for ``view`` as compact JSON bytes (deterministic)."""
    line = headline(view)
    title = kind(view)
    summary = line.removeprefix(title)  # bold the kind, escape the rest
    blocks: list[dict[str, Any]] = [
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": escape(f"*{title}*{summary}")},
        }
    ]
    fields = [
        {"type": "mrkdwn", "text": escape(f"*{label}*\n{value}", FIELD_LIMIT)}
        for label, value in facts(view)[:MAX_FIELDS]
    ]
    if fields:
        blocks[0]["fields"] = fields
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": escape(footer(view))}]}
    )
    return dumps({"text": escape(line), "blocks": blocks[:MAX_BLOCKS]})
