"""The ``teams`` format: a Teams Workflows webhook message carrying an Adaptive Card 1.4.

Workflows ("Post to a channel when a webhook request is received") accept Adaptive Cards only,
wrapped as ``{"type": "message", "attachments": [{"contentType":
"application/vnd.microsoft.card.adaptive", "content": {AdaptiveCard}}]}``; the legacy
MessageCard shape is refused. Messages are limited to about 28 KB, so each text is capped
well below that. Sources: learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/
how-to/connectors-using (known issues, limits), adaptivecards.io/explorer (TextBlock, FactSet).
"""

from __future__ import annotations

from typing import Any

from relay.core.callview import CallView
from relay.core.formats.common import clean, dumps, summary, truncate

CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
CARD_VERSION = "1.4"
TEXT_LIMIT = 2000
FACT_LIMIT = 500
MAX_FACTS = 12


def card_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """Text for a TextBlock: one line, cut to ``limit``. Teams renders a Markdown subset in
    TextBlocks; a caller name is shown as written, asterisks included."""
    return truncate(clean(text), limit)


def render_teams(view: CallView) -> bytes:
    """The Workflows message for ``view`` as compact JSON bytes (deterministic)."""
    _, line, pairs, foot = summary(view)
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": card_text(line),
            "weight": "Bolder",
            "size": "Medium",
            "wrap": True,
            **({"color": "Attention"} if view.missed else {}),
        }
    ]
    pairs = pairs[:MAX_FACTS]
    if pairs:
        body.append(
            {
                "type": "FactSet",
                "facts": [
                    {"title": label, "value": card_text(value, FACT_LIMIT)}
                    for label, value in pairs
                ],
            }
        )
    body.append(
        {
            "type": "TextBlock",
            "text": card_text(foot),
            "isSubtle": True,
            "size": "Small",
            "wrap": True,
        }
    )
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "body": body,
    }
    message = {
        "type": "message",
        "attachments": [{"contentType": CONTENT_TYPE, "contentUrl": None, "content": card}],
    }
    return dumps(message)
